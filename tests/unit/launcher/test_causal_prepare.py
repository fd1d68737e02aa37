"""Causal-LM prepare: masks stored in the shards, packing, and the bad-input lines of `ftlaunch run`."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pyarrow as pa
import pytest

from tests.fixtures import (
    assert_user_error,
    causal_chat_rows,
    causal_prompt_rows,
    ftlaunch,
    make_causal_tokenizer,
    write_jsonl,
)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory as far as prepare is concerned: tokenizer plus a GPT-2 config.json."""
    directory = make_causal_tokenizer(tmp_path_factory.mktemp("tok") / "gpt2")
    (directory / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 128}))
    return directory


def _prepare(rows: list[dict], tmp_path: Path, model: Path, fmt: str, packing: bool = False):
    from launcher.data.causal import CausalFormat
    from launcher.data.sources import SplitSource
    from launcher.data.tokenize import TokenizeOptions, prepare_split

    causal = CausalFormat(fmt, packing)
    data = write_jsonl(tmp_path / f"{fmt}-{packing}.jsonl", rows)
    source = SplitSource("data.train", (data,), "text", "label", causal.columns())
    options = TokenizeOptions(model, 64, [], causal=causal)
    split = prepare_split(source, "train", options, tmp_path / "cache")
    table = pa.concat_tables(
        pa.ipc.open_file(str(split.directory / s.file)).read_all() for s in split.manifest.shards
    )
    return split, table


def _decode(model: Path, ids: list[int]) -> str:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(model / "tokenizer.json")).decode(ids, skip_special_tokens=False)


def test_prompt_completion_scores_only_the_completion_and_its_eos(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    rows = [{"prompt": "name the red cat:", "completion": " cat cat"}]
    split, table = _prepare(rows, tmp_path, tokenizer_dir, "prompt-completion")
    ids, labels = table["input_ids"][0].as_py(), table["labels"][0].as_py()
    scored = [t for t in labels if t != -100]
    assert _decode(tokenizer_dir, ids) == "name the red cat: cat cat<|endoftext|>"
    assert _decode(tokenizer_dir, scored) == " cat cat<|endoftext|>"
    assert labels[0] == -100 and split.manifest.loss_tokens == len(scored)
    assert split.manifest.task == "causal-lm" and split.manifest.data_format == "prompt-completion"


def test_chat_scores_only_assistant_turns(tmp_path: Path, tokenizer_dir: Path) -> None:
    split, table = _prepare(causal_chat_rows(3, 0), tmp_path, tokenizer_dir, "chat")
    labels = table["labels"][0].as_py()
    scored_text = _decode(tokenizer_dir, [t for t in labels if t != -100])
    animal = causal_chat_rows(3, 0)[0]["messages"][1]["content"]
    assert scored_text == f"{animal}<|end|>{animal} again<|end|>"
    assert "which animal" not in scored_text and split.manifest.examples == 3


def test_packing_keeps_every_example_and_restarts_positions(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    rows = causal_prompt_rows(40, 0)
    plain, unpacked = _prepare(rows, tmp_path, tokenizer_dir, "prompt-completion")
    split, packed = _prepare(rows, tmp_path, tokenizer_dir, "prompt-completion", packing=True)
    assert split.manifest.total_rows < 40 and all(n <= 64 for n in packed["length"].to_pylist())
    assert split.manifest.total_tokens == plain.manifest.total_tokens
    assert split.manifest.loss_tokens == plain.manifest.loss_tokens
    # Each example reappears intact: cut packed rows where positions restart.
    examples = []
    for ids, positions in zip(
        packed["input_ids"].to_pylist(), packed["position_ids"].to_pylist(), strict=True
    ):
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(ids)]
        examples += [tuple(ids[a:b]) for a, b in itertools.pairwise(starts)]
    assert sorted(examples) == sorted(tuple(x) for x in unpacked["input_ids"].to_pylist())
    assert 0.8 < split.manifest.packing_efficiency() <= 1.0


def test_packing_is_part_of_the_cache_key(tmp_path: Path, tokenizer_dir: Path) -> None:
    rows = causal_prompt_rows(8, 0)
    first, _ = _prepare(rows, tmp_path, tokenizer_dir, "prompt-completion")
    second, _ = _prepare(rows, tmp_path, tokenizer_dir, "prompt-completion", packing=True)
    third, _ = _prepare(rows, tmp_path, tokenizer_dir, "prompt-completion")
    assert (
        first.directory != second.directory and third.reused and third.directory == first.directory
    )


def _job(tmp_path: Path, model: Path, data: Path, fmt: str, max_length: int = 64) -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(
        f"model: {{path: {model}, task: causal-lm}}\n"
        f"data: {{train: {data}, validation: {data}, test: {data}, format: {fmt}, "
        f"max_length: {max_length}, cache_dir: {tmp_path / 'cache'}}}\n"
        f"output: {{dir: {tmp_path / 'out'}}}\n"
    )
    return job


def test_bad_causal_inputs_are_one_line_each(tmp_path: Path, tokenizer_dir: Path) -> None:
    rows = causal_chat_rows(4, 0)
    rows[2]["messages"][1] = {"role": "assistant"}
    missing = write_jsonl(tmp_path / "missing.jsonl", rows)
    assert_user_error(
        ftlaunch("run", str(_job(tmp_path, tokenizer_dir, missing, "chat"))),
        "messages[1] has no 'content' field",
    )
    no_template = tmp_path / "no-template"
    make_causal_tokenizer(no_template, chat_template=False)
    (no_template / "config.json").write_text((tokenizer_dir / "config.json").read_text())
    good = write_jsonl(tmp_path / "good.jsonl", causal_chat_rows(4, 0))
    assert_user_error(
        ftlaunch("run", str(_job(tmp_path, no_template, good, "chat"))),
        "data.format: 'chat' needs a chat template",
    )
    assert_user_error(
        ftlaunch("run", str(_job(tmp_path, tokenizer_dir, good, "chat", max_length=512))),
        "data.max_length: 512 exceeds the model's position limit 128",
    )
    assert_user_error(
        ftlaunch("run", str(_job(tmp_path, tokenizer_dir, good, "prompt-completion"))),
        "has no column 'prompt'",
    )


def test_prepare_cli_writes_causal_shards_that_run_checks_against_the_job(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    data = write_jsonl(tmp_path / "chat.jsonl", causal_chat_rows(6, 0))
    out = tmp_path / "prepared"
    args = ["prepare", str(data), "--tokenizer", str(tokenizer_dir), "--out", str(out)]
    done = ftlaunch(*args, "--format", "chat", "--packing", "--max-length", "96")
    assert done.returncode == 0, done.stderr
    assert "6 chat examples" in done.stdout and "packing efficiency" in done.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["task"], manifest["data_format"], manifest["packing"]) == (
        "causal-lm",
        "chat",
        True,
    )
    assert_user_error(ftlaunch(*args, "--format", "poem"), "--format: must be one of")
    # A job that asks for unpacked chat refuses the packed split before any worker starts.
    job = _job(tmp_path, tokenizer_dir, out, "chat", max_length=96)
    assert_user_error(
        ftlaunch("run", str(job)), "was prepared with format chat, packing true", "data.packing"
    )
