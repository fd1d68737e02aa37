"""Chat rows -> token ids and loss labels, rendered by transformers' own `apply_chat_template`.

Training must see exactly the text inference renders (`ftlaunch generate --chat`, or any
`tokenizer.apply_chat_template` in serving code), so the template is never re-implemented here:
the tokenizer's `apply_chat_template` renders it, with everything transformers provides
(`strftime_now`, its `tojson`, `raise_exception`, `{% generation %}`). Only the tokenizer is
loaded (PreTrainedTokenizerFast): no model, and no torch (a fresh-interpreter test checks it).

Which tokens carry loss: a template that marks assistant text with `{% generation %}` gives the
mask itself (`return_assistant_tokens_mask`). Otherwise each assistant turn is located as the
difference between the conversation rendered up to the turn (with the generation prompt) and
through it, which needs a template that renders turns as prefixes; one that does not is refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from launcher.errors import UserError
from trainer.formats.shards import IGNORE_INDEX

GENERATION_BLOCK = re.compile(r"{%-?\s*generation\s*-?%}")
Example = tuple[list[int], list[int]]  # (input ids, labels)


class ChatRenderer:
    def __init__(self, model_dir: Path, template: str, field: str) -> None:
        from transformers import PreTrainedTokenizerFast

        self.tokenizer = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
        self.tokenizer.chat_template = template  # the one the cache key was computed from
        self.marks_generation = bool(GENERATION_BLOCK.search(template))
        self.field = field

    def render(self, messages: list[dict[str, Any]], generation_prompt: bool, where: str) -> str:
        """The text `apply_chat_template(messages, tokenize=False)` gives.

        Raises:
            UserError: the template fails on these messages (its own raise_exception included).
        """
        from jinja2 import TemplateError

        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
        except (TemplateError, ValueError, TypeError, KeyError) as exc:
            raise UserError(
                f"{where}: the chat template cannot render these messages ({exc})"
            ) from None
        return str(text)  # tokenize=False returns the text

    def encode(self, messages: list[dict[str, Any]], where: str) -> Example:
        """Token ids of the whole conversation; labels are the ids on assistant text, else
        IGNORE_INDEX."""
        if self.marks_generation:
            return self._encode_marked(messages, where)
        return self._encode_by_prefixes(messages, where)

    def _encode_marked(self, messages: list[dict[str, Any]], where: str) -> Example:
        from jinja2 import TemplateError

        try:
            out = self.tokenizer.apply_chat_template(
                messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            )
        except (TemplateError, ValueError, TypeError, KeyError) as exc:
            raise UserError(
                f"{where}: the chat template cannot render these messages ({exc})"
            ) from None
        ids = [int(i) for i in out["input_ids"]]  # pyright: ignore[reportIndexIssue]
        mask = out["assistant_masks"]  # pyright: ignore[reportIndexIssue]
        return ids, [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]

    def _encode_by_prefixes(self, messages: list[dict[str, Any]], where: str) -> Example:
        full = self.render(messages, False, where)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.render(messages[:i], True, where)
            through = self.render(messages[: i + 1], False, where)
            if not (through.startswith(before) and full.startswith(through)):
                raise UserError(
                    f"{where}: the chat template does not render turns as prefixes of the "
                    "conversation, so assistant turns cannot be located for loss masking "
                    "(a template with {% generation %} blocks marks them itself)"
                )
            spans.append((len(before), len(through)))
        encoding = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoding["input_ids"])
        offsets = encoding["offset_mapping"]
        labels = [
            token if any(a <= start < b for a, b in spans) else IGNORE_INDEX
            for token, (start, _) in zip(ids, offsets, strict=True)
        ]
        return ids, labels
