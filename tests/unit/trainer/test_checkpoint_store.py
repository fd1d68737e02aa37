"""The head-side checkpoint format: atomic commit, only complete checkpoints visible, pruning
after a newer one is complete, corruption named by file, signatures that only this output.dir's
key makes, resume decisions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.errors import UserError
from launcher.resume import choose_resume_tag
from trainer.formats.checkpoints import CheckpointStore, CorruptCheckpointError, step_tag
from trainer.formats.signing import (
    SIGNATURE_FILE,
    CheckpointSigning,
    SigningKeyError,
    ensure_key_file,
)


def signing_for(output_dir: Path, trusted: str | None = None) -> CheckpointSigning:
    """This test's signing: one user secret per test (tmp_path), keyed per output.dir."""
    key = ensure_key_file(output_dir.parent / f"{output_dir.name}-state" / "checkpoint.key")
    return CheckpointSigning(str(key), str(output_dir), trusted)


def signed_store(output_dir: Path, keep_last: int = 2) -> CheckpointStore:
    return CheckpointStore(output_dir / "checkpoints", keep_last, signing_for(output_dir))


def write_part(store: CheckpointStore, step: int, payload: bytes = b"weights") -> None:
    staging = store.staging_dir(step_tag(step))
    (staging / "ds").mkdir(exist_ok=True)
    (staging / "ds" / "model.pt").write_bytes(payload)
    (staging / "trainer_state_rank0.json").write_text(json.dumps({"step": step}))


def test_a_staged_checkpoint_is_invisible_until_committed(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep_last=2)
    write_part(store, 10)
    assert store.latest() is None  # half-written: never offered for resume
    store.commit(step_tag(10), {"step": 10, "run_id": "r1"})
    tag, manifest = store.latest()
    assert tag == "step-10" and manifest["state"]["step"] == 10
    assert set(manifest["files"]) == {"ds/model.pt", "trainer_state_rank0.json"}
    assert (tmp_path / "step-10" / "COMPLETE").is_file() and not (
        tmp_path / ".tmp-step-10"
    ).exists()
    assert store.verify("step-10")["tag"] == "step-10"


def test_only_keep_last_complete_checkpoints_survive(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep_last=2)
    for step in (5, 10, 15):
        write_part(store, step)
        store.commit(step_tag(step), {"step": step, "run_id": "r"})
    write_part(store, 20)  # a newer one in progress does not count
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-10", "step-15"]
    assert store.latest()[0] == "step-15"


def test_latest_can_be_limited_to_one_run(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep_last=3)
    write_part(store, 5)
    store.commit("step-5", {"step": 5, "run_id": "old"})
    assert store.latest("new") is None and store.latest("old")[0] == "step-5"


