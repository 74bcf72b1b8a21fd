"""wandb mirror of one run (records on disk stay the source of truth).

wandb is imported lazily: it is absent on some machines (the GPU image), and a run must not fail
because tracking cannot start; the record then says ``wandb_run: null``. The mode comes from the
environment: ``WANDB_MODE`` defaults to ``offline`` here, and no code passes ``mode=`` (an explicit
``online`` would override the environment and block for minutes on a machine without network).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackingConfig:
    """What a job needs to open its wandb run; ``enabled=False`` is ``--no-wandb``."""

    enabled: bool = True
    project: str = "statprune"
    group: str | None = None
    entity: str | None = None
    tags: tuple[str, ...] = ()
    dir: str | None = None  # where offline runs go (default: the study's results folder)


class Tracker:
    """A wandb run, or a no-op when disabled or unavailable."""

    def __init__(self, run: Any = None) -> None:
        self.run = run

    @property
    def path(self) -> str | None:
        if self.run is None:
            return None
        try:
            return (
                "/".join(p for p in self.run.path if p)
                if isinstance(self.run.path, list | tuple)
                else str(self.run.path)
            )
        except Exception:  # offline runs have no entity on some versions
            return f"{self.run.project}/{self.run.id}"

    def log_result(self, record: dict[str, Any]) -> None:
        """Metrics, dense metrics, achieved sparsity/FLOPs, timings and the per-layer shapes."""
        if self.run is None:
            return
        try:
            data: dict[str, Any] = {}
            for k, v in (record.get("metrics") or {}).items():
                data[f"metrics/{k}"] = v
            for k, v in (record.get("dense_metrics") or {}).items():
                data[f"dense/{k}"] = v
            prune = record.get("prune") or {}
            for k in ("sparsity_achieved", "flops_dense", "flops_pruned", "params_dense", "params_pruned"):
                if k in prune:
                    data[f"prune/{k}"] = prune[k]
            for k, v in (record.get("timings") or {}).items():
                data[f"timings/{k}"] = v
            layers = prune.get("layers") or []
            if layers:
                import wandb

                cols = ["layer", *layers[0].keys()]
                data["layers"] = wandb.Table(
                    columns=cols, data=[[i, *row.values()] for i, row in enumerate(layers)]
                )
                for i, row in enumerate(layers):
                    for k, v in row.items():
                        self.run.summary[f"layers/{i}/{k}"] = v
            self.run.log(data)
            self.run.summary["status"] = record.get("status")
        except Exception as e:  # tracking never fails a run
            log.warning("wandb logging failed: %s", e)

    def finish(self, failed: bool = False) -> None:
        if self.run is None:
            return
        try:
            self.run.finish(exit_code=1 if failed else 0)
        except Exception as e:
            log.warning("wandb finish failed: %s", e)
        self.run = None


def start(cfg: TrackingConfig, *, name: str, run_id: str, config: dict[str, Any]) -> Tracker:
    """Open a wandb run for one sweep run (mode from ``WANDB_MODE``, offline by default)."""
    if not cfg.enabled or os.environ.get("WANDB_MODE") == "disabled":
        return Tracker()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        import wandb
    except ImportError:
        log.info("wandb is not installed: tracking off (records are written as usual)")
        return Tracker()
    try:
        if cfg.dir:
            Path(cfg.dir).mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group,
            name=name,
            tags=list(cfg.tags) or None,
            config={"run_id": run_id, **config},
            dir=cfg.dir,
            reinit="finish_previous",
        )
    except Exception as e:
        log.warning("wandb.init failed (%s): tracking off for this run", e)
        return Tracker()
    return Tracker(run)
