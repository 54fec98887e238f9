#!/usr/bin/env bash
# Stop the single-node Slurm cluster that scripts/slurm_up.sh started (its daemons, by the pid
# files it gave them); jobs still running are killed with the node.
set -uo pipefail

STATE=${DREAMWALTZ_SLURM_STATE:-/var/lib/dreamwaltz-slurm}

stop() {  # pid file, name
  [ -f "$1" ] || return 0
  local pid
  pid=$(cat "$1")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    echo "stopped $2 ($pid)"
  fi
  rm -f "$1"
}

if [ -f "$STATE/run/slurmctld.pid" ] && command -v scancel >/dev/null; then
  timeout 10 scancel --user=root >/dev/null 2>&1 && sleep 1   # this cluster's jobs, before their node goes
fi
stop "$STATE/run/slurmd.pid" slurmd
stop "$STATE/run/slurmctld.pid" slurmctld
stop /run/munge/munged.pid munged
exit 0
