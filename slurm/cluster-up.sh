#!/usr/bin/env bash
# Start a real single-node SLURM cluster with accounting, all state under STATE_DIR.
#
#   slurm/cluster-up.sh [STATE_DIR]      (default: <repo>/.slurm-state, or $STATPRUNE_SLURM_STATE_DIR)
#
# Daemons: munged, mariadbd (127.0.0.1 only), slurmdbd, slurmctld, slurmd (node "localhost", 2 fake
# GPUs). Installs the Debian packages when missing. Idempotent: a healthy cluster is left alone; a
# partial or dead one (stale pid files from a killed run) is stopped and started fresh, which wipes
# the state dir (job ids restart at 1). Needs root. See slurm/README.md.
#
# Environment: STATPRUNE_SLURM_PORT_BASE (default 16817: slurmctld, +1 slurmd, +2 slurmdbd,
# +3 mariadb), STATPRUNE_SLURM_TIMEOUT (seconds to wait for startup, default 120).
set -euo pipefail

T0=$(date +%s.%N)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
S=$(realpath -m "${1:-${STATPRUNE_SLURM_STATE_DIR:-$HERE/../.slurm-state}}")
PORT_BASE=${STATPRUNE_SLURM_PORT_BASE:-16817}
CTLD_PORT=$PORT_BASE SLURMD_PORT=$((PORT_BASE + 1)) DBD_PORT=$((PORT_BASE + 2)) MYSQL_PORT=$((PORT_BASE + 3))
TIMEOUT=${STATPRUNE_SLURM_TIMEOUT:-120}
CLUSTER=statprune
PARTITION=debug # keep in sync with slurm/local.toml
MARKER=.statprune-slurm-state
MSOCK=$S/munge/run/munged.sock
export SLURM_CONF=$S/etc/slurm.conf

