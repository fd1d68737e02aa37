#!/bin/bash
# Start a throw-away SLURM cluster on this one machine: one slurmctld and NNODES slurmd daemons
# (fake nodes n1..nN, all on localhost), from Debian's packages. Verified with Slurm 22.05 (Debian 12).
#   Install once:  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge
#   Start:         STATE_DIR=/tmp/slurm-test NNODES=2 AUTH=munge tests/slurm/start-local-slurm.sh   (as root)
#   Stop:          STATE_DIR=/tmp/slurm-test tests/slurm/stop-local-slurm.sh
# Notes seen here:
# - Each fake node claims all host CPUs, so a 2-core machine shows 2 x 2 CPUs: fine for functional tests.
# - The first batch job after start waits ~3 s; later ones ~1 s (sched_interval=1). srun starts at once.
# - No accounting (no sacct): use `scontrol show job ID` for state and exit code (kept 300 s).
# - proctrack/linuxproc does not kill processes that detach from the job (setsid, double fork): a job
#   must stop what it started (e.g. `ray start --block` stopped with TERM by PID).
# - Inside a job, Ray 2.60 needs the same RAY_AUTH_MODE (and token) for `ray start` and for the driver;
#   use a private --temp-dir and explicit ports outside Ray's worker port range (10002-19999) so jobs don't
#   collide; never `ray stop` (it kills every Ray of that user on the machine).
# - The slurm.conf below is written to /etc/slurm/slurm.conf (where the client tools look).
# - A requeued job may start again only after the step credential lifetime (120 s by default);
#   CRED_EXPIRE=30 shortens it for tests that requeue (ftlaunch's addition to the recipe).
set -euo pipefail
AUTH=${AUTH:-munge}; NNODES=${NNODES:-2}
D=${STATE_DIR:-/tmp/slurm-test}
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) * 8 / 10 ))
mkdir -p "$D/state" "$D/log" /etc/slurm
rm -rf "$D/state/"* "$D/spool"
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=ci
SlurmctldHost=localhost
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/$AUTH
CredType=cred/$AUTH
${CRED_EXPIRE:+AuthInfo=cred_expire=$CRED_EXPIRE}
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/%n
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd-%n.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SchedulerParameters=sched_interval=1
MessageTimeout=10
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName=n[1-$NNODES] NodeHostname=localhost NodeAddr=127.0.0.1 Port=[17001-$((17000+NNODES))] CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
if [ "$AUTH" = munge ]; then
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
  [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  if ! pgrep -x munged >/dev/null; then   # started here, so stop-local-slurm.sh stops it too
    runuser -u munge -- /usr/sbin/munged
    for i in $(seq 1 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
    cp /run/munge/munged.pid "$D/munged.pid"
  fi
  munge -n | unmunge >/dev/null
fi
slurmctld -i
for i in $(seq 1 "$NNODES"); do mkdir -p "$D/spool/n$i"; slurmd -N "n$i"; done
for i in $(seq 1 300); do
  [ "$(sinfo -h -o '%t' | sort -u | tr -d '\n')" = "idle" ] && break; sleep 0.1
done
sinfo
