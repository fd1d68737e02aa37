"""Render the sbatch script that boots Ray inside a SLURM allocation and runs `ftlaunch run`.

`render_sbatch` is pure (a value in, text out) so it has a golden-text test; everything the
script does at run time that needs logic lives in `cluster.slurm.node`, which it calls.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

LOG_NAME = "slurm-%j.out"


@dataclass(frozen=True)
class SbatchRequest:
    """Everything the script needs; values are already validated (see launcher/slurm/options.py)."""

    job_name: str
    nodes: int
    cpus_per_node: int
    gpus_per_node: int
    partition: str | None
    time_limit: str | None
    account: str | None
    signal_grace_s: int  # USR1 this long before the time limit: checkpoint, then stop
    requeue: bool
    resume: bool  # always pass --resume (otherwise only on a restart with a checkpoint)
    join_timeout_s: int
    workdir: Path  # the submit directory: relative paths in the config resolve from here
    submission_dir: Path  # resolved config, this script and the job's log
    config_path: Path
    output_dir: Path
    python: str
    extra_sbatch: tuple[str, ...] = ()  # site options (--qos=high, --mem=0, --exclusive), validated
    setup: tuple[str, ...] = ()  # site shell lines (module load, venv activation) before Ray


def sbatch_header(req: SbatchRequest) -> list[str]:
    options = [
        f"--job-name={req.job_name}",
        f"--nodes={req.nodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={req.cpus_per_node}",
    ]
    if req.gpus_per_node:
        options.append(f"--gpus-per-node={req.gpus_per_node}")
    if req.partition:
        options.append(f"--partition={req.partition}")
    if req.account:
        options.append(f"--account={req.account}")
    if req.time_limit:
        options.append(f"--time={req.time_limit}")
    options += [
        f"--chdir={req.workdir}",
        f"--output={req.submission_dir / LOG_NAME}",
        "--open-mode=append",  # a requeued job appends to the same log
        f"--signal=B:USR1@{req.signal_grace_s}",
        "--requeue" if req.requeue else "--no-requeue",
        *req.extra_sbatch,
    ]
    return [f"#SBATCH {option}" for option in options]


def setup_lines(req: SbatchRequest) -> list[str]:
    """The site's setup lines, each stopping the job with one clear line when it fails. They
    run before `set -u` (module scripts read unset variables) and before anything starts Ray;
    srun steps inherit the environment they leave."""
    if not req.setup:
        return []
    lines = ["", "# site setup (ftlaunch slurm --setup)"]
    for line in req.setup:
        failed = shlex.quote(f"error: --setup failed: {line}")
        lines.append(f"{line} || {{ echo {failed} >&2; exit 1; }}")
    return lines


def render_sbatch(req: SbatchRequest) -> str:
    """The complete batch script for `req` (bash)."""
    q = shlex.quote
    settings = {
        "PY": q(req.python),
        "CONFIG": q(str(req.config_path)),
        "OUTPUT_DIR": q(str(req.output_dir)),
        "NODES": str(req.nodes),
        "JOIN_TIMEOUT_S": str(req.join_timeout_s),
        "REQUEUE": "1" if req.requeue else "0",
        "RESUME": "1" if req.resume else "0",
    }
    return "\n".join(
        [
            "#!/bin/bash",
            f"# Rendered by `ftlaunch slurm`; kept with the resolved config in {req.submission_dir}.",
            *sbatch_header(req),
            "",
            *(f"{name}={value}" for name, value in settings.items()),
            *setup_lines(req),
            BODY,
        ]
    )


# The run-time part is the same for every job. Ray processes are stopped by PID (steps, driver,
# then `reap` for anything that detached), never with `ray stop`, which would stop other jobs' Ray.
BODY = r"""
set -uo pipefail
umask 077  # everything the job writes (Ray's logs, the token, results) is the user's alone
log() { printf '[ftlaunch-slurm %s t=%s] %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(date +%s.%3N)" "$*"; }
log "job $SLURM_JOB_ID started (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST"

JOB_DIR=$("$PY" -m cluster.slurm.node prepare) || exit 1
log "job directory $JOB_DIR"
RAY_AUTH_TOKEN=$(<"$JOB_DIR/token")
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN
unset RAY_ADDRESS
STEPS=()
DRIVER=""
PREEMPTED=0

teardown() {
  local pid i alive
  rm -f "$JOB_DIR/token"  # first: SLURM may SIGKILL us after KillWait; Ray has it in its env
  [ -n "$DRIVER" ] && kill -TERM "$DRIVER" 2>/dev/null
  # TERM to every step's tasks, not the batch shell: each node stops Ray and reaps leftovers.
  # (Signalling srun itself would not do: it SIGKILLs its tasks on TERM and ignores one INT.)
  scancel --signal=TERM "$SLURM_JOB_ID" 2>/dev/null
  for i in $(seq 1 40); do
    alive=0
    for pid in "${STEPS[@]}" $DRIVER; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${STEPS[@]}" $DRIVER; do kill -KILL "$pid" 2>/dev/null; done
  "$PY" -m cluster.slurm.node reap "$JOB_DIR"
}

finish() {
  local rc=$?
  trap - EXIT TERM INT USR1
  teardown
  rm -rf "$JOB_DIR"  # the other nodes removed theirs in `node`
  log "Ray torn down; exit $rc"
  if [ "$rc" = 3 ] && [ "$PREEMPTED" = 1 ] && [ "$REQUEUE" = 1 ]; then
    log "requeueing: the next start resumes from the checkpoint"
    scontrol requeue "$SLURM_JOB_ID"
  fi
  exit "$rc"
}

on_usr1() {
  log "USR1: time limit near; asking ftlaunch to commit a checkpoint (SIGTERM)"
  PREEMPTED=1
  if [ -n "$DRIVER" ]; then kill -TERM "$DRIVER"; else exit 3; fi
}

trap finish EXIT
trap 'log "terminated"; exit 143' TERM INT
trap on_usr1 USR1

mapfile -t HOSTS < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
HEAD=${SLURMD_NODENAME:-${HOSTS[0]}}  # the batch host: the job directory above is on it
WORKERS=()
for host in "${HOSTS[@]}"; do [ "$host" != "$HEAD" ] && WORKERS+=("$host"); done

srun --nodes=1 --ntasks=1 --nodelist="$HEAD" --overlap \
  "$PY" -m cluster.slurm.node node "$SLURM_JOB_ID" "$JOB_DIR" 0 &
STEPS+=($!)
for i in $(seq 1 $((JOIN_TIMEOUT_S * 10))); do
  [ -s "$JOB_DIR/head-address" ] && break
  kill -0 "${STEPS[0]}" 2>/dev/null || break
  sleep 0.1
done
if [ ! -s "$JOB_DIR/head-address" ]; then
  echo "error: the Ray head did not start on $HEAD within ${JOIN_TIMEOUT_S} s; see the lines above" >&2
  exit 1
fi
HEAD_ADDRESS=$(<"$JOB_DIR/head-address")
log "Ray head up at $HEAD_ADDRESS"
if [ "${#WORKERS[@]}" -gt 0 ]; then
  srun --nodes="${#WORKERS[@]}" --ntasks="${#WORKERS[@]}" --ntasks-per-node=1 \
    --nodelist="$(IFS=,; echo "${WORKERS[*]}")" --overlap \
    "$PY" -m cluster.slurm.node node "$SLURM_JOB_ID" "$JOB_DIR" 1 --head-address "$HEAD_ADDRESS" &
  STEPS+=($!)
fi
"$PY" -m cluster.slurm.node wait "$HEAD_ADDRESS" "$NODES" --timeout "$JOIN_TIMEOUT_S" || exit 1

ARGS=(run "$CONFIG" --address "$HEAD_ADDRESS")
if [ "$RESUME" = 1 ] || { [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] &&
  compgen -G "$OUTPUT_DIR/checkpoints/step-*/COMPLETE" >/dev/null; }; then
  ARGS+=(--resume)
fi
log "ftlaunch ${ARGS[*]}"
"$PY" -m launcher.cli "${ARGS[@]}" &
DRIVER=$!
while kill -0 "$DRIVER" 2>/dev/null; do wait "$DRIVER"; done  # returns early for USR1
wait "$DRIVER"
RC=$?
DRIVER=""
log "ftlaunch run exited with $RC"
exit "$RC"
"""
