"""`ftlaunch plan`: parameter counts against published sizes, per-rank model states against the
ZeRO formulas, the verdict and its suggestion, and one line per bad input. No processes except
the CLI runs at the end (config.json only: no weights, no torch)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.commands.plan import PlanOptions, plan_job
from launcher.config_loading import load_job_config, validate_job_dict
from launcher.errors import UserError
from launcher.plan.advice import with_changes
from launcher.plan.architecture import read_architecture
from launcher.plan.memory import Layout, plan_rank
from tests.conftest import REPO_ROOT
from tests.fixtures import assert_user_error, ftlaunch

ARCHITECTURES = Path(__file__).parent / "architectures"
EXAMPLES = REPO_ROOT / "configs" / "examples"
GPU_80GB = PlanOptions(gpu_memory=80 * 10**9)


def model_dir(tmp_path: Path, name: str) -> Path:
    """A model directory holding only the architecture's config.json (no weights)."""
    directory = tmp_path / name
    directory.mkdir()
    shutil.copyfile(ARCHITECTURES / f"{name}.json", directory / "config.json")
    return directory


def example(tmp_path: Path, config: str, architecture: str):
    directory = model_dir(tmp_path, architecture)
    job = load_job_config(EXAMPLES / config, [f"model.path={directory}"])
    return job, directory


@pytest.mark.parametrize(
    ("config", "architecture", "params"),
    [
        ("llama-3.1-8b-full-2x8.yaml", "llama-3.1-8b", 8_030_261_248),
        ("llama-3.1-70b-lora-4x8.yaml", "llama-3.1-70b", 70_553_706_496),
        ("qwen2.5-0.5b-lora-1gpu.yaml", "qwen2.5-0.5b", 494_032_768),
    ],
)
def test_example_configs_count_parameters_exactly(
    tmp_path: Path, config: str, architecture: str, params: int
) -> None:
    job, directory = example(tmp_path, config, architecture)
    started = time.perf_counter()
    plan = plan_job(job, directory, GPU_80GB)
    assert time.perf_counter() - started < 2.0
    assert plan.arch.params == params and plan.arch.counted_from == "config.json"
    assert plan.layout.device == "gpu" and plan.verdict.fits is True


def test_zero3_full_fine_tuning_holds_16_bytes_per_parameter_over_the_ranks(
    tmp_path: Path,
) -> None:
    job, directory = example(tmp_path, "llama-3.1-8b-full-2x8.yaml", "llama-3.1-8b")
    plan = plan_job(job, directory, GPU_80GB)
    p, n = 8_030_261_248, 16
    rank = plan.rank
    # bf16 weights and gradients, fp32 master weights and two Adam moments, all partitioned.
    assert (rank.weights_bytes, rank.grads_bytes, rank.optimizer_bytes) == (
        2 * p // n,
        2 * p // n,
        12 * p // n,
    )
    assert abs(rank.model_states_bytes - 16 * p // n) <= 2
    # The stage table follows the ZeRO paper: stage 1 partitions the optimizer, 2 the grads too.
    layout = plan.layout
    states = {
        s: plan_rank(with_changes(job, {"engine.zero_stage": s}), plan.arch, layout)
        for s in range(4)
    }
    assert states[0].model_states_bytes == 16 * p
    assert states[1].model_states_bytes == 4 * p + 12 * p // n
    assert states[2].model_states_bytes == 2 * p + 2 * p // n + 12 * p // n
    assert [row["peak_bytes"] for row in plan.stages if row["offload"] == "none"] == sorted(
        (row["peak_bytes"] for row in plan.stages if row["offload"] == "none"), reverse=True
    )


def test_lora_counts_only_the_adapter_for_gradients_and_optimizer(tmp_path: Path) -> None:
    job, directory = example(tmp_path, "llama-3.1-70b-lora-4x8.yaml", "llama-3.1-70b")
    plan = plan_job(job, directory, GPU_80GB)
    h, kv, inter, layers, r = 8192, 1024, 28672, 80, 16
    per_layer = r * (2 * (h + h) + 2 * (h + kv) + 3 * (h + inter))
    assert plan.trainable == layers * per_layer == 207_093_760
    p, n, t = 70_553_706_496 + plan.trainable, 32, plan.trainable
    assert plan.rank.weights_bytes == 2 * p // n
    assert (plan.rank.grads_bytes, plan.rank.optimizer_bytes) == (2 * t // n, 12 * t // n)
    # The example lists every projection: 'all-linear' (peft: all linear layers but the output
    # layer) adapts the same modules, and lm_head is not among them.
    every = job.model_copy(
        update={"peft": job.peft.model_copy(update={"target_modules": "all-linear"})}
    )
    assert plan_job(every, directory, GPU_80GB).trainable == 207_093_760


def test_a_job_that_cannot_fit_gets_the_dominant_part_and_a_change_that_fits(
    tmp_path: Path,
) -> None:
    job, directory = example(tmp_path, "llama-3.1-8b-full-2x8.yaml", "llama-3.1-8b")
    job = with_changes(
        job, {"engine.zero_stage": 0, "training.micro_batch_size": 4, "training.grad_accum": 2}
    )
    plan = plan_job(job, directory, GPU_80GB)
    assert plan.verdict.fits is False and plan.verdict.dominant == "optimizer states"
    suggestion = plan.verdict.suggestion or ""
    assert (
        suggestion.startswith("set engine.zero_stage: 1") and "global batch 128 kept" in suggestion
    )
    changes = dict(part.split(": ") for part in suggestion[4:].split(" (")[0].split(", "))
    fixed = with_changes(job, {k: int(v) if v.isdigit() else v for k, v in changes.items()})
    assert fixed.global_batch_size() == job.global_batch_size()
    assert plan_job(fixed, directory, GPU_80GB).verdict.fits is True


def test_safetensors_header_counts_what_config_json_cannot(tmp_path: Path) -> None:
    directory = tmp_path / "custom"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "mystery", "hidden_size": 8,
                                                       "num_attention_heads": 2, "num_hidden_layers": 1}))  # fmt: skip
    with pytest.raises(UserError, match="model_type 'mystery', whose size the planner cannot"):
        read_architecture(directory, "causal-lm", 2)
    header = {"w.weight": {"dtype": "BF16", "shape": [8, 8], "data_offsets": [0, 128]},
              "layers.0.b": {"dtype": "BF16", "shape": [8], "data_offsets": [128, 144]}}  # fmt: skip
    raw = json.dumps(header).encode()
    (directory / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(144))
    arch = read_architecture(directory, "causal-lm", 2)
    assert (arch.params, arch.counted_from, arch.checkpoint_bytes) == (
        72,
        "safetensors header",
        144,
    )


