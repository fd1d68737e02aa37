"""The PEFT menu's config: per-method options, one clear line for each bad input, the mapping to
peft's own configs, and the launcher's target_modules check against a model's weight names."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from launcher.config_loading import validate_job_dict
from launcher.errors import UserError
from launcher.peft_targets import (
    adaptable_examples,
    check_target_modules,
    module_names,
    read_weight_shapes,
    unmatched_targets,
)
from trainer.config.peft import PEFT_METHODS

MINIMAL = {"model": {"path": "m"}, "data": {"train": "a", "validation": "b", "test": "c"}}


def job(peft: dict | None = None, **sections: dict):
    raw = dict(MINIMAL, **sections)
    if peft is not None:
        raw["peft"] = peft
    return validate_job_dict(raw)


def errors(peft: dict | None = None, **sections: dict) -> list[str]:
    with pytest.raises(UserError) as info:
        job(peft, **sections)
    return info.value.messages


def test_each_method_validates_with_its_own_options() -> None:
    assert job().peft.method == "none"
    lora = job({"method": "lora", "use_dora": True, "use_rslora": True, "r": 4}).peft
    assert (lora.use_dora, lora.use_rslora, lora.r, lora.can_merge()) == (True, True, 4, True)
    prompt = job({"method": "prompt_tuning", "num_virtual_tokens": 8, "init_text": "hi"}).peft
    assert prompt.num_virtual_tokens == 8 and prompt.init_text == "hi"
    assert prompt.is_prompt_learning() and not prompt.can_merge()
    assert job({"method": "adapter", "r": 2}).peft.can_merge()
    assert job({"method": "ia3", "target_modules": ["key"]}).peft.target_modules == ["key"]


@pytest.mark.parametrize(
    ("peft", "expected"),
    [
        (
            {"method": "lora", "num_virtual_tokens": 4},
            "peft.num_virtual_tokens: not an option of peft.method 'lora' "
            "(its options: r, alpha, dropout, target_modules, use_dora, use_rslora)",
        ),
        (
            {"method": "prompt_tuning", "r": 4},
            "peft.r: not an option of peft.method 'prompt_tuning' "
            "(its options: num_virtual_tokens, init_text)",
        ),
        ({"r": 4}, "peft.r: not an option of peft.method 'none' (its options: none)"),
        ({"method": "ia3", "use_dora": True}, "peft.use_dora: not an option of peft.method 'ia3'"),
        ({"method": "lora", "r": 0}, "peft.r: must be > 0 (got 0)"),
        (
            {"method": "prompt_tuning", "num_virtual_tokens": 0},
            "peft.num_virtual_tokens: must be > 0",
        ),
        ({"method": "qlora"}, "peft.method: must be one of 'none', 'lora', 'adapter', "),
    ],
)
def test_a_bad_peft_option_gets_one_line_naming_it(peft: dict, expected: str) -> None:
    (line,) = errors(peft)
    assert line.startswith(expected), line


def test_precision_and_prefix_rules() -> None:
    assert (
        job(training={"precision": "bf16", "gradient_checkpointing": True}).training.precision
        == "bf16"
    )
    (line,) = errors(training={"precision": "fp16"})
    assert line.startswith("training.precision: fp16 needs GPUs"), line
    fp16_gpu = job(training={"precision": "fp16"}, cluster={"gpus_per_worker": 1})
    assert fp16_gpu.training.precision == "fp16"
    (line,) = errors({"method": "prefix_tuning"})
    assert line.startswith("peft.method: prefix_tuning is not available for model.task"), line
    (line,) = errors(training={"precision": "fp8"})
    assert line.startswith("training.precision: must be one of 'fp32', 'bf16' or 'fp16'"), line


def test_the_resolved_config_round_trips_through_a_worker() -> None:
    from trainer.config.spec import RunSpec

    original = job({"method": "prompt_tuning", "num_virtual_tokens": 3})
    spec = RunSpec(job=original, model_dir="m", split_dirs={}, label_names=["a"], run_id="r")
    again = RunSpec.model_validate(spec.model_dump(mode="json"))
    assert again.job.peft == original.peft and type(again.job.peft) is type(original.peft)


def test_every_method_maps_to_a_real_peft_config(tmp_path: Path) -> None:
    import peft

    from tests.fixtures import TOKENIZER_FILES, minilm_dir
    from trainer.model.peft import peft_config_for, task_type

    for name in TOKENIZER_FILES:  # prompt-tuning init_text needs the tokenizer
        (tmp_path / name).write_bytes((minilm_dir() / name).read_bytes())
    assert task_type("sequence-classification") == peft.TaskType.SEQ_CLS
    assert task_type("causal-lm") == peft.TaskType.CAUSAL_LM
    expected = {
        "lora": peft.LoraConfig,
        "adapter": peft.LoHaConfig,
        "ia3": peft.IA3Config,
        "prompt_tuning": peft.PromptTuningConfig,
        "prefix_tuning": peft.PrefixTuningConfig,
    }
    for method, cls in expected.items():
        options = {"init_text": "great"} if method == "prompt_tuning" else {}
        cfg = PEFT_METHODS[method](**options)
        mapped = peft_config_for(cfg, "sequence-classification", tmp_path)
        assert type(mapped) is cls and mapped.task_type == peft.TaskType.SEQ_CLS
    lora = peft_config_for(
        PEFT_METHODS["lora"](r=4, alpha=8, use_dora=True, use_rslora=True, target_modules=["q"]),
        "causal-lm",
        tmp_path,
    )
    assert (lora.r, lora.lora_alpha, lora.use_dora, lora.use_rslora) == (4, 8, True, True)
    assert set(lora.target_modules) == {"q"} and lora.task_type == peft.TaskType.CAUSAL_LM
    prompt = peft_config_for(
        PEFT_METHODS["prompt_tuning"](init_text="great"), "causal-lm", tmp_path
    )
    assert prompt.prompt_tuning_init == peft.PromptTuningInit.TEXT
    assert prompt.prompt_tuning_init_text == "great"


def write_safetensors_header(path: Path, shapes: dict[str, list[int]]) -> None:
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * (shape[0] * (shape[1] if len(shape) > 1 else 1))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"\0" * offset)


BERT_LIKE = {
    "bert.encoder.layer.0.attention.self.query.weight": [4, 4],
    "bert.encoder.layer.0.attention.self.value.weight": [4, 4],
    "bert.encoder.layer.0.attention.output.dense.weight": [4, 4],
    "bert.encoder.layer.0.attention.output.LayerNorm.weight": [4],
    "bert.encoder.layer.1.attention.self.query.weight": [4, 4],
}


def test_target_modules_are_checked_against_the_weight_names(tmp_path: Path) -> None:
    write_safetensors_header(tmp_path / "model.safetensors", BERT_LIKE)
    shapes = read_weight_shapes(tmp_path)
    assert shapes == BERT_LIKE
    modules = module_names(shapes)
    assert "bert.encoder.layer.0.attention.self.query" in modules and "classifier" in modules
    assert unmatched_targets(modules, ["query", "output.dense", "classifier", "qkv", "ery"]) == [
        "qkv",
        "ery",
    ]
    assert adaptable_examples(shapes)[0] == "query"  # matrices only, most frequent first
    peft = job({"method": "lora", "target_modules": ["query", "qkv"]}).peft
    with pytest.raises(UserError) as info:
        check_target_modules(peft, tmp_path)
    (line,) = info.value.messages
    assert line.startswith("peft.target_modules: 'qkv' matches no module of ") and (
        "modules here include: query, output.dense, value" in line
    ), line
    check_target_modules(job({"method": "lora", "target_modules": ["value"]}).peft, tmp_path)
    check_target_modules(job({"method": "prompt_tuning"}).peft, tmp_path)  # nothing to check


def test_a_sharded_checkpoint_is_read_through_its_index(tmp_path: Path) -> None:
    names = list(BERT_LIKE)
    write_safetensors_header(tmp_path / "a.safetensors", {n: BERT_LIKE[n] for n in names[:2]})
    write_safetensors_header(tmp_path / "b.safetensors", {n: BERT_LIKE[n] for n in names[2:]})
    index = {
        "weight_map": {n: ("a" if i < 2 else "b") + ".safetensors" for i, n in enumerate(names)}
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert read_weight_shapes(tmp_path) == BERT_LIKE
    assert read_weight_shapes(tmp_path / "missing") is None


def test_the_cli_rejects_bad_peft_input_before_any_worker_starts(
    tmp_path: Path, tiny_bert: Path
) -> None:
    from tests.fixtures import assert_user_error, ftlaunch

    job = tmp_path / "job.yaml"
    job.write_text(
        f"model: {{path: {tiny_bert}}}\n"
        f"data: {{train: {tmp_path}/none.jsonl, validation: x, test: y}}\n"
        "peft: {method: lora, target_modules: [query, qkv]}\n"
    )
    assert_user_error(
        ftlaunch("run", str(job), timeout=120),
        "peft.target_modules: 'qkv' matches no module of ",
        "modules here include: ",
        "query",
    )
    assert_user_error(
        ftlaunch("validate", str(job), "--set", "peft.init_text=hi", timeout=60),
        "peft.init_text: not an option of peft.method 'lora' (its options: r, alpha,",
    )
    assert_user_error(
        ftlaunch("validate", str(job), "--set", "training.precision=fp16", timeout=60),
        "training.precision: fp16 needs GPUs",
    )
