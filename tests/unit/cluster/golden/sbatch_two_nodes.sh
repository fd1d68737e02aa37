#!/bin/bash
# Rendered by `ftlaunch slurm`; kept with the resolved config in /work/runs/tiny/slurm/tiny-1.
#SBATCH --job-name=ftl-tiny_job
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --partition=debug
#SBATCH --account=ml-team
#SBATCH --time=1:00:00
#SBATCH --chdir=/work
#SBATCH --output=/work/runs/tiny/slurm/tiny-1/slurm-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@90
#SBATCH --requeue
#SBATCH --qos=high
#SBATCH --mem=0
#SBATCH --exclusive
#SBATCH --constraint=a100&ib

PY=/venv/bin/python
CONFIG=/work/runs/tiny/slurm/tiny-1/config.yaml
OUTPUT_DIR=/work/runs/tiny
NODES=2
JOIN_TIMEOUT_S=300
REQUEUE=1
RESUME=0

# site setup (ftlaunch slurm --setup)
module load cuda/12.4 || { echo 'error: --setup failed: module load cuda/12.4' >&2; exit 1; }
source /opt/venvs/ft/bin/activate || { echo 'error: --setup failed: source /opt/venvs/ft/bin/activate' >&2; exit 1; }

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