log() { echo "[cluster-up] $*"; }
die() { echo "[cluster-up] ERROR: $*" >&2; exit 1; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

[[ $EUID -eq 0 ]] || die "must run as root (starts munged/mariadbd as their users, makes device nodes)"
((${#MSOCK} < 100)) || die "state dir path too long for a unix socket: $S (pass a shorter STATE_DIR)"
[[ $S != *[[:space:]]* ]] || die "state dir path must not contain whitespace: '$S'"

# ---- packages -------------------------------------------------------------------------------
PKGS=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  T_APT=$(date +%s.%N)
  log "installing ${missing[*]}"
  # Keep the maintainer scripts from starting system-wide daemons: we start our own.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d && trap - EXIT
  log "packages installed in $(elapsed "$T_APT")s"
fi

# ---- lock the state dir (concurrent up/down calls serialize; daemons get fd 9 closed) ---------
mkdir -p "$S"
exec 9<"$S"
flock -w "$TIMEOUT" 9 || die "timed out waiting for the lock on $S"

# pid from PIDFILE when that process is alive, is called NAME, and was started for this state dir.
owned_pid() { # NAME PIDFILE
  local pid text
  pid=$(cat "$2" 2>/dev/null) && [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]] || return 1
  text=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline"; tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ")
  [[ $text == *"$S/"* ]] || return 1
  echo "$pid"
}
DAEMONS=(
  "munged $S/munge/munged.pid"
  "mariadbd $S/mysql/mariadbd.pid"
  "slurmdbd $S/slurm/run/slurmdbd.pid"
  "slurmctld $S/slurm/run/slurmctld.pid"
  "slurmd $S/slurm/run/slurmd.pid"
)
node_state() { timeout 15 sinfo -h -N -n localhost -o %T 2>/dev/null; }
accounting_ok() {
  timeout 15 sacctmgr -n -P list cluster format=Cluster 2>/dev/null | grep -qx "$CLUSTER" &&
    timeout 15 sacct -n -X -a >/dev/null 2>&1
}

# ---- already up? ----------------------------------------------------------------------------
up=0
for d in "${DAEMONS[@]}"; do
  read -r name pidfile <<<"$d"
  if owned_pid "$name" "$pidfile" >/dev/null; then up=$((up + 1)); fi
done
if ((up == ${#DAEMONS[@]})) && [[ $(node_state) =~ ^(idle|mixed|allocated|completing) ]] && accounting_ok; then
  log "already up (state $S); nothing to do"
  exit 0
fi
if ((up > 0)); then
  log "found a partial cluster ($up/${#DAEMONS[@]} daemons alive): stopping it"
  _STATPRUNE_SLURM_LOCKED=1 "$HERE/cluster-down.sh" "$S"
fi

# ---- fresh state ------------------------------------------------------------------------------
if [[ -n $(ls -A "$S") && ! -e $S/$MARKER ]]; then
  die "$S is not empty and was not made by this script; refusing to wipe it"
fi
find "$S" -mindepth 1 -delete
mkdir -p "$S"/{etc,dev,munge/run,mysql/data,slurm/{state,spool,log,run}}
touch "$S/$MARKER"
chmod 755 "$S" "$S"/{etc,dev,munge,munge/run,mysql,slurm}

# Port check: another cluster (other STATE_DIR) or service on our ports would fail obscurely later.
for port in "$CTLD_PORT" "$SLURMD_PORT" "$DBD_PORT" "$MYSQL_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is in use (another cluster? set STATPRUNE_SLURM_PORT_BASE)"
  fi
done

DEADLINE=$((SECONDS + TIMEOUT))
fail() {
  echo "[cluster-up] ERROR: $*" >&2
  { timeout 10 sinfo -N -l && timeout 10 sinfo -R; } >&2 2>/dev/null || true
  for f in "$S"/munge/munged.{log,out} "$S"/mysql/*.{log,out} "$S"/slurm/log/*; do
    [[ -s $f ]] && { echo "----- $f (last 25 lines)" >&2; tail -n 25 "$f" >&2; }
  done
  echo "[cluster-up] stopping what was started; state (with logs) stays in $S" >&2
  _STATPRUNE_SLURM_LOCKED=1 "$HERE/cluster-down.sh" "$S" >&2 || true
  exit 1
}
wait_until() { # WHAT CMD...
  local what=$1
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < DEADLINE)) || fail "$what not ready within ${TIMEOUT}s"
    sleep 0.2
  done
}

# ---- munge ------------------------------------------------------------------------------------
mungekey --create --keyfile="$S/munge/munge.key" --force
chown -R munge:munge "$S/munge"
chmod 600 "$S/munge/munge.key"
# --force: tolerate a leftover socket and parent-dir permission warnings (state may live anywhere).
runuser -u munge -- munged --force --key-file="$S/munge/munge.key" --socket="$MSOCK" \
  --pid-file="$S/munge/munged.pid" --log-file="$S/munge/munged.log" --seed-file="$S/munge/munged.seed" \
  </dev/null >>"$S/munge/munged.out" 2>&1 9<&- || fail "munged failed to start"
munge_ok() { munge --socket="$MSOCK" -n | unmunge --socket="$MSOCK"; }
wait_until munged munge_ok
STEPS="munge $(elapsed "$T0")s"

# ---- mariadb ----------------------------------------------------------------------------------
chown -R mysql:mysql "$S/mysql"
mariadb-install-db --no-defaults --user=mysql --datadir="$S/mysql/data" --skip-test-db \
  --auth-root-authentication-method=socket >"$S/mysql/install.out" 2>&1 || fail "mariadb-install-db failed"
MYSQL_SOCK=$S/mysql/mysqld.sock
setsid mariadbd --no-defaults --user=mysql --datadir="$S/mysql/data" --socket="$MYSQL_SOCK" \
  --pid-file="$S/mysql/mariadbd.pid" --port="$MYSQL_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
  --log-error="$S/mysql/mariadbd.log" --innodb-buffer-pool-size=256M --innodb-log-file-size=64M \
  --innodb-lock-wait-timeout=900 </dev/null >>"$S/mysql/mariadbd.out" 2>&1 9<&- &
wait_until mariadb mariadb-admin --no-defaults --socket="$MYSQL_SOCK" -u root ping
DBPASS=$(head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24)
mariadb --no-defaults --socket="$MYSQL_SOCK" -u root <<SQL || fail "could not create the accounting database"
CREATE DATABASE slurm_acct_db;
CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL
STEPS+=", mariadb $(elapsed "$T0")s"

# ---- configs ----------------------------------------------------------------------------------
CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.8 }' /proc/meminfo)
for i in 0 1; do mknod "$S/dev/gpu$i" c 1 3; done # fake GPUs must be character devices

cat >"$S/etc/slurmdbd.conf" <<EOF
# generated by slurm/cluster-up.sh
AuthType=auth/munge
AuthInfo=socket=$MSOCK
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$S/slurm/log/slurmdbd.log
PidFile=$S/slurm/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
EOF
chmod 600 "$S/etc/slurmdbd.conf"

cat >"$S/etc/slurm.conf" <<EOF
# generated by slurm/cluster-up.sh; clients find it through SLURM_CONF (source slurm/cluster-env.sh)
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MSOCK
CredType=cred/munge
StateSaveLocation=$S/slurm/state
SlurmdSpoolDir=$S/slurm/spool
SlurmctldPidFile=$S/slurm/run/slurmctld.pid
SlurmdPidFile=$S/slurm/run/slurmd.pid
SlurmctldLogFile=$S/slurm/log/slurmctld.log
SlurmdLogFile=$S/slurm/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# submitit jobs ignore SIGTERM; a short KillWait makes scancel/timeouts finish fast
KillWait=5
InactiveLimit=0
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MSOCK
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
SchedulerType=sched/backfill
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:2 State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

cat >"$S/etc/gres.conf" <<EOF
# generated by slurm/cluster-up.sh: two fake GPUs (character devices; jobs get CUDA_VISIBLE_DEVICES)
AutoDetect=off
NodeName=localhost Name=gpu File=$S/dev/gpu[0-1]
EOF

# ---- slurm daemons (each daemonizes and writes its own pid file) ------------------------------
slurmdbd </dev/null >>"$S/slurm/log/slurmdbd.out" 2>&1 9<&- || fail "slurmdbd failed to start"
wait_until slurmdbd timeout 15 sacctmgr -n list cluster
STEPS+=", slurmdbd $(elapsed "$T0")s"
slurmctld -i </dev/null >>"$S/slurm/log/slurmctld.out" 2>&1 9<&- || fail "slurmctld failed to start"
wait_until slurmctld timeout 15 sinfo -h
STEPS+=", slurmctld $(elapsed "$T0")s"
slurmd -N localhost </dev/null >>"$S/slurm/log/slurmd.out" 2>&1 9<&- || fail "slurmd failed to start"
node_idle() { [[ $(node_state) == idle* ]]; }
wait_until "node localhost (idle in sinfo)" node_idle
STEPS+=", node idle $(elapsed "$T0")s"
wait_until "accounting (sacctmgr/sacct)" accounting_ok

log "ready at: $STEPS"
log "up in $(elapsed "$T0")s: partition '$PARTITION', node localhost (CPUs=$CPUS RealMemory=${MEM_MB}M gpu:2)"
log "state: $S   clients: source slurm/cluster-env.sh   (SLURM_CONF=$SLURM_CONF)"
