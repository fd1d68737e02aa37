"""engine.backend: accelerate without processes: config validation (through the real CLI for the
one-line exit-2 contract), the pure Accelerator plan and plugin arguments, which checkpoint files
each rank fetches, and reading Accelerate's checkpoint formats for export."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from launcher.config_loading import validate_job_dict
from launcher.errors import UserError
from tests.fixtures import assert_user_error, ftlaunch

MINIMAL = {"model": {"path": "m"}, "data": {"train": "a", "validation": "b", "test": "c"}}


def _job(engine: dict):
    return validate_job_dict(MINIMAL | {"engine": engine})


def _errors(engine: dict) -> list[str]:
    with pytest.raises(UserError) as info:
        _job(engine)
    return info.value.messages


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (
            ["engine.fsdp.sharding=hybrid"],
            "engine.fsdp: FSDP options need engine.backend: accelerate and engine.strategy: fsdp "
            "(got backend deepspeed, strategy deepspeed)",
        ),
        (
            ["engine.backend=accelerate", "engine.strategy=ddp", "engine.fsdp.cpu_offload=true"],
            "engine.fsdp: FSDP options need engine.backend: accelerate and engine.strategy: fsdp",
        ),
        (["engine.strategy=fsdp"], "engine.strategy: 'fsdp' needs engine.backend: accelerate"),
        (
            ["engine.backend=accelerate", "engine.strategy=fsdp", "engine.offload=cpu"],
            "engine.offload: is a DeepSpeed option; engine.strategy is 'fsdp'",
        ),
        (["engine.backend=torch"], "engine.backend: must be one of 'deepspeed' or 'accelerate'"),
        (
            ["engine.backend=accelerate", "engine.strategy=fsdp", "engine.fsdp.shard=full"],
            "engine.fsdp.shard: unknown key",
        ),
    ],
)
def test_engine_options_for_another_engine_exit_2_with_one_line(
    tmp_path: Path, overrides: list[str], fragment: str
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("model: {path: m}\ndata: {train: a, validation: b, test: c}\n")
    args = [a for o in overrides for a in ("--set", o)]
    assert_user_error(ftlaunch("validate", str(job), *args, timeout=60), fragment)


def test_valid_engine_configs() -> None:
    assert _job({}).engine.runs_deepspeed()
    ds = _job({"backend": "accelerate", "strategy": "deepspeed", "zero_stage": 3, "offload": "cpu"})
    assert ds.engine.runs_deepspeed() and ds.engine.zero_stage == 3
    fsdp = _job({"backend": "accelerate", "strategy": "fsdp", "fsdp": {"sharding": "hybrid"}})
    assert fsdp.engine.fsdp_options().sharding == "hybrid" and not fsdp.engine.runs_deepspeed()
    assert (
        _job({"backend": "accelerate", "strategy": "fsdp"}).engine.fsdp_options().sharding == "full"
    )
    # The worker re-validates the dumped spec: what validated once must validate again.
    assert validate_job_dict(fsdp.model_dump(mode="json")) == fsdp
    assert _errors({"backend": "accelerate", "strategy": "ddp", "fsdp": {}})


def test_accelerate_plan_on_cpu_and_gpu() -> None:
    from trainer.engines.accelerate import AcceleratePlan, accelerate_plan

    def plan(strategy: str, on_gpu: bool) -> AcceleratePlan:
        return accelerate_plan(_job({"backend": "accelerate", "strategy": strategy}).engine, on_gpu)

    # CPU: DeepSpeed needs the gloo backend named (not cpu=True, which drops DeepSpeed);
    # DDP takes Accelerate's MULTI_CPU path; FSDP is selected on top of MULTI_CPU.
    assert plan("deepspeed", False) == AcceleratePlan(
        "deepspeed", False, "gloo", False, "DEEPSPEED"
    )
    assert plan("ddp", False) == AcceleratePlan("ddp", True, None, False, "MULTI_CPU")
    assert plan("fsdp", False) == AcceleratePlan("fsdp", True, None, True, "FSDP")
    for strategy, expected in (("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed", "DEEPSPEED")):
        gpu = plan(strategy, True)
        assert (gpu.cpu, gpu.process_group_backend, gpu.select_fsdp) == (False, None, False)
        assert gpu.expected_type == expected


def test_plugin_arguments_are_accepted_by_accelerate() -> None:
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin

    from trainer.engines.accelerate import (
        deepspeed_plugin_config,
        fsdp_plugin_kwargs,
        hybrid_mesh,
    )

    fsdp = _job({"backend": "accelerate", "strategy": "fsdp", "fsdp": {"cpu_offload": True}})
    kwargs = fsdp_plugin_kwargs(fsdp.engine.fsdp_options(), ["BertLayer"])
    assert kwargs["fsdp_version"] == 2 and kwargs["cpu_offload"] is True
    assert kwargs["transformer_cls_names_to_wrap"] == ["BertLayer"]
    assert fsdp_plugin_kwargs(fsdp.engine.fsdp_options(), [])["auto_wrap_policy"] is None
    plugin = FullyShardedDataParallelPlugin(**kwargs)
    assert plugin.fsdp_version == 2 and plugin.cpu_offload is not None

    assert hybrid_mesh(8, 4) == {"dp_replicate_size": 2, "dp_shard_size": 4}
    for world, per_node in ((6, 4), (4, 1)):
        with pytest.raises(ValueError, match=r"engine\.fsdp\.sharding: hybrid needs"):
            hybrid_mesh(world, per_node)

    ds = _job({"backend": "accelerate", "strategy": "deepspeed", "zero_stage": 3})
    config = deepspeed_plugin_config(ds, world_size=2)
    assert config["zero_optimization"]["stage"] == 3 and config["train_batch_size"] == 16 * 2
    assert DeepSpeedPlugin(hf_ds_config=config).zero_stage == 3


def test_block_classes_skip_the_one_holding_the_input_embedding() -> None:
    from transformers import BertConfig, BertForSequenceClassification

    from trainer.engines.accelerate import block_classes

    config = BertConfig(
        vocab_size=50,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
    )
    model = BertForSequenceClassification(config)
    # transformers >= 5 lists both (4.x lists none): set them, so the test holds for every
    # release the floors allow
    model._no_split_modules = ["BertEmbeddings", "BertLayer"]
    assert block_classes(model) == ["BertLayer"]


def test_each_rank_fetches_only_what_it_needs() -> None:
    from trainer.loop.checkpoints import rank_needs

    names = [
        "trainer_state_rank1.json",
        "best_rank0.pt",
        "ds/mp_rank_00_model_states.pt",
        "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt",
        "acc/model.safetensors",
        "acc/optimizer.bin",
        "acc/scheduler.bin",
        "acc/random_states_0.pkl",
        "acc/random_states_1.pkl",
        "acc/pytorch_model/zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "acc/pytorch_model/zero_pp_rank_1_mp_rank_00_model_states.pt",
        "acc/latest",
        "acc/pytorch_model_fsdp_0/.metadata",
        "acc/pytorch_model_fsdp_0/__0_0.distcp",
        "acc/optimizer_0/__1_0.distcp",
    ]
    assert [n for n in names if rank_needs(n, 1)] == [
        "trainer_state_rank1.json",
        "ds/mp_rank_00_model_states.pt",
        "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt",
        "acc/model.safetensors",
        "acc/optimizer.bin",
        "acc/scheduler.bin",
        "acc/random_states_1.pkl",
        "acc/pytorch_model/zero_pp_rank_1_mp_rank_00_model_states.pt",
        # DCP: replicated entries may sit in any rank's file, so the whole directory
        "acc/pytorch_model_fsdp_0/.metadata",
        "acc/pytorch_model_fsdp_0/__0_0.distcp",
        "acc/optimizer_0/__1_0.distcp",
    ]


def test_export_reads_a_dcp_model_tensor_by_tensor_and_refuses_foreign_pickles(
    tmp_path: Path,
) -> None:
    import torch
    import torch.distributed.checkpoint as dcp

    from trainer.export.readers import accelerate_tensors
    from trainer.formats.checkpoints import UnsafeCheckpointError

    weights = {"bert.w": torch.randn(6, 4), "classifier.bias": torch.randn(3)}
    dcp_dir = tmp_path / "acc" / "pytorch_model_fsdp_0"
    dcp.save({"model": weights}, checkpoint_id=str(dcp_dir), no_dist=True)
    tensors = accelerate_tensors(tmp_path / "acc")
    assert {k: tuple(shape) for k, (shape, _) in tensors.items()} == {
        "bert.w": (6, 4),
        "classifier.bias": (3,),
    }
    for name, (_, produce) in tensors.items():
        torch.testing.assert_close(produce(), weights[name], rtol=0, atol=0)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (dcp_dir / ".metadata").write_bytes(pickle.dumps(Evil(), protocol=4))
    with pytest.raises(UnsafeCheckpointError, match=r"builtins\.print: not allowed"):
        accelerate_tensors(tmp_path / "acc")


def test_a_checkpoint_resumes_only_under_the_engine_that_wrote_it() -> None:
    from launcher.resume import config_fingerprint

    prints = {
        config_fingerprint(_job(engine), ["a", "b"])
        for engine in (
            {},
            {"backend": "accelerate", "strategy": "deepspeed"},
            {"backend": "accelerate", "strategy": "ddp"},
            {"backend": "accelerate", "strategy": "fsdp"},
        )
    }
    assert len(prints) == 4
    # Pinned: adding an engine must not change the deepspeed backend's fingerprint, or its existing
    # checkpoints would stop resuming. (It last changed when the number of workers and grad_accum
    # left it, so that a checkpoint resumes on another number of workers, before any release.)
    assert config_fingerprint(_job({}), ["a", "b"]) == "ebe064e52b1e803d"
    # Where a node caches the model and the attention kernel leave what a checkpoint holds as it
    # is (a run may resume with them changed), unlike the model itself.
    model = {"path": "m", "node_cache_dir": "/scratch/models", "attn_implementation": "eager"}
    moved = validate_job_dict(MINIMAL | {"model": model})
    assert config_fingerprint(moved, ["a", "b"]) == "ebe064e52b1e803d"
    other = validate_job_dict(MINIMAL | {"model": {"path": "m", "task": "causal-lm"}})
    assert config_fingerprint(other, ["a", "b"]) != "ebe064e52b1e803d"
