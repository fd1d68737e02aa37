#!/usr/bin/env bash
# One-GPU check of ftlaunch at a real size, under 8 minutes on an H100: a randomly initialised
# ~1.1B-parameter Llama-shape decoder built from its config (no download), bf16, ZeRO-2, 30
# optimizer steps of 8 packed 2048-token rows, on an embedded Ray cluster with one worker.
# Prints tokens/s, MFU (6N FLOPs per token plus attention, from `ftlaunch plan`, against the
# GPU's peak) and the planned vs measured max_memory_allocated.
#
#   bash benchmarks/gpu_check.sh                 # needs one CUDA GPU
#   bash benchmarks/gpu_check.sh --plan-only     # no GPU needed: the config and its plan only
#   PEAK_TFLOPS=312 bash benchmarks/gpu_check.sh # a GPU the table below does not know
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
WORK=${WORK:-$(mktemp -d /tmp/ftlaunch-gpu-check-XXXX)}
PLAN_ONLY=0
[ "${1:-}" = "--plan-only" ] && PLAN_ONLY=1
STEPS=30

# The model directory: config.json (TinyLlama-1.1B's shape) and, unless --plan-only, a byte-level
# tokenizer trained here, random bf16 weights (initialised on the GPU) and generated text.
"$PYTHON" - "$WORK" "$PLAN_ONLY" <<'EOF'
import json, sys
from pathlib import Path
work, plan_only = Path(sys.argv[1]), sys.argv[2] == "1"
model = work / "model"
model.mkdir(parents=True, exist_ok=True)
config = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
    "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
    "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1,
}
(model / "config.json").write_text(json.dumps(config, indent=2))
if not plan_only:  # the plan needs config.json alone
    sys.path.insert(0, ".")
    from tests.fixtures import causal_text_rows, make_causal_tokenizer, write_jsonl
    make_causal_tokenizer(model, chat_template=False)
    for split, rows, seed in (("train", 20000, 1), ("validation", 64, 2), ("test", 64, 3)):
        write_jsonl(work / "data" / f"{split}.jsonl", causal_text_rows(rows, seed, max_repeat=40))
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        weights = LlamaForCausalLM(LlamaConfig(**config)).to(torch.bfloat16)
    weights.save_pretrained(model, safe_serialization=True)
EOF

cat > "$WORK/job.yaml" <<EOF
name: gpu-check
model: {path: $WORK/model, task: causal-lm, attn_implementation: sdpa}
data:
  train: $WORK/data/train.jsonl
  validation: $WORK/data/validation.jsonl
  test: $WORK/data/test.jsonl
  format: text
  packing: true
  max_length: 2048
  cache_dir: $WORK/cache
optim: {lr: 1.0e-4, warmup_ratio: 0.1}
training:
  epochs: 1
  max_steps: $STEPS
  micro_batch_size: 8
  eval_batch_size: 8
  eval_every: 1000
  log_every: 5
  precision: bf16
engine: {zero_stage: 2}
cluster: {num_workers: 1, gpus_per_worker: 1, cpus_per_worker: 4}
output: {dir: $WORK/out}
EOF

GPU_MEMORY=()
[ "$PLAN_ONLY" = 1 ] && GPU_MEMORY=(--gpu-memory 80GB)
"$PYTHON" -m launcher.cli plan "$WORK/job.yaml" "${GPU_MEMORY[@]}"
"$PYTHON" -m launcher.cli plan "$WORK/job.yaml" "${GPU_MEMORY[@]}" --json > "$WORK/plan.json"
if [ "$PLAN_ONLY" = 1 ]; then
  echo "plan: $WORK/plan.json"
  exit 0
fi

started=$(date +%s)
"$PYTHON" -m launcher.cli run "$WORK/job.yaml"
echo "ftlaunch run: $(( $(date +%s) - started )) s"

"$PYTHON" - "$WORK" "${PEAK_TFLOPS:-}" <<'EOF'
import json, subprocess, sys
from pathlib import Path
work, given = Path(sys.argv[1]), sys.argv[2]
plan = json.loads((work / "plan.json").read_text())
summary = json.loads((work / "out" / "summary.json").read_text())
records = [json.loads(l) for l in (work / "out" / "metrics.jsonl").read_text().splitlines()]
windows = [r for r in records if r.get("event") == "train"][1:]  # the first holds warm-up
tokens_per_s = sum(r["tokens_per_s"] for r in windows) / max(len(windows), 1)
name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                      capture_output=True, text=True).stdout.strip().splitlines()[0]
# Dense bf16 peak TFLOP/s of one GPU.
table = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "L4": 121, "A10": 125}
peak = float(given) if given else next((v for k, v in table.items() if k in name), None)
mfu = tokens_per_s * plan["flops_per_token"] / (peak * 1e12) if peak else None
memory = summary["memory"]
print(f"gpu: {name}; parameters {plan['params']:,}")
print(f"tokens/s: {tokens_per_s:,.0f} (mean of {len(windows)} windows after the first)")
print(f"MFU: {mfu:.1%} of {peak:g} TFLOP/s" if mfu else "MFU: unknown GPU, set PEAK_TFLOPS")
print(f"memory: planned {memory['planned_peak_bytes'] / 2**30:.2f} GiB, measured "
      f"{memory['measured_peak_bytes'] / 2**30:.2f} GiB max_memory_allocated, "
      f"planned/measured {memory['ratio']}")
EOF
