# shellcheck shell=bash
# Source me after slurm/cluster-up.sh:   source slurm/cluster-env.sh [STATE_DIR] && sinfo
#
# Exports SLURM_CONF, which is all Slurm clients (sbatch, squeue, sacct, scancel, srun) need: the
# config names the munge socket and ports of this cluster. submitit runs those clients as
# subprocesses and sbatch passes the environment on to jobs, so exporting it here is enough; no
# file under /etc is written. Also exports STATPRUNE_SLURM_STATE_DIR and STATPRUNE_SLURM_PROFILE
# (the cluster profile for sweeps; default slurm/local.toml).
# Note: `source` without arguments inside a script passes that script's own "$@"; name the state
# dir explicitly (or set STATPRUNE_SLURM_STATE_DIR) when sourcing from a script that has arguments.
_statprune_slurm_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATPRUNE_SLURM_STATE_DIR=$(realpath -m "${1:-${STATPRUNE_SLURM_STATE_DIR:-$_statprune_slurm_here/../.slurm-state}}")
export STATPRUNE_SLURM_STATE_DIR
export SLURM_CONF="$STATPRUNE_SLURM_STATE_DIR/etc/slurm.conf"
export STATPRUNE_SLURM_PROFILE="${STATPRUNE_SLURM_PROFILE:-$_statprune_slurm_here/local.toml}"
unset _statprune_slurm_here
if [[ ! -f $SLURM_CONF ]]; then
  echo "cluster-env.sh: warning: $SLURM_CONF does not exist; run slurm/cluster-up.sh first" >&2
fi
