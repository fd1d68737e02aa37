"""LoRA folded into GPT-2's transposed Conv1D weights (square ones included) exactly as peft's
merge_and_unload does, which is what `ftlaunch export` relies on for causal LMs."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures import make_tiny_causal_lm


def test_lora_fold_matches_peft_merge_for_conv1d(tmp_path: Path) -> None:
    import torch

    from trainer.config.schema import PeftConfig
    from trainer.consolidate import conv1d_modules, export_names
    from trainer.model import build_causal_lm

    model_dir = make_tiny_causal_lm(tmp_path / "gpt2", "gpt2")
    peft = PeftConfig(method="lora", target_modules=["c_attn", "c_proj", "c_fc"], r=4, alpha=8)
    model = build_causal_lm(model_dir, peft)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # zero at init: make the fold non-trivial
                param.normal_()
    tensors = {n: (t.shape, lambda t=t: t) for n, t in model.state_dict().items()}
    transposed = conv1d_modules(str(model_dir), causal=True)
    assert "transformer.h.0.attn.c_proj" in transposed  # 32 x 32: shapes alone cannot tell
    ours = {
        n: produce().clone()
        for n, _, produce in export_names(tensors, peft.alpha / peft.r, transposed)
    }
    merged = model.merge_and_unload().state_dict()
    assert set(merged) <= set(ours)
    for name, tensor in merged.items():
        torch.testing.assert_close(ours[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