def test_a_missing_config_key_is_named(tmp_path: Path) -> None:
    directory = model_dir(tmp_path, "llama-3.1-8b")
    config = json.loads((directory / "config.json").read_text())
    del config["intermediate_size"]
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"config\.json has no 'intermediate_size'"):
        read_architecture(directory, "causal-lm", 2)


def test_cpu_ranks_share_the_node_and_pay_the_framework_overhead(tmp_path: Path) -> None:
    directory = model_dir(tmp_path, "qwen2.5-0.5b")
    raw = {"model": {"path": str(directory), "task": "causal-lm"},
           "data": {"train": "a", "validation": "b", "test": "c"}}  # fmt: skip
    job = validate_job_dict(raw)
    plan = plan_job(job, directory, PlanOptions(cpu_memory=16 * 2**30))
    assert plan.layout == Layout(world=2, workers_per_node=2, device="cpu")
    assert plan.target.bytes_per_rank == 8 * 2**30
    assert plan.rank.overhead_bytes > 0 and plan.rank.peak_bytes > plan.rank.model_states_bytes


def test_the_optimizer_step_and_backward_peak_apart(tmp_path: Path) -> None:
    """AdamW's step on CPU holds two fp32 temporaries per element it steps at once (8 bytes),
    DeepSpeed also an fp32 copy of the gradients (4): the whole flat partition at ZeRO-1, the
    largest tensor under torch's own step at ZeRO-0. That peak comes after backward's activations are
    freed: the rank's peak is the larger of the two, not their sum."""
    directory = model_dir(tmp_path, "qwen2.5-0.5b")
    raw = {"model": {"path": str(directory), "task": "causal-lm"},
           "data": {"train": "a", "validation": "b", "test": "c", "max_length": 16},
           "engine": {"zero_stage": 1}, "cluster": {"num_workers": 2}}  # fmt: skip
    job = validate_job_dict(raw)
    arch = read_architecture(directory, "causal-lm", 2)
    layout = Layout(world=2, workers_per_node=2, device="cpu")
    p, embedding = 494_032_768, 151_936 * 896
    short = plan_rank(job, arch, layout)
    assert short.step_bytes == 12 * (p // 2) and short.step_bytes > short.activations_bytes
    assert short.peak_bytes == short.overhead_bytes + short.model_states_bytes + short.step_bytes
    zero0 = plan_rank(with_changes(job, {"engine.zero_stage": 0}), arch, layout)
    assert zero0.step_bytes == 8 * embedding
    long = plan_rank(with_changes(job, {"training.micro_batch_size": 64}), arch, layout)
    backward = long.activations_bytes + long.temporary_bytes
    assert backward > long.step_bytes == short.step_bytes
    assert long.peak_bytes == long.overhead_bytes + long.model_states_bytes + backward
    # On GPU torch steps every tensor of a group at once with one fp32 temporary (foreach).
    gpu = Layout(world=2, workers_per_node=2, device="gpu")
    assert plan_rank(job, arch, gpu).step_bytes == (4 + 4) * (p // 2)
    assert plan_rank(with_changes(job, {"engine.zero_stage": 0}), arch, gpu).step_bytes == 4 * p


def test_plan_cli_prints_json_and_refuses_bad_input(tmp_path: Path) -> None:
    directory = model_dir(tmp_path, "llama-3.1-70b")
    config = str(EXAMPLES / "llama-3.1-70b-lora-4x8.yaml")
    result = ftlaunch("plan", config, "--set", f"model.path={directory}", "--gpu-memory", "80GB",
                      "--json", timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["params"] == 70_553_706_496 and plan["fits"] is True
    assert set(plan["per_rank"]) >= {"weights_bytes", "grads_bytes", "optimizer_bytes",
                                     "model_states_bytes", "activations_bytes", "peak_bytes",
                                     "device"}  # fmt: skip
    assert len(plan["stages"]) == 7 and plan["tokens_per_s"] > 0

    bad = ftlaunch("plan", config, "--set", f"model.path={directory}", "--gpu-memory", "lots")
    assert_user_error(bad, "--gpu-memory: cannot read 'lots' as a size")
    (directory / "config.json").unlink()
    missing = ftlaunch("plan", config, "--set", f"model.path={directory}", "--gpu-memory", "80GB")
    assert_user_error(missing, "model.path:", "no config.json")


def test_run_refuses_a_job_that_cannot_fit_before_anything_starts(tmp_path: Path) -> None:
    from tests.fixtures import TOKENIZER_FILES, minilm_dir

    directory = model_dir(tmp_path, "llama-3.1-70b")
    for name in TOKENIZER_FILES:
        shutil.copyfile(minilm_dir() / name, directory / name)
    job = tmp_path / "job.yaml"
    out = tmp_path / "out"
    job.write_text(
        f"model: {{path: {directory}, task: causal-lm}}\n"
        f"data: {{train: {tmp_path / 'absent.jsonl'}, validation: v, test: t, max_length: 512}}\n"
        f"output: {{dir: {out}}}\n"
    )
    result = ftlaunch("run", str(job), "--set", f"data.cache_dir={tmp_path / 'cache'}")
    assert_user_error(result, "plan: needs", "dominant: ", "(or run with --force)")
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_the_gpu_check_script_plans_its_model(tmp_path: Path) -> None:
    """benchmarks/gpu_check.sh is run on a GPU by hand; what CPU can check: its syntax and the
    plan it makes (the 1.1B model's exact size, and that it fits an 80 GB GPU)."""
    script = REPO_ROOT / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    result = subprocess.run(
        ["bash", str(script), "--plan-only"],
        env={**os.environ, "WORK": str(tmp_path), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["params"] == 1_100_048_384 and plan["fits"] is True
    assert plan["per_rank"]["device"] == "gpu" and plan["flops_per_token"] > 6 * plan["params"]


def test_the_checkpoint_snapshot_pool_is_counted_when_the_job_checkpoints(tmp_path: Path) -> None:
    """Each save copies the rank's optimizer states and best weights (and under ZeRO 0-2 rank 0's
    weights file) into a shared-memory pool kept for the run: host memory, part of the peak on
    CPU workers, none without checkpoints."""
    job, directory = example(tmp_path, "llama-3.1-8b-full-2x8.yaml", "llama-3.1-8b")
    arch, p, n = read_architecture(directory, "causal-lm", 16), 8_030_261_248, 16
    gpu, cpu = Layout(16, 8, "gpu"), Layout(16, 8, "cpu")
    saving = with_changes(job, {"training.checkpoint_every": 100})
    assert plan_rank(saving, arch, gpu).snapshot_bytes == 12 * p // n + 2 * p // n
    zero2 = with_changes(saving, {"engine.zero_stage": 2})
    assert plan_rank(zero2, arch, gpu).snapshot_bytes == 12 * p // n + 2 * p + 2 * p
    quiet = with_changes(job, {"training.checkpoint_every": None})
    assert plan_rank(quiet, arch, gpu).snapshot_bytes == 0
    on_cpu, without = plan_rank(saving, arch, cpu), plan_rank(quiet, arch, cpu)
    training = on_cpu.model_states_bytes + max(
        on_cpu.activations_bytes + on_cpu.temporary_bytes, on_cpu.step_bytes
    )
    assert on_cpu.peak_bytes == on_cpu.overhead_bytes + training + on_cpu.snapshot_bytes
    assert without.peak_bytes < on_cpu.peak_bytes  # here loading no longer dominates
    assert "checkpoint snapshot pool" in on_cpu.components()
