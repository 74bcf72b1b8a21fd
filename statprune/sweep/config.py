"""Sweep configuration: the frozen dataclasses a spec becomes and its expansion into runs.

:mod:`statprune.sweep.spec` parses and checks the TOML into these. ``run_id`` is a short hash of a
:class:`RunConfig` (what determines the result), so re-running a spec finds its earlier records;
method options enter the hash as written in the spec (typed), not with every default filled in:
adding a new option with a default to a method must not orphan the records of finished sweeps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statprune.pipeline import DEFAULT_BATCH_SIZE, PruneJob

Pairs = tuple[tuple[str, Any], ...]


def freeze(d: Mapping[str, Any] | None) -> Pairs | None:
    """A mapping as sorted (key, value) pairs: picklable, immutable, order-independent."""
    if d is None:
        return None
    return tuple(sorted((str(k), _freeze_value(v)) for k, v in d.items()))


def _freeze_value(v: Any) -> Any:
    if isinstance(v, Mapping):
        return freeze(v)
    if isinstance(v, list | tuple):
        return tuple(_freeze_value(x) for x in v)
    return v


def thaw(pairs: Pairs | None) -> dict[str, Any] | None:
    if pairs is None:
        return None
    return {k: _thaw_value(v) for k, v in pairs}


def _thaw_value(v: Any) -> Any:
    if isinstance(v, tuple):
        if v and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in v):
            return thaw(v)
        return [_thaw_value(x) for x in v]
    return v


# ---- dataclasses ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Fixed settings shared by the runs of a grid (top-level ``[settings]``, overridable per grid)."""

    seq_len: int | None = None  # FLOPs target sequence length; None = pipeline.flops_seq_len rule
    max_length: int | None = None  # truncation (LM: window) for calibration and evaluation; None = task's
    batch_size: int = DEFAULT_BATCH_SIZE  # calibration batch size
    eval_batch_size: int = 32
    calib_split: str = "train"
    eval_split: str = "test"
    dtype: str = "float32"
    device: str = "auto"  # auto = cuda when a GPU is visible to the job, else cpu
    calib_limit: int | None = None  # use only the first N rows of the calibration split (smoke tests)
    eval_limit: int | None = None  # use only the first N rows of the evaluation split (LM: documents)
    limit: int | None = None  # score only the first N examples of the evaluation split (LM: windows)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    label: str
    options: Pairs = ()

    @property
    def options_dict(self) -> dict[str, Any]:
        return thaw(self.options) or {}


@dataclass(frozen=True)
class TaskPair:
    """Evaluate on ``task``; draw calibration data from ``calib`` (often the same task)."""

    task: str
    calib: str


@dataclass(frozen=True)
class GridSpec:
    models: tuple[str, ...]
    tasks: tuple[TaskPair, ...]
    methods: tuple[MethodSpec, ...]
    sparsities: tuple[float, ...]
    calib_sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    settings: Settings
    finetune: Pairs | None = None


@dataclass(frozen=True)
class TrackingSpec:
    """wandb mirror of the records; the mode comes from ``WANDB_MODE`` (offline when unset)."""

    enabled: bool = True
    project: str = "statprune"
    entity: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one run's result; its hash is the ``run_id``."""

    model: str
    task: str
    calib_task: str
    method: str
    method_options: Pairs
    sparsity: float
    calib_size: int
    seed: int
    seq_len: int | None
    max_length: int | None
    batch_size: int
    eval_batch_size: int
    calib_split: str
    eval_split: str
    dtype: str
    device: str
    finetune: Pairs | None = None
    calib_limit: int | None = None
    eval_limit: int | None = None
    limit: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["method_options"] = thaw(self.method_options) or {}
        d["finetune"] = thaw(self.finetune)
        for key in (
            "calib_limit",
            "eval_limit",
            "limit",
        ):  # unset limits leave the hash of older configs alone
            if d[key] is None:
                del d[key]
        return d

    @property
    def run_id(self) -> str:
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:12]

    def prune_job(self, model: str | None = None) -> PruneJob:
        """The pruning part of this run as the pipeline's :class:`PruneJob` (``model``: the
        fine-tuned checkpoint when there is one)."""
        return PruneJob(
            model=model or self.model,
            method=self.method,
            sparsity=self.sparsity,
            calib_task=self.calib_task,
            calib_size=self.calib_size,
            seed=self.seed,
            options=thaw(self.method_options) or {},
            calib_split=self.calib_split,
            max_length=self.max_length,
            batch_size=self.batch_size,
            device=self.device,
            dtype=self.dtype,
            seq_len=self.seq_len,
            task=self.task,
            calib_limit=self.calib_limit,
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        d = dict(d)
        d["method_options"] = freeze(d.get("method_options") or {})
        d["finetune"] = freeze(d.get("finetune"))
        return cls(**d)


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    name: str
    config: RunConfig
    label: str = ""  # the spec's method label (two labels may share a method and options)


@dataclass(frozen=True)
class SweepSpec:
    study: str
    grids: tuple[GridSpec, ...]
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    description: str = ""
    results_dir: str | None = None  # default for --results (relative paths: to the current directory)
    source: str | None = None  # path of the TOML it came from

    def runs(self) -> list[RunSpec]:
        return expand(self)


# ---- expansion ------------------------------------------------------------------------------------


def short_model(model: str) -> str:
    """A model spec as a name fragment: ``random:tiny-bert`` → ``tiny-bert``, paths → last part."""
    s = model.split(":", 1)[1] if model.startswith("random:") else model
    s = s.rstrip("/").rsplit("/", 1)[-1]
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in s).lower()


