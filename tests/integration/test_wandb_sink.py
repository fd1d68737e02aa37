"""The Weights & Biases mirror on the head, in offline mode: the run file it writes is read back
record by record (LevelDB log framing + wandb's protobuf records) and must hold what the
metrics stream said."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from cluster.head.collector import RunCollector
from cluster.head.metrics_log import Trackers
from cluster.head.wandb import WandbTarget
from tests.unit.cluster.test_head import report_sample_stream

wandb = pytest.importorskip("wandb")
pytestmark = pytest.mark.timeout(120)

BLOCK = 32768
HEADER = 7  # ":W&B" + 2-byte magic + 1-byte version, at the start of the first block


def read_wandb_records(path: Path) -> list:
    """Every protobuf Record in a .wandb file (LevelDB log: 7-byte chunk headers, 32 KiB
    blocks, FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4 chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, offset = [], b"", HEADER
    while offset + 7 <= len(data):
        room = BLOCK - offset % BLOCK
        if room < 7:  # block trailer padding
            offset += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        chunk = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind == 0 and length == 0:
            continue
        pending += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_offline_wandb_run_holds_the_metrics_stream(tmp_path: Path) -> None:
    target = WandbTarget("ftl-test", "offline", "run-1", {"optim": {"lr": 0.001}})
    collector = RunCollector(str(tmp_path / "run"), trackers=Trackers(wandb=target))
    report_sample_stream(collector)

    files = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, list((tmp_path / "run").rglob("*"))
    records = read_wandb_records(files[0])
    kinds = [r.WhichOneof("record_type") for r in records]
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item
            }
            history[row["_step"]] = row
    assert history[2]["train/loss"] == 0.9 and history[4]["train/loss"] == 0.4
    assert history[4]["eval/val_accuracy"] == 0.75
    assert "train/step_time_p99_s" in history[2]
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary |= {
                i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update
            }
    assert summary["summary/test_accuracy"] == 0.8
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["optim"] == {"lr": 0.001}, config
    assert run.display_name == "run-1" and run.project == "ftl-test"
    exits = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert exits and exits[-1].exit_code == 0, kinds
