"""Tracked sweeps: grid specs (TOML) → runs on SLURM, local processes or inline → one record per run.

- :mod:`~statprune.sweep.config`: spec dataclasses, grid expansion, stable run ids
- :mod:`~statprune.sweep.spec`: TOML → checked config (errors name the key)
- :mod:`~statprune.sweep.run`: one run → one record (the function jobs execute; pruning via :mod:`statprune.pipeline`)
- :mod:`~statprune.sweep.executors`: inline | local | slurm (submitit), cluster profiles
- :mod:`~statprune.sweep.store`: atomic records, run claims (lock files), status
- :mod:`~statprune.sweep.launch`: the driver (plan, fine-tune stage, submit, watch, resume)
- :mod:`~statprune.sweep.tracking`: the wandb mirror (lazy import)

See docs/SWEEPS.md.
"""

from statprune.sweep.config import RunConfig, RunSpec, SweepSpec, expand
from statprune.sweep.spec import load_spec, parse_spec
from statprune.sweep.store import RunStore

__all__ = ["RunConfig", "RunSpec", "RunStore", "SweepSpec", "expand", "load_spec", "parse_spec"]
