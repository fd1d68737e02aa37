"""Chat rows are rendered by transformers' own apply_chat_template: for every template style
(plain prefixes, ChatML with a default system turn, a Llama-3 style header with `strftime_now`,
and one that marks assistant text with `{% generation %}` and uses `tojson`), the tokens stored
for training decode to exactly what a freshly loaded tokenizer renders at inference, and the loss
falls on the assistant turns only."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.data.causal import CausalEncoder, CausalFormat
from tests.conftest import REPO_ROOT
from tests.fixtures import causal_chat_rows, make_causal_tokenizer
from trainer.formats.shards import IGNORE_INDEX

PLAIN = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CHATML = (
    "{% if messages[0]['role'] != 'system' %}<|system|>You are helpful.<|end|>\n{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}<|system|>Today is {{ strftime_now('%d %b %Y') }}.<|end|>"
    "{% for m in messages %}<|{{ m['role'] }}|>\n\n{{ m['content'] | trim }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n\n{% endif %}"
)
GENERATION = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|assistant|>"
    "{% generation %}{{ m['content'] }}<|end|>{% endgeneration %}"
    "{% else %}<|{{ m['role'] }}|>{{ m | tojson }}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
STYLES = {"plain": PLAIN, "chatml": CHATML, "llama3": LLAMA3, "generation": GENERATION}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_causal_tokenizer(tmp_path_factory.mktemp("chat-tok"), chat_template=False)


@pytest.mark.parametrize("style", STYLES)
def test_training_text_is_what_inference_renders(
    style: str, tokenizer_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    model = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, model)
    (model / "chat_template.jinja").write_text(STYLES[style])
    encoder = CausalEncoder(model, 512, CausalFormat("chat"), "data.train")
    inference = AutoTokenizer.from_pretrained(model)  # as serving code would load it
    for row in causal_chat_rows(3, seed=7):
        messages = row["messages"]
        ids, labels = encoder._encode(([dict(m) for m in messages],), "row")
        rendered = inference.apply_chat_template(messages, tokenize=False)
        assert inference.decode(ids) == rendered
        scored = inference.decode(
            [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
        )
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        for answer in answers:
            assert answer in scored
        assert "which animal" not in scored and "<|user|>" not in scored  # the user's turns
        assert sum(lab != IGNORE_INDEX for lab in labels) < len(ids)


def test_chat_rendering_imports_no_torch(tokenizer_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, model)
    (model / "chat_template.jinja").write_text(GENERATION)
    code = (
        "import sys; from pathlib import Path\n"
        "import transformers, importlib.metadata as m; from transformers import PreTrainedTokenizerFast\n"
        "if 'torch' in sys.modules: print('by-transformers', m.version('transformers')); sys.exit()\n"
        "from launcher.data.causal import CausalEncoder, CausalFormat\n"
        f"e = CausalEncoder(Path({str(model)!r}), 64, CausalFormat('chat'), 'data.train')\n"
        "e._encode(([{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'yo'}],), 'r')\n"
        "print(sorted(m for m in ('torch', 'deepspeed', 'accelerate') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    if result.stdout.startswith("by-transformers"):  # the floor 4.56 (and 5.0) import torch
        pytest.skip(f"transformers {result.stdout.split()[1]} imports torch itself")
    assert result.stdout.strip() == "[]"
