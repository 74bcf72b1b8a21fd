#!/usr/bin/env bash
# Stop the single-node test cluster started by slurm/cluster-up.sh.
#
#   slurm/cluster-down.sh [STATE_DIR]    (default: <repo>/.slurm-state, or $STATPRUNE_SLURM_STATE_DIR)
#
# Cancels remaining jobs, then stops slurmd, slurmctld, slurmdbd, mariadbd, munged (newest first) by
# the pids in their pid files, never by process name. A pid is only signalled when that process
# has the expected name and was started for this state dir, so stale pid files from a killed run
# are harmless. Waits for each daemon to exit. Keeps the state dir (logs) for inspection; the next
# cluster-up wipes it. Safe to run when nothing is up.
set -euo pipefail

T0=$(date +%s.%N)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
S=$(realpath -m "${1:-${STATPRUNE_SLURM_STATE_DIR:-$HERE/../.slurm-state}}")
export SLURM_CONF=$S/etc/slurm.conf

log() { echo "[cluster-down] $*"; }

if [[ ! -d $S ]]; then
  log "no state dir $S: nothing to stop"
  exit 0
fi
if [[ -z ${_STATPRUNE_SLURM_LOCKED:-} ]]; then # cluster-up calls us while holding the lock
  exec 9<"$S"
  flock -w 300 9 || { echo "[cluster-down] ERROR: timed out waiting for the lock on $S" >&2; exit 1; }
fi

owned_pid() { # NAME PIDFILE -> pid, if alive, named NAME and started for this state dir
  local pid text
  pid=$(cat "$2" 2>/dev/null) && [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]] || return 1
  text=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline"; tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ")
  [[ $text == *"$S/"* ]] || return 1
  echo "$pid"
}
alive() { # a zombie (exited, not yet reaped by PID 1) counts as gone
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ ${st%% *} != Z ]]
}
wait_gone() { # PID SECONDS
  local end=$((SECONDS + $2))
  while alive "$1"; do
    ((SECONDS < end)) || return 1
    sleep 0.1
  done
}

# Jobs first: their processes (slurmstepd and the job itself) would outlive slurmd.
if pid=$(owned_pid slurmctld "$S/slurm/run/slurmctld.pid"); then
  mapfile -t job_ids < <(timeout 15 squeue -h -o %A 2>/dev/null | sort -u || true)
  if ((${#job_ids[@]})); then
    log "cancelling jobs: ${job_ids[*]}"
    timeout 15 scancel "${job_ids[@]}" 2>/dev/null || true
    end=$((SECONDS + 30))
    while [[ -n $(timeout 15 squeue -h -o %A 2>/dev/null || true) ]] && ((SECONDS < end)); do sleep 0.5; done
  fi
fi

for d in "slurmd $S/slurm/run/slurmd.pid" "slurmctld $S/slurm/run/slurmctld.pid" \
  "slurmdbd $S/slurm/run/slurmdbd.pid" "mariadbd $S/mysql/mariadbd.pid" "munged $S/munge/munged.pid"; do
  read -r name pidfile <<<"$d"
  if ! pid=$(owned_pid "$name" "$pidfile"); then
    [[ -e $pidfile ]] && log "$name: stale pid file, not running" && rm -f "$pidfile"
    continue
  fi
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_gone "$pid" 30; then
    log "$name (pid $pid) ignored SIGTERM for 30s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 10 || { echo "[cluster-down] ERROR: $name (pid $pid) did not exit" >&2; exit 1; }
  fi
  rm -f "$pidfile"
  log "stopped $name (pid $pid)"
done
log "down in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s"
