#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for the farm tests (tests/test_farm_slurm.py):
# Debian's slurm-wlm + munge, one node on 127.0.0.1 with all CPUs and two dummy GPUs (character
# devices like /dev/null, so each array task gets its own CUDA_VISIBLE_DEVICES), processes tracked
# without cgroups (proctrack/linuxproc, task/none), no accounting. Needs root. Safe to run again (it restarts the daemons); scripts/slurm_down.sh
# stops them. It refuses to touch a slurm.conf it did not write.
set -euo pipefail

STATE=${DREAMWALTZ_SLURM_STATE:-/var/lib/dreamwaltz-slurm}
CONF_DIR=/etc/slurm
MARK="# written by dreamwaltz scripts/slurm_up.sh"

if [ "$(id -u)" != 0 ]; then
  echo "error: scripts/slurm_up.sh needs root (it installs packages and starts daemons)" >&2
  exit 1
fi
if [ -f "$CONF_DIR/slurm.conf" ] && ! grep -qF "$MARK" "$CONF_DIR/slurm.conf"; then
  echo "error: $CONF_DIR/slurm.conf exists and was not written by this script; not touching a real cluster" >&2
  exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  echo "installing slurm-wlm and munge (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null; then
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
  fi
fi

bash "$(dirname "$0")/slurm_down.sh" >/dev/null 2>&1 || true

NODE=$(hostname -s)
read -r SOCKETS CORES THREADS < <(slurmd -C | tr ' ' '\n' | awk -F= '/^SocketsPerBoard=/{s=$2} /^CoresPerSocket=/{c=$2} /^ThreadsPerCore=/{t=$2} END{print s, c, t}')
CPUS=$(( SOCKETS * CORES * THREADS ))
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 3 / 4 ))
mkdir -p "$STATE"/{ctld,spool,log,run} "$CONF_DIR"
for i in 0 1; do
  [ -c "$STATE/gpu$i" ] || mknod "$STATE/gpu$i" c 1 3   # the same device as /dev/null
done

cat > "$CONF_DIR/slurm.conf" <<EOF
$MARK
ClusterName=dreamwaltz
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=3600
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM_MB Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
cat > "$CONF_DIR/gres.conf" <<EOF
$MARK
NodeName=$NODE Name=gpu File=$STATE/gpu[0-1]
EOF

mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null || \
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
runuser -u munge -- /usr/sbin/munged
slurmctld
slurmd

for _ in $(seq 1 60); do
  state=$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null || true)
  if [ "$state" = idle ]; then
    echo "slurm is up: node $NODE idle ($CPUS CPUs, 2 dummy GPUs; config $CONF_DIR/slurm.conf, logs $STATE/log)"
    exit 0
  fi
  sleep 0.5
done
echo "error: the slurm node $NODE did not become idle in 30 s (state: ${state:-none}); logs:" >&2
tail -n 20 "$STATE"/log/*.log >&2 || true
exit 1
