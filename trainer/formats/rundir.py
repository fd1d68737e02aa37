"""The names of what lands in a run directory on the head node, and the label map format.

    output.dir/
      .ftlaunch               marks the directory as ftlaunch's (it replaces entries here)
      .run-<run id>/          a run in progress: everything below is written here first
      config.yaml             the fully resolved job
      metrics.jsonl           the metrics stream (one JSON record per line)
      tensorboard/            the same stream as TensorBoard events
      summary.json            final figures of a finished run
      model/                  the trained model (safetensors, tokenizer, label_map.json)
      predictions_test.jsonl  classification: one prediction per test example
      samples/step-N.jsonl    causal-lm: generation samples at each evaluation
      checkpoints/            see trainer/formats/checkpoints.py
      stacks/attempt-N/rank-R.txt   every rank's Python stacks when attempt N stalled
      .lock                   held by the run using this directory (pid, host, run id)
      ray_auth_token          (in .run-*) the embedded cluster's token, 0600

Written by the head (collector, launcher) and read by `ftlaunch metrics/export`; the workers name
the files they send with these constants.
"""

from __future__ import annotations

import json

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = (
    "wandb"  # wandb.init(dir=run dir) writes its run files here (offline runs: `wandb sync`)
)
SUMMARY_FILE = "summary.json"
MODEL_DIR = "model"
PREDICTIONS_FILE = "predictions_test.jsonl"
SAMPLES_DIR = "samples"
CHECKPOINT_DIR = "checkpoints"
STACKS_DIR = "stacks"
LOCK_FILE = ".lock"
STAGING_PREFIX = ".run-"
OUTPUT_MARKER = ".ftlaunch"
TOKEN_FILE = "ray_auth_token"
LABEL_MAP_FILE = "label_map.json"
ADAPTER_NOTE = "ADAPTER_ONLY.md"  # next to an exported adapter: how to load it on its base

# What a finished run publishes from its staging area into output.dir, each by rename.
COMMITTED_ENTRIES = (
    CONFIG_FILE,
    METRICS_FILE,
    TENSORBOARD_DIR,
    WANDB_DIR,
    SUMMARY_FILE,
    MODEL_DIR,
    PREDICTIONS_FILE,
    SAMPLES_DIR,
)


def staging_name(run_id: str) -> str:
    return f"{STAGING_PREFIX}{run_id}"


def samples_file(step: int) -> str:
    return f"{SAMPLES_DIR}/step-{step}.jsonl"


def label_map_json(label_names: list[str]) -> str:
    """label_map.json of a classifier: labels by id and the inverse map (one format for the run's
    model/ and for `ftlaunch export`)."""
    label_map = {
        "labels": label_names,
        "label2id": {name: i for i, name in enumerate(label_names)},
    }
    return json.dumps(label_map, indent=2) + "\n"