def test_verify_names_the_corrupted_file(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    write_part(store, 7)
    store.commit("step-7", {"step": 7})
    (tmp_path / "step-7" / "ds" / "model.pt").write_bytes(b"weightz")
    with pytest.raises(
        CorruptCheckpointError, match=r"step-7/ds/model.pt: does not match the checkpoint manifest"
    ):
        store.verify("step-7")


def test_fresh_run_over_checkpoints_and_resume_decisions(tmp_path: Path) -> None:
    store, sign = signed_store(tmp_path), signing_for(tmp_path)
    assert choose_resume_tag(tmp_path, False, "f", 2, signing=sign) is None
    with pytest.raises(UserError, match="--resume: no complete checkpoint"):
        choose_resume_tag(tmp_path, True, "f", 2, signing=sign)
    write_part(store, 3)
    store.commit("step-3", {"step": 3, "config_fingerprint": "f"})
    with pytest.raises(UserError, match="holds checkpoints of an earlier run"):
        choose_resume_tag(tmp_path, False, "f", 2, signing=sign)
    assert choose_resume_tag(tmp_path, True, "f", 2, signing=sign) == "step-3"
    with pytest.raises(UserError, match="different model or incompatible config"):
        choose_resume_tag(tmp_path, True, "g", 2, signing=sign)


def test_only_a_checkpoint_signed_for_this_output_dir_resumes_unless_trusted(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    store, sign = signed_store(out), signing_for(out)
    write_part(store, 6)
    store.commit("step-6", {"step": 6, "config_fingerprint": "f"})
    assert choose_resume_tag(out, True, "f", 2, signing=sign) == "step-6"
    checkpoint = out / "checkpoints" / "step-6"

    moved = tmp_path / "moved"
    out.rename(moved)  # the same files under another path: the key differs
    for signing in (signing_for(moved), CheckpointSigning(sign.key_file, str(moved))):
        with pytest.raises(UserError) as refused:
            choose_resume_tag(moved, True, "f", 2, signing=signing, fallback=True)
        (message,) = refused.value.messages
        assert "not signed for this output.dir" in message
        assert message.endswith(f"--trust-checkpoint {moved / 'checkpoints' / 'step-6'}")
    trusted = CheckpointSigning(sign.key_file, str(moved), trusted="step-6")
    assert choose_resume_tag(moved, True, "f", 2, signing=trusted) == "step-6"
    moved.rename(out)

    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["state"]["step"] = 60  # an edit to what the manifest says
    (checkpoint / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    with pytest.raises(UserError, match=r"not signed for this output\.dir"):
        choose_resume_tag(out, True, "f", 2, signing=sign)
    (checkpoint / SIGNATURE_FILE).unlink()
    with pytest.raises(UserError, match=r"not signed for this output\.dir"):
        choose_resume_tag(out, True, "f", 2, signing=sign)


def test_the_signing_secret_is_private_and_never_a_planted_one(tmp_path: Path) -> None:
    key = ensure_key_file(tmp_path / "state" / "ftlaunch" / "checkpoint.key")
    assert key.stat().st_mode & 0o777 == 0o600 and key.parent.stat().st_mode & 0o777 == 0o700
    first = CheckpointSigning(str(key), str(tmp_path / "a")).key()
    assert first == CheckpointSigning(str(ensure_key_file(key)), str(tmp_path / "a")).key()
    assert first != CheckpointSigning(str(key), str(tmp_path / "b")).key()  # per output.dir
    key.chmod(0o644)
    with pytest.raises(SigningKeyError, match="lets others in"):
        CheckpointSigning(str(key), str(tmp_path / "a")).key()
    planted = tmp_path / "planted" / "checkpoint.key"
    planted.parent.mkdir(mode=0o700)
    planted.symlink_to(key)
    with pytest.raises(SigningKeyError, match="cannot read"):
        ensure_key_file(planted)


def corrupt(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_a_corrupted_newest_checkpoint_is_refused_unless_fallback_is_asked_for(
    tmp_path: Path,
) -> None:
    store, sign = signed_store(tmp_path, keep_last=3), signing_for(tmp_path)
    for step in (4, 8):
        write_part(store, step, payload=f"weights-{step}".encode())
        store.commit(step_tag(step), {"step": step, "config_fingerprint": "f"})
    bad = tmp_path / "checkpoints" / "step-8" / "ds" / "model.pt"
    corrupt(bad)
    with pytest.raises(UserError, match=r"step-8/ds/model.pt: does not match.*--resume-fallback"):
        choose_resume_tag(tmp_path, True, "f", 3, signing=sign)
    warnings: list[str] = []
    tag = choose_resume_tag(
        tmp_path, True, "f", 3, signing=sign, fallback=True, warn=warnings.append
    )
    assert tag == "step-4"
    assert len(warnings) == 1 and "skipping step-8" in warnings[0] and "ds/model.pt" in warnings[0]
    assert bad.is_file()  # kept for the user to inspect, never deleted by us
    corrupt(tmp_path / "checkpoints" / "step-4" / "trainer_state_rank0.json")
    with pytest.raises(UserError, match=r"no checkpoint .* passes verification"):
        choose_resume_tag(tmp_path, True, "f", 3, signing=sign, fallback=True)


# A save killed at each point of the commit protocol, for real: a child process runs the commit
# and dies with os._exit (no cleanup, no finally blocks) where the test tells it to.
CRASH_CHILD = """
import os, shutil, sys
from pathlib import Path
import trainer.formats.checkpoints as checkpoints
from trainer.formats.checkpoints import CheckpointStore, step_tag
from trainer.formats.signing import CheckpointSigning

root, point, key = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
store = CheckpointStore(root, keep_last=2, signing=CheckpointSigning(key, str(root.parent)))

def die(*args, **kwargs):
    os._exit(137)

def write_part(step, files):
    staging = store.staging_dir(step_tag(step))
    (staging / "ds").mkdir(exist_ok=True)
    for name in files:
        (staging / name).write_bytes(os.urandom(4096))

for step in (5, 10):
    write_part(step, ["ds/model.pt", "ds/optim.pt", "state.json"])
    store.commit(step_tag(step), {"step": step, "config_fingerprint": "f"})
if point == "while-ranks-write":
    write_part(15, ["ds/model.pt"])  # the other ranks' files never arrive
    die()
write_part(15, ["ds/model.pt", "ds/optim.pt", "state.json"])
if point == "before-files-synced":
    checkpoints.fsync_path = die
elif point == "before-complete-marker":
    real_write = checkpoints.write_synced
    checkpoints.write_synced = lambda path, text: die() if path.name == "COMPLETE" else real_write(path, text)
elif point == "before-rename":
    checkpoints.replace_atomically = die
elif point == "while-pruning":
    def half_delete(path, ignore_errors=False):
        path = Path(path)
        if path.exists():
            next(p for p in sorted(path.rglob("*")) if p.is_file()).unlink()
            die()
    checkpoints.shutil.rmtree = half_delete
store.commit(step_tag(15), {"step": 15, "config_fingerprint": "f"})
"""


@pytest.mark.parametrize(
    ("point", "newest"),
    [
        ("while-ranks-write", "step-10"),
        ("before-files-synced", "step-10"),
        ("before-complete-marker", "step-10"),
        ("before-rename", "step-10"),
        ("while-pruning", "step-15"),
    ],
)
def test_a_save_killed_at_any_point_leaves_the_newest_complete_checkpoint_usable(
    tmp_path: Path, point: str, newest: str
) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    root, sign = tmp_path / "checkpoints", signing_for(tmp_path)
    child = subprocess.run(
        [sys.executable, "-c", CRASH_CHILD, str(root), point, sign.key_file],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 137, child.stderr
    store = signed_store(tmp_path)
    assert store.latest()[0] == newest
    assert choose_resume_tag(tmp_path, True, "f", 2, signing=sign) == newest
    for tag, _ in store.complete():  # nothing half-written or half-deleted is ever offered
        store.verify(tag)
    leftovers = store.discard_incomplete()
    assert leftovers and all(name.startswith((".tmp-", ".trash-")) for name in leftovers)
    assert sorted(p.name for p in root.iterdir()) == sorted(t for t, _ in store.complete())
    # the restarted run saves the same step again, cleanly
    staging = store.staging_dir("step-15")
    (staging / "state.json").write_text("{}")
    store.commit("step-15", {"step": 15, "config_fingerprint": "f"})
    assert store.latest()[0] == "step-15"
    assert set(store.verify("step-15")["files"]) == {"state.json"}
