"""Sweep specs: a TOML file → frozen dataclasses → a deterministic list of runs with stable ids.

A spec names a study, the pruning methods (with their options) and one or more ``[[grid]]`` tables,
each a product over models × tasks × methods × sparsities × calibration sizes × seeds with its own
fixed settings. Several grids let one study pair models with the tasks that suit them (an encoder on
a classification task, a decoder on a language-modelling task). Everything is checked before anything
is submitted: unknown keys and bad values raise :class:`StatpruneError` naming the key.

``run_id`` is a short hash of the resolved run config (what determines the result), so re-running a
spec finds its earlier records. Method options enter the hash as written in the spec (typed), not
with every default filled in: adding a new option with a default to a method must not orphan the
records of finished sweeps. The fully resolved options are in each record's ``prune.options``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statprune.errors import StatpruneError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DTYPES = ("float32", "bfloat16", "float16")
Pairs = tuple[tuple[str, Any], ...]


def _freeze(d: Mapping[str, Any] | None) -> Pairs | None:
    """A mapping as sorted (key, value) pairs: picklable, immutable, order-independent."""
    if d is None:
        return None
    return tuple(sorted((str(k), _freeze_value(v)) for k, v in d.items()))


def _freeze_value(v: Any) -> Any:
    if isinstance(v, Mapping):
        return _freeze(v)
    if isinstance(v, list | tuple):
        return tuple(_freeze_value(x) for x in v)
    return v


def _thaw(pairs: Pairs | None) -> dict[str, Any] | None:
    if pairs is None:
        return None
    return {k: _thaw_value(v) for k, v in pairs}


def _thaw_value(v: Any) -> Any:
    if isinstance(v, tuple):
        if v and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in v):
            return _thaw(v)
        return [_thaw_value(x) for x in v]
    return v


# ---- dataclasses ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Fixed settings shared by the runs of a grid (top-level ``[settings]``, overridable per grid)."""

    seq_len: int | None = None  # FLOPs target sequence length; None = the task's flops_seq_len
    max_length: int | None = None  # truncation (LM: window) for calibration and evaluation; None = task's
    batch_size: int = 16  # calibration batch size
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
        return _thaw(self.options) or {}


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
        d["method_options"] = _thaw(self.method_options) or {}
        d["finetune"] = _thaw(self.finetune)
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

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        d = dict(d)
        d["method_options"] = _freeze(d.get("method_options") or {})
        d["finetune"] = _freeze(d.get("finetune"))
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


# ---- parsing --------------------------------------------------------------------------------------

TOP_KEYS = {"study", "description", "results_dir", "settings", "methods", "grid", "finetune", "tracking"}
GRID_KEYS = {
    "models",
    "tasks",
    "calib_tasks",
    "methods",
    "sparsities",
    "calib_sizes",
    "seeds",
    "settings",
    "finetune",
}
METHOD_KEYS = {"name", "label", "options"}
TRACKING_KEYS = {f.name for f in dataclasses.fields(TrackingSpec)}
SETTINGS_KEYS = {f.name for f in dataclasses.fields(Settings)}


def _err(where: str, msg: str) -> StatpruneError:
    return StatpruneError(f"{where}: {msg}")


def _check_keys(where: str, table: Mapping[str, Any], allowed: set[str]) -> None:
    import difflib

    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _err(
                f"{where}.{key}" if where else key, f"unknown key{hint}; valid: {', '.join(sorted(allowed))}"
            )


def _table(where: str, v: Any) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise _err(where, f"expected a table, got {type(v).__name__} {v!r}")
    return v


