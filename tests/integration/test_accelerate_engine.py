"""engine.backend: accelerate, each strategy with 2 Ray workers on CPU, through the real CLI.

One scenario per strategy, so every check shares the same two training runs: a first run that
checkpoints every epoch, then `--resume` to more epochs. Checked: the engine that ran is the one
asked for (distributed type and process count reported by the workers themselves), each rank's
shard of the checkpoint arrived on the head, the resumed run continued from the checkpoint, the
loss went down over the whole history, and `ftlaunch export` of the best checkpoint reloads and
predicts exactly what the trained model predicted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures import ftlaunch
from tests.integration.conftest import cluster_env
from tests.integration.test_train_ray import read_metrics, reload_and_predict

pytestmark = [pytest.mark.ray, pytest.mark.dist]

FIRST_EPOCHS, TOTAL_EPOCHS, STEPS_PER_EPOCH = 2, 5, 8  # 256 rows / (16 x 2 workers)

# strategy -> (extra settings, distributed type on CPU, files each rank must have delivered)
STRATEGIES = {
    "ddp": ([], "MULTI_CPU", ["acc/model.safetensors", "acc/optimizer.bin"]),
    "fsdp": (
        ["engine.fsdp.sharding=full"],
        "FSDP",
        [f"acc/pytorch_model_fsdp_0/__{r}_0.distcp" for r in (0, 1)]
        + [f"acc/optimizer_0/__{r}_0.distcp" for r in (0, 1)],
    ),
    "deepspeed": (
        ["engine.zero_stage=3"],
        "DEEPSPEED",
        [f"acc/pytorch_model/zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)],
    ),
}


def sets(data: dict[str, Path], out: Path, strategy: str, epochs: int) -> list[str]:
    values = {
        "data.train": data["train"],
        "data.validation": data["validation"],
        "data.test": data["test"],
        "data.max_length": 32,
        "data.cache_dir": out.parent / "cache",
        "output.dir": out,
        "output.keep_last": 10,  # keep the best step's checkpoint for the export check
        "optim.lr": 0.005,
        "training.epochs": epochs,
        "training.micro_batch_size": 16,
        "training.log_every": 4,
        "training.eval_every": "epoch",
        "training.checkpoint_every": "epoch",
        "training.max_failures": 0,
        "engine.backend": "accelerate",
        "engine.strategy": strategy,
    }
    extra = STRATEGIES[strategy][0]
    return [a for k, v in values.items() for a in ("--set", f"{k}={v}")] + [
        a for o in extra for a in ("--set", o)
    ]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_strategy_runs_as_asked_checkpoints_resumes_and_exports(
    tmp_path: Path,
    tiny_bert: Path,
    keyword_data: dict[str, Path],
    ray_head: dict[str, str],
    strategy: str,
) -> None:
    _, distributed_type, shard_files = STRATEGIES[strategy]
    job = tmp_path / "job.yaml"
    job.write_text(f"model: {{path: {tiny_bert}}}\ndata: {{train: x, validation: y, test: z}}\n")
    out = tmp_path / "out"
    address = ["--address", ray_head["address"]]
    env = cluster_env(ray_head)

    first = ftlaunch(
        "run", str(job), *sets(keyword_data, out, strategy, FIRST_EPOCHS), *address, env=env
    )
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    engine = json.loads((out / "summary.json").read_text())["engine"]
    assert engine == {
        "backend": "accelerate",
        "strategy": strategy,
        "distributed_type": distributed_type,
        "num_processes": 2,
    }
    first_tag = f"step-{FIRST_EPOCHS * STEPS_PER_EPOCH}"
    manifest = json.loads((out / "checkpoints" / first_tag / "manifest.json").read_text())
    assert set(shard_files) <= set(manifest["files"]), sorted(manifest["files"])
    assert {"acc/random_states_0.pkl", "acc/random_states_1.pkl"} <= set(manifest["files"])

    resumed = ftlaunch(
        "run",
        str(job),
        *sets(keyword_data, out, strategy, TOTAL_EPOCHS),
        *address,
        "--resume",
        env=env,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    records = read_metrics(out)
    assert {
        "event": "resumed",
        "tag": first_tag,
        "step": FIRST_EPOCHS * STEPS_PER_EPOCH,
    }.items() <= next(r for r in records if r["event"] == "resumed").items()
    assert (
        summary["steps"] == TOTAL_EPOCHS * STEPS_PER_EPOCH
        and summary["engine"]["strategy"] == strategy
    )
    train = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in train] == list(range(4, TOTAL_EPOCHS * STEPS_PER_EPOCH + 1, 4))
    assert train[-1]["loss"] < train[0]["loss"] * 0.9, [r["loss"] for r in train]

    best = f"step-{summary['best_validation']['step']}"
    exported = ftlaunch(
        "export", str(out), "--checkpoint", best, "--out", str(tmp_path / "exported"), timeout=200
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    expected = [
        json.loads(line)["prediction"]
        for line in (out / "predictions_test.jsonl").read_text().splitlines()
    ]
    assert reload_and_predict(tmp_path / "exported", keyword_data["test"]) == expected
    assert reload_and_predict(out / "model", keyword_data["test"]) == expected
