"""Causal-LM rows -> token ids plus per-token labels (-100 where no loss), optionally packed.

Masking happens here, once, at prepare time, and is stored in the Arrow shards: the worker never
needs the chat template or the column layout, and a prepared split can be audited token by token.

Packing is also done here rather than in the reader. A packed row is then an ordinary row of
the split, so the reader's exact, world-size-independent resume position (rows consumed) keeps
working unchanged, and the packing efficiency is known before any worker starts. The price is
that examples packed together stay together in every epoch; the order of packed rows is still
reshuffled each epoch.

Each stored row has `position_ids` that restart at 0 for every example. The worker passes them to
the model with no 2D attention mask; transformers (masking_utils.find_packed_sequence_indices)
then builds a block-diagonal causal mask from the restarts, so attention never crosses examples
(for sdpa/eager/flex; flash-attention uses the same position ids as varlen boundaries).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from tokenizers import Tokenizer

from launcher.data.chat import ChatRenderer
from launcher.errors import UserError
from trainer.formats.shards import CAUSAL_SCHEMA, IGNORE_INDEX

Example = tuple[list[int], list[int]]  # (input ids, labels)


@dataclass(frozen=True)
class CausalFormat:
    """How the rows of a causal-LM split become tokens and loss masks (data.format & co)."""

    format: str = "text"
    packing: bool = False
    text_column: str = "text"
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    messages_column: str = "messages"

    def columns(self) -> tuple[str, ...]:
        if self.format == "prompt-completion":
            return (self.prompt_column, self.completion_column)
        if self.format == "chat":
            return (self.messages_column,)
        return (self.text_column,)

    def cache_key(self, model_dir: Path) -> list[Any]:
        """Everything besides source and tokenizer that changes the shards."""
        if self.format != "chat":
            return [self.format, list(self.columns()), self.packing, None]
        # Rendered by transformers (launcher/data/chat.py): its version can change the text.
        renderer = f"transformers {_transformers_version()} apply_chat_template"
        return [
            self.format,
            list(self.columns()),
            self.packing,
            read_chat_template(model_dir),
            renderer,
        ]


def _transformers_version() -> str:
    from importlib.metadata import version

    return version("transformers")


def read_chat_template(model_dir: Path) -> str | None:
    """The tokenizer's default chat template (tokenizer_config.json or chat_template.jinja)."""
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text()
    config_file = model_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template.strip() else None


def _special_token(config: dict[str, Any], name: str) -> str | None:
    value = config.get(name)
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class CausalEncoder:
    """Tokenizes one record batch of a causal-LM split into stored rows (pure but for the files
    it reads at construction); keeps the counts the manifest reports."""

    def __init__(self, model_dir: Path, max_length: int, fmt: CausalFormat, field: str) -> None:
        self.fmt, self.max_length = fmt, max_length
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        config_file = model_dir / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        self.special = {k: _special_token(config, k) for k in ("bos_token", "eos_token")}
        eos = self.special["eos_token"]
        self.eos_id = self.tokenizer.token_to_id(eos) if eos else None
        self.chat: ChatRenderer | None = None
        if fmt.format == "chat":
            text = read_chat_template(model_dir)
            if text is None:
                raise UserError(
                    f"data.format: 'chat' needs a chat template, but the tokenizer in {model_dir} "
                    "has none (no chat_template in tokenizer_config.json or chat_template.jinja)"
                )
            self.chat = ChatRenderer(model_dir, text, field)
        self.examples = self.loss_tokens = self.slot_tokens = 0

    def record_batch(self, batch: pa.RecordBatch, where: str, first_id: int) -> pa.RecordBatch:
        columns = [batch.column(name).to_pylist() for name in self.fmt.columns()]
        examples = [
            self._encode(values, f"{where} row {self.examples + i + 1}")
            for i, values in enumerate(zip(*columns, strict=True))
        ]
        self.examples += len(examples)
        self.loss_tokens += sum(
            sum(1 for x in labels if x != IGNORE_INDEX) for _, labels in examples
        )
        if self.fmt.packing:
            rows = pack_examples(examples, self.max_length)
            self.slot_tokens += len(rows) * self.max_length
        else:
            rows = [(ids, labels, list(range(len(ids)))) for ids, labels in examples]
        return rows_to_batch(rows, first_id)

    def _encode(self, values: tuple[Any, ...], where: str) -> Example:
        fmt = self.fmt.format
        if any(v is None for v in values):
            missing = [c for c, v in zip(self.fmt.columns(), values, strict=True) if v is None]
            raise UserError(f"{where}: empty value in column {missing[0]!r}")
        if fmt == "text":
            ids = self._ids(str(values[0]), specials=True) + self._eos()
            labels = list(ids)
        elif fmt == "prompt-completion":
            prompt = self._ids(str(values[0]), specials=True)
            completion = self._ids(str(values[1]), specials=False) + self._eos()
            ids, labels = prompt + completion, [IGNORE_INDEX] * len(prompt) + completion
        else:
            ids, labels = self._encode_chat(values[0], where)
        ids, labels = ids[: self.max_length], labels[: self.max_length]
        if labels:  # the first token of an example is never predicted (and must not be when packed)
            labels[0] = IGNORE_INDEX
        return ids, labels

    def _ids(self, text: str, specials: bool) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=specials).ids

    def _eos(self) -> list[int]:
        return [self.eos_id] if self.eos_id is not None else []

    def _encode_chat(self, messages: Any, where: str) -> Example:
        messages = check_messages(messages, where, self.fmt.messages_column)
        if self.chat is None:  # only chat rows are encoded here, and chat needs a template
            raise UserError(f"{where}: data.format: 'chat' rows need a chat template")
        return self.chat.encode(messages, where)


def check_messages(messages: Any, where: str, column: str) -> list[dict[str, Any]]:
    """A chat row must be a list of {role, content} with string values."""
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: column {column!r} must hold a non-empty list of messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise UserError(f"{where}: {column}[{i}] is not a {{role, content}} mapping")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise UserError(
                    f"{where}: {column}[{i}] has no {key!r} field (each message needs "
                    "'role' and 'content' strings for the chat template)"
                )
    return [{k: v for k, v in m.items() if v is not None} for m in messages]


def pack_examples(examples: list[Example], max_length: int) -> list[tuple[list[int], ...]]:
    """First-fit decreasing into rows of at most `max_length` tokens (deterministic).

    Returns (input ids, labels, position ids) per packed row; position ids restart per example.
    """
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i][0]), i))
    bins: list[list[int]] = []
    room: list[int] = []
    for index in order:
        size = len(examples[index][0])
        target = next((b for b, free in enumerate(room) if free >= size), None)
        if target is None:
            bins.append([])
            room.append(max_length)
            target = len(bins) - 1
        bins[target].append(index)
        room[target] -= size
    rows = []
    for members in bins:
        ids, labels, positions = [], [], []
        for index in sorted(members):  # input order inside a row
            ids += examples[index][0]
            labels += examples[index][1]
            positions += range(len(examples[index][0]))
        rows.append((ids, labels, positions))
    return rows


def rows_to_batch(rows: list[tuple[list[int], ...]], first_id: int) -> pa.RecordBatch:
    return pa.record_batch(
        [
            pa.array(range(first_id, first_id + len(rows)), pa.int64()),
            pa.array([r[0] for r in rows], pa.list_(pa.int32())),
            pa.array([r[1] for r in rows], pa.list_(pa.int32())),
            pa.array([r[2] for r in rows], pa.list_(pa.int32())),
            pa.array([len(r[0]) for r in rows], pa.int32()),
        ],
        schema=CAUSAL_SCHEMA,
    )