def _str(where: str, v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise _err(where, f"expected a non-empty string, got {v!r}")
    return v


def _int(where: str, v: Any, *, minimum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _err(where, f"expected an integer, got {v!r}")
    if minimum is not None and v < minimum:
        raise _err(where, f"must be >= {minimum}, got {v}")
    return v


def _list(where: str, v: Any) -> list[Any]:
    """A list, or a scalar taken as a one-element list; empty lists are errors."""
    items = list(v) if isinstance(v, list | tuple) else [v]
    if not items:
        raise _err(where, "must not be empty")
    return items


def _sparsity(where: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= float(v) < 1.0:
        raise _err(where, f"expected a fraction in [0, 1), got {v!r}")
    return round(float(v), 10)


def _study_name(v: Any) -> str:
    s = _str("study", v)
    if not all(c.isalnum() or c in "-_." for c in s) or s.startswith("."):
        raise _err("study", f"use letters, digits, '-', '_' or '.' (it names a folder), got {s!r}")
    return s


def _settings(where: str, raw: Mapping[str, Any], base: Settings) -> Settings:
    _check_keys(where, raw, SETTINGS_KEYS)
    values: dict[str, Any] = {}
    for key, v in raw.items():
        w = f"{where}.{key}"
        if key in ("seq_len", "max_length"):
            values[key] = None if v == "task" else _int(w, v, minimum=2)
        elif key in ("calib_limit", "eval_limit", "limit"):
            values[key] = None if v is None else _int(w, v, minimum=1)
        elif key in ("batch_size", "eval_batch_size"):
            values[key] = _int(w, v, minimum=1)
        elif key == "dtype":
            if v not in DTYPES:
                raise _err(w, f"expected one of {', '.join(DTYPES)}, got {v!r}")
            values[key] = v
        elif key == "device":
            s = _str(w, v)
            if not (s in ("auto", "cpu", "cuda") or s.startswith("cuda:")):
                raise _err(w, f"expected auto, cpu, cuda or cuda:N, got {v!r}")
            values[key] = s
        else:
            values[key] = _str(w, v)
    return dataclasses.replace(base, **values)


def _methods(where: str, raw: Any) -> tuple[MethodSpec, ...]:
    from statprune.pruner import METHODS, method_options

    _register_methods()
    entries = _list(where, raw)
    out: list[MethodSpec] = []
    for i, entry in enumerate(entries):
        w = f"{where}[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        entry = _table(w, entry)
        _check_keys(w, entry, METHOD_KEYS)
        if "name" not in entry:
            raise _err(f"{w}.name", "missing (the registered method name)")
        name = _str(f"{w}.name", entry["name"])
        if name not in METHODS:
            raise _err(f"{w}.name", METHODS.unknown_message(name))
        options = dict(_table(f"{w}.options", entry.get("options", {})))
        try:
            parsed = method_options(name, options)
        except StatpruneError as e:
            raise _err(f"{w}.options", str(e)) from None
        typed = {k: getattr(parsed, k) for k in options}  # as written, but with the coerced types
        label = _str(f"{w}.label", entry.get("label", name))
        if not all(c.isalnum() or c in "-_." for c in label):
            raise _err(f"{w}.label", f"use letters, digits, '-', '_' or '.', got {label!r}")
        out.append(MethodSpec(name=name, label=label, options=_freeze(typed) or ()))
    labels = [m.label for m in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise _err(where, f"duplicate method label(s) {', '.join(dup)}: give each entry a distinct 'label'")
    return tuple(out)


def _register_methods() -> None:
    """Import the method packages so the METHODS registry is complete."""
    import statprune.baselines
    import statprune.stat  # noqa: F401


def _task_names() -> Any:
    """The task registry when the data package is installed, else None (names checked at run time)."""
    try:
        from statprune.data import TASKS  # type: ignore[attr-defined]
    except ImportError:
        return None
    return TASKS


def _check_task(where: str, name: str) -> None:
    """A registered task or local data (a path, a task file); checked where the data package is installed."""
    if _task_names() is None:
        return
    from statprune.data import get_task

    try:
        get_task(name)
    except StatpruneError as e:
        raise _err(where, str(e)) from None


def _check_model(where: str, spec: str) -> None:
    """Reject model specs that cannot load (unknown alias or random shape) before submitting."""
    import re

    try:
        from statprune.assets import model_aliases
        from statprune.models.shapes import SHAPES
    except ImportError:
        return
    if spec.startswith("random:"):
        shape = spec.removeprefix("random:")
        if shape not in SHAPES:
            raise _err(where, SHAPES.unknown_message(shape))
        return
    if spec in model_aliases() or Path(spec).expanduser().is_dir():
        return
    if re.match(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", spec):  # a hub id: checked when loaded
        return
    import difflib

    close = difflib.get_close_matches(spec, model_aliases(), n=1)
    raise _err(
        where,
        f"unknown model {spec!r}: not a model alias ({', '.join(model_aliases())}), an existing directory, "
        "a hub id 'org/name' or 'random:<shape>'" + (f" (did you mean {close[0]!r}?)" if close else ""),
    )


def _check_splits(where: str, pairs: tuple[TaskPair, ...], settings: Settings) -> None:
    try:
        from statprune.data import get_task
    except ImportError:
        return
    for tp in pairs:
        for name, split, key in (
            (tp.task, settings.eval_split, "eval_split"),
            (tp.calib, settings.calib_split, "calib_split"),
        ):
            try:
                get_task(name).canonical_split(split)
            except StatpruneError as e:
                raise _err(f"{where}.settings.{key}", str(e)) from None


def _tasks(grid: str, raw: Any, calib_raw: Any) -> tuple[TaskPair, ...]:
    calib_tasks = None
    if calib_raw is not None:
        calib_tasks = [
            _str(f"{grid}.calib_tasks[{i}]", c) for i, c in enumerate(_list(f"{grid}.calib_tasks", calib_raw))
        ]
        for i, c in enumerate(calib_tasks):
            _check_task(f"{grid}.calib_tasks[{i}]", c)
    pairs: list[TaskPair] = []
    for i, t in enumerate(_list(f"{grid}.tasks", raw)):
        w = f"{grid}.tasks[{i}]"
        if isinstance(t, Mapping):  # {task = "...", calib = "..."}: an explicit pair
            _check_keys(w, t, {"task", "calib"})
            if "task" not in t:
                raise _err(f"{w}.task", "missing (the evaluation task)")
            task = _str(f"{w}.task", t["task"])
            calibs = [_str(f"{w}.calib", t.get("calib", task))]
        else:
            task = _str(w, t)
            calibs = calib_tasks or [task]
        _check_task(w, task)
        for c in calibs:
            _check_task(f"{w}.calib", c)
            pairs.append(TaskPair(task=task, calib=c))
    return tuple(pairs)


def _finetune(where: str, raw: Any) -> Pairs | None:
    if raw is False or raw is None:
        return None
    table = dict(_table(where, raw))
    check = _finetune_checker()
    if check is not None:
        try:
            check(table)
        except StatpruneError as e:
            raise _err(where, str(e)) from None
    return _freeze(table)


def _finetune_checker() -> Any:
    """The fine-tune config validator of :mod:`statprune.models.finetune`, when installed."""
    try:
        from statprune.models import finetune as ft
    except ImportError:
        return None
    for name in ("finetune_config", "parse_config", "FinetuneConfig"):
        fn = getattr(ft, name, None)
        if fn is not None:
            if isinstance(fn, type):
                from statprune.pruner import parse_options

                return lambda table, cls=fn: parse_options(cls, table)
            return fn
    return None


def _tracking(raw: Any) -> TrackingSpec:
    t = _table("tracking", raw)
    _check_keys("tracking", t, TRACKING_KEYS)
    enabled = t.get("enabled", True)
    if not isinstance(enabled, bool):
        raise _err("tracking.enabled", f"expected true or false, got {enabled!r}")
    entity = t.get("entity")
    return TrackingSpec(
        enabled=enabled,
        project=_str("tracking.project", t.get("project", "statprune")),
        entity=None if entity is None else _str("tracking.entity", entity),
        tags=tuple(_str(f"tracking.tags[{i}]", x) for i, x in enumerate(t.get("tags", []))),
    )


def parse_spec(raw: Mapping[str, Any], *, source: str | None = None) -> SweepSpec:
    """Check a spec's tables and build the frozen :class:`SweepSpec`; errors name the key."""
    try:
        return _parse(raw, source)
    except StatpruneError as e:
        raise StatpruneError(f"{source}: {e}" if source else str(e)) from None


def _parse(raw: Mapping[str, Any], source: str | None) -> SweepSpec:
    _check_keys("", raw, TOP_KEYS)
    if "study" not in raw:
        raise _err("study", "missing (the study name; records go to results/<study>/)")
    study = _study_name(raw["study"])
    settings = _settings("settings", _table("settings", raw.get("settings", {})), Settings())
    methods = _methods("methods", raw["methods"]) if "methods" in raw else ()
    finetune = _finetune("finetune", raw.get("finetune"))
    if "grid" not in raw:
        raise _err(
            "grid", "missing: add at least one [[grid]] table (models, tasks, sparsities, calib_sizes)"
        )
    grids_raw = raw["grid"]
    grids_raw = [grids_raw] if isinstance(grids_raw, Mapping) else _list("grid", grids_raw)
    grids = []
    for gi, g in enumerate(grids_raw):
        where = f"grid[{gi}]"
        g = _table(where, g)
        _check_keys(where, g, GRID_KEYS)
        for required in ("models", "tasks", "sparsities", "calib_sizes"):
            if required not in g:
                raise _err(f"{where}.{required}", "missing")
        models = tuple(
            _str(f"{where}.models[{i}]", m) for i, m in enumerate(_list(f"{where}.models", g["models"]))
        )
        tasks = _tasks(where, g["tasks"], g.get("calib_tasks"))
        if "methods" in g:
            gm = _list(f"{where}.methods", g["methods"])
            if (
                all(isinstance(x, str) for x in gm)
                and methods
                and all(x in {m.label for m in methods} for x in gm)
            ):
                by_label = {m.label: m for m in methods}
                grid_methods = tuple(by_label[x] for x in gm)  # labels of the top-level [[methods]]
            else:
                grid_methods = _methods(f"{where}.methods", gm)
        elif methods:
            grid_methods = methods
        else:
            raise _err("methods", "missing: add [[methods]] tables (name, options) or a grid's methods list")
        sparsities = tuple(
            _sparsity(f"{where}.sparsities[{i}]", s)
            for i, s in enumerate(_list(f"{where}.sparsities", g["sparsities"]))
        )
        calib_sizes = tuple(
            _int(f"{where}.calib_sizes[{i}]", n, minimum=1)
            for i, n in enumerate(_list(f"{where}.calib_sizes", g["calib_sizes"]))
        )
        seeds = tuple(
            _int(f"{where}.seeds[{i}]", s, minimum=0)
            for i, s in enumerate(_list(f"{where}.seeds", g.get("seeds", [0])))
        )
        gsettings = _settings(
            f"{where}.settings", _table(f"{where}.settings", g.get("settings", {})), settings
        )
        for i, m in enumerate(models):
            _check_model(f"{where}.models[{i}]", m)
        _check_splits(where, tasks, gsettings)
        gfinetune = _finetune(f"{where}.finetune", g["finetune"]) if "finetune" in g else finetune
        grids.append(
            GridSpec(
                models=models,
                tasks=tasks,
                methods=grid_methods,
                sparsities=sparsities,
                calib_sizes=calib_sizes,
                seeds=seeds,
                settings=gsettings,
                finetune=gfinetune,
            )
        )
    results_dir = raw.get("results_dir")
    if results_dir is not None:
        results_dir = _str("results_dir", results_dir)
    return SweepSpec(
        study=study,
        grids=tuple(grids),
        tracking=_tracking(raw.get("tracking", {})),
        description=str(raw.get("description", "")),
        results_dir=results_dir,
        source=source,
    )


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a TOML spec; a missing file or TOML syntax error is a StatpruneError too."""
    p = Path(path)
    if not p.is_file():
        raise StatpruneError(f"sweep spec not found: {p}")
    try:
        with open(p, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise StatpruneError(f"{p}: not valid TOML: {e}") from None
    spec = parse_spec(raw, source=str(p))
    expand(spec)  # duplicate names/ids are spec errors too
    return spec


# ---- expansion ------------------------------------------------------------------------------------


def short_model(model: str) -> str:
    """A model spec as a name fragment: ``random:tiny-bert`` → ``tiny-bert``, paths → last part."""
    s = model.split(":", 1)[1] if model.startswith("random:") else model
    s = s.rstrip("/").rsplit("/", 1)[-1]
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in s).lower()


def short_task(task: str) -> str:
    """A task as a name fragment: registered names as they are, local data by its file or folder stem."""
    registry = _task_names()
    if registry is None or task in registry:
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
