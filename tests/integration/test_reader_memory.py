"""Memory stays bounded whatever the dataset size: read one full shuffled epoch of a dataset
several times larger than the reader's budget in a fresh process and compare peak RSS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.fixtures import write_synthetic_split

READ_EPOCH = """
import json, resource, sys
import torch  # baseline includes torch and numpy, which the worker has anyway
from trainer.data.split import ShardedSplit
from trainer.formats.shard_stores import LocalShardStore
def rss_mb():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
base = rss_mb()
split = ShardedSplit(LocalShardStore(sys.argv[1]), window_blocks=4)
peak, tokens, batches = base, 0, split.epoch_batches(0, 1, 1, 0, 32, train=True)
for i, batch in enumerate(split.iter_batches(batches)):
    tokens += int(batch.attention_mask.sum())
    if i == 300:  # the cache is full by now: from here on RSS must stay flat
        warm = rss_mb()
    if i % 50 == 0:
        peak = max(peak, rss_mb())
print(json.dumps({"base_mb": base, "warm_mb": warm, "peak_mb": max(peak, rss_mb()), "tokens": tokens}))
"""


@pytest.mark.timeout(300)
def test_reading_a_dataset_many_times_the_budget_keeps_rss_flat(tmp_path: Path) -> None:
    split = write_synthetic_split(
        tmp_path / "big", rows=160_000, max_tokens=400
    )  # ~130 MB of tokens
    data_mb = sum(p.stat().st_size for p in split.glob("*.arrow")) / 2**20
    manifest = json.loads((split / "manifest.json").read_text())
    out = subprocess.run(
        [sys.executable, "-c", READ_EPOCH, str(split)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    # A fixed ~50 MB goes to first-use initialisation (torch, pyarrow IPC) whatever the data size;
    # after that the reader holds 2 windows x 4 blocks (~0.8 MB each) and a few prefetched batches.
    assert data_mb > 100
    assert stats["peak_mb"] - stats["warm_mb"] < data_mb / 10, stats
    assert stats["peak_mb"] - stats["base_mb"] < 100, stats
    assert stats["tokens"] == pytest.approx(manifest["total_tokens"], rel=0.01)  # read it all
