"""SLURM target, pure parts: sbatch rendering (golden text), option checks, ports and temp dirs
derived from the job id, NodeAddr parsing. No processes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cluster.slurm.layout import (
    JOB_SLOTS,
    MKDTEMP_NAME_CHARS,
    PORT_RANGE_END,
    PORT_RANGE_START,
    PORTS_PER_NODE,
    RAY_WORKER_PORTS,
    derive_ports,
    node_temp_dir,
    parse_job_id,
    parse_node_addr,
    user_root,
)
from cluster.slurm.script import render_sbatch
from launcher.errors import UserError
from launcher.slurm.options import SlurmOptions, build_request, parse_time_limit
from trainer.config import JobConfig

GOLDEN = Path(__file__).parent / "golden"


def job(**cluster: object) -> JobConfig:
    return JobConfig.model_validate(
        {
            "name": "tiny job",
            "model": {"path": "m"},
            "data": {"train": "a", "validation": "b", "test": "c"},
            "cluster": {"num_workers": 2, **cluster},
            "output": {"dir": "runs/tiny"},
        }
    )


def request(options: SlurmOptions, job_config: JobConfig | None = None):
    sub = Path("/work/runs/tiny/slurm/tiny-1")
    return build_request(
        options,
        job_config or job(),
        sub / "config.yaml",
        sub,
        Path("/work"),
        python="/venv/bin/python",
    )


def test_render_sbatch_matches_the_golden_script() -> None:
    options = SlurmOptions(
        nodes=2,
        partition="debug",
        time="1:00:00",
        account="ml-team",
        requeue=True,
        sbatch_args=("--qos=high", "--mem=0", "--exclusive", "--constraint=a100&ib"),
        setup=("module load cuda/12.4", "source /opt/venvs/ft/bin/activate"),
    )
    script = render_sbatch(request(options))
    # After an intended change, review the diff and rewrite the file with this same call.
    assert script == (GOLDEN / "sbatch_two_nodes.sh").read_text()


def test_render_sbatch_header_reflects_every_option() -> None:
    lean = render_sbatch(request(SlurmOptions(nodes=3)))
    header = [line for line in lean.splitlines() if line.startswith("#SBATCH")]
    assert header == [
        "#SBATCH --job-name=ftl-tiny_job",
        "#SBATCH --nodes=3",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --cpus-per-task=1",  # 2 workers x 1 CPU over 3 nodes: at most 1 per node
        "#SBATCH --chdir=/work",
        "#SBATCH --output=/work/runs/tiny/slurm/tiny-1/slurm-%j.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --signal=B:USR1@90",  # training.preemption_grace_s 60 + 30
        "#SBATCH --no-requeue",
    ]
    gpu = render_sbatch(
        request(SlurmOptions(nodes=1), job(num_workers=4, gpus_per_worker=1, cpus_per_worker=2))
    )
    assert "#SBATCH --cpus-per-task=8" in gpu and "#SBATCH --gpus-per-node=4" in gpu
    explicit = render_sbatch(request(SlurmOptions(nodes=2, cpus_per_node=6, gpus_per_node=0)))
    assert "#SBATCH --cpus-per-task=6" in explicit and "--gpus-per-node" not in explicit


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 1800),
        ("30:15", 1815),
        ("2:00:00", 7200),
        ("1-0", 86400),
        ("1-2:03", 86400 + 7200 + 180),
        ("1-2:03:04", 86400 + 7200 + 184),
        ("UNLIMITED", None),
    ],
)
def test_parse_time_limit_accepts_slurm_formats(text: str, seconds: int | None) -> None:
    assert parse_time_limit(text) == seconds


@pytest.mark.parametrize("text", ["", "1h", "1:2:3:4", "10:60", "0", "1-24", "-5", "1:00:00 "])
def test_parse_time_limit_rejects_malformed_values(text: str) -> None:
    if text == "1:00:00 ":  # surrounding whitespace is harmless
        assert parse_time_limit(text) == 3600
        return
    with pytest.raises(ValueError):
        parse_time_limit(text)


def test_bad_options_are_all_reported_one_line_each_naming_the_flag() -> None:
    options = SlurmOptions(
        nodes=0, cpus_per_node=0, gpus_per_node=-1, partition="a b", account="x;y", time="5:5:5:5"
    )
    with pytest.raises(UserError) as err:
        request(options)
    flags = [m.split(":")[0] for m in err.value.messages]
    assert flags == [
        "--nodes",
        "--cpus-per-node",
        "--gpus-per-node",
        "--partition",
        "--account",
        "--time",
    ]
    assert all("\n" not in m for m in err.value.messages)


def test_site_options_are_validated() -> None:
    options = SlurmOptions(
        nodes=1,
        sbatch_args=("qos=high", "--nodes=4", "--output=/tmp/x", "--mem=0", "--exclusive"),
        setup=("module load cuda", "", "echo a\nrm -rf /"),
    )
    with pytest.raises(UserError) as err:
        request(options)
    assert err.value.messages == [
        "--sbatch-arg: 'qos=high' is not a long sbatch option like --qos=high or --exclusive",
        "--sbatch-arg: '--nodes=4': use ftlaunch's --nodes",
        "--sbatch-arg: '--output=/tmp/x': ftlaunch sets it itself",
        "--setup: '' must be one non-empty shell line",
        "--setup: 'echo a\\nrm -rf /' must be one non-empty shell line",
    ]


def test_time_limit_shorter_than_the_checkpoint_signal_is_refused() -> None:
    with pytest.raises(UserError) as err:
        request(SlurmOptions(nodes=1, time="1:30"))
    assert err.value.messages[0].startswith("--time: 1:30 leaves no time to train")


def test_workers_that_cannot_fit_the_allocation_are_refused() -> None:
    with pytest.raises(UserError) as err:
        request(SlurmOptions(nodes=1, cpus_per_node=1), job(num_workers=2))
    (message,) = err.value.messages
    assert (
        message.startswith("cluster.num_workers: needs 2 workers x 1 CPU")
        and "--nodes 1" in message
    )


def test_ports_derive_from_the_job_id_and_stay_out_of_rays_ranges() -> None:
    assert derive_ports("1234", 0) == derive_ports(1234, 0)  # deterministic
    seen: set[int] = set()
    for job_id in (1, 2, 3, 98, 99, 100, 12345):
        for node in range(4):
            ports = derive_ports(job_id, node).all()
            assert len(ports) == PORTS_PER_NODE
            assert all(PORT_RANGE_START <= p <= PORT_RANGE_END for p in ports)
            assert all(not RAY_WORKER_PORTS[0] <= p <= RAY_WORKER_PORTS[1] for p in ports)
            assert PORT_RANGE_END < 32768  # Linux's ephemeral range
            if job_id < JOB_SLOTS:  # distinct jobs and distinct nodes of one job never share
                assert not seen & set(ports)
                seen |= set(ports)
    assert derive_ports(5, 0) == derive_ports(5 + JOB_SLOTS, 0)  # wraps: checked free at run time
    assert derive_ports(5, 0, attempt=1) == derive_ports(6, 0)
    head = derive_ports(7, 0)
    assert f"--port={head.gcs}" in head.ray_start_args(head=True)
    assert not any(a.startswith("--port") for a in head.ray_start_args(head=False))


def test_node_temp_dirs_leave_room_for_rays_socket_paths() -> None:
    # Ray's Unix socket paths live below the temp dir and are limited to 107 bytes; worst case:
    # a 10-digit uid, mkdtemp's 8 characters, node 15, a 7-digit pid in Ray's session name.
    job_dir = user_root(4294967295) / ("x" * MKDTEMP_NAME_CHARS)
    socket = node_temp_dir(job_dir, 15) / "session_2026-12-07_05-40-00_728176_4194304"
    assert len(str(socket / "sockets" / "plasma_store")) <= 107
    assert user_root(1000) == Path("/tmp/ftl-1000")
    for bad in ("", "12_3", "abc", "0", "-1"):
        with pytest.raises(ValueError):
            parse_job_id(bad)


def test_job_dirs_are_fresh_private_and_never_a_planted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cluster.slurm.node as node

    monkeypatch.setattr(node, "user_root", lambda uid: tmp_path / f"ftl-{uid}")
    first, second = node.prepare(), node.prepare()
    assert first != second and first.parent == second.parent == tmp_path / f"ftl-{os.getuid()}"
    for path in (first.parent, first):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert stat.S_IMODE((first / "token").stat().st_mode) == 0o600
    temp = node.node_dirs(first, 1)
    assert temp == first / "r1" and stat.S_IMODE(temp.stat().st_mode) == 0o700
    node.remove_node_dirs(first, 1)
    assert first.is_dir() and not temp.exists()  # the token keeps it: the batch script removes it
    elsewhere = first.parent / "fresh"  # another host: the job directory is created there
    node.node_dirs(elsewhere, 2)
    node.remove_node_dirs(elsewhere, 2)
    assert not elsewhere.exists()  # the last node out removes it

    outside = tmp_path / "outside"
    outside.mkdir()
    (first.parent / "planted").symlink_to(outside)  # a link where a job directory goes
    open_dir = first.parent / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    for bad in ("planted", "open"):
        with pytest.raises(SystemExit, match="refusing to use it"):
            node.node_dirs(first.parent / bad, 1)
    assert list(outside.iterdir()) == []
    with pytest.raises(SystemExit, match="not a job directory of this user"):
        node.node_dirs(tmp_path / "somewhere" / "else", 1)
    first.parent.chmod(0o755)  # the user's root itself opened up
    with pytest.raises(SystemExit, match="lets others in"):
        node.prepare()


def test_parse_node_addr() -> None:
    text = "NodeName=n1 Arch=x86_64 CoresPerSocket=2 NodeAddr=10.1.2.3 NodeHostName=localhost"
    assert parse_node_addr(text) == "10.1.2.3"
    assert parse_node_addr("NodeName=n1 State=IDLE") is None