def short_task(task: str) -> str:
    """A task as a name fragment: registered names as they are, local data by its file or folder stem."""
    from statprune.data import TASKS

    if task in TASKS:
        return task
    return Path(task.rstrip("/")).stem or task


def _name(label: str, cfg: RunConfig, with_task: bool) -> str:
    parts = [label, short_model(cfg.model)]
    if with_task:
        task, calib = short_task(cfg.task), short_task(cfg.calib_task)
        parts.append(task if cfg.calib_task == cfg.task else f"{task}.c-{calib}")
    parts += [f"s{cfg.sparsity:.2f}", f"n{cfg.calib_size}", f"seed{cfg.seed}"]
    return "-".join(parts)


def expand(spec: SweepSpec) -> list[RunSpec]:
    """All runs of the spec in a fixed order (grid, model, task, method, sparsity, calib size, seed).

    The same config reached twice (overlapping grids) is one run. Names are readable and unique within
    the study: the task joins the name when the study has more than one task pair.
    """
    configs: list[tuple[str, RunConfig]] = []
    for g in spec.grids:
        s = g.settings
        for model in g.models:
            for tp in g.tasks:
                for m in g.methods:
                    for sparsity in g.sparsities:
                        for n in g.calib_sizes:
                            for seed in g.seeds:
                                cfg = RunConfig(
                                    model=model,
                                    task=tp.task,
                                    calib_task=tp.calib,
                                    method=m.name,
                                    method_options=m.options,
                                    sparsity=sparsity,
                                    calib_size=n,
                                    seed=seed,
                                    seq_len=s.seq_len,
                                    max_length=s.max_length,
                                    batch_size=s.batch_size,
                                    eval_batch_size=s.eval_batch_size,
                                    calib_split=s.calib_split,
                                    eval_split=s.eval_split,
                                    dtype=s.dtype,
                                    device=s.device,
                                    finetune=g.finetune,
                                    calib_limit=s.calib_limit,
                                    eval_limit=s.eval_limit,
                                    limit=s.limit,
                                )
                                configs.append((m.label, cfg))
    with_task = len({(c.task, c.calib_task) for _, c in configs}) > 1
    runs: list[RunSpec] = []
    seen: set[str] = set()
    for label, cfg in configs:
        rid = cfg.run_id
        if rid in seen:
            continue
        seen.add(rid)
        runs.append(RunSpec(run_id=rid, name=_name(label, cfg, with_task), config=cfg, label=label))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):  # same readable name, different configs: add the id
        counts = {n: names.count(n) for n in names}
        runs = [
            dataclasses.replace(r, name=f"{r.name}-{r.run_id[:6]}") if counts[r.name] > 1 else r for r in runs
        ]
    return runs


def finetune_key(cfg: RunConfig) -> tuple[str, str, Pairs] | None:
    """What a run's fine-tune depends on (runs sharing it share one fine-tuned checkpoint)."""
    if cfg.finetune is None:
        return None
    return (cfg.model, cfg.task, cfg.finetune)


def select(runs: Iterable[RunSpec], only: Iterable[str] | None) -> list[RunSpec]:
    """Runs whose id (or id prefix) or name is in ``only`` (all when ``only`` is None)."""
    runs = list(runs)
    if not only:
        return runs
    wanted = list(only)
    return [r for r in runs if any(r.run_id.startswith(w) or r.name == w for w in wanted)]
