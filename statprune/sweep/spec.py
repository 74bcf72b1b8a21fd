"""Sweep specs: a TOML file → checked, frozen :mod:`statprune.sweep.config` dataclasses.

A spec names a study, the pruning methods (with their options) and one or more ``[[grid]]`` tables,
each a product over models × tasks × methods × sparsities × calibration sizes × seeds with its own
fixed settings. Several grids let one study pair models with the tasks that suit them (an encoder on
a classification task, a decoder on a language-modelling task). Everything is checked before anything
is submitted: unknown keys and bad values raise :class:`StatpruneError` naming the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from statprune.errors import StatpruneError
from statprune.io import load_toml
from statprune.runtime import DTYPES
from statprune.sweep.config import (
    GridSpec,
    MethodSpec,
    Pairs,
    RunConfig,
    RunSpec,
    Settings,
    SweepSpec,
    TaskPair,
    TrackingSpec,
    expand,
    finetune_key,
    freeze,
    select,
    short_model,
    thaw,
)

__all__ = [
    "GridSpec",
    "MethodSpec",
    "RunConfig",
    "RunSpec",
    "Settings",
    "SweepSpec",
    "TaskPair",
    "TrackingSpec",
    "expand",
    "finetune_key",
    "load_spec",
    "parse_spec",
    "select",
    "short_model",
    "thaw",
]


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
    from statprune.methods import METHODS
    from statprune.pruner import method_options

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
        out.append(MethodSpec(name=name, label=label, options=freeze(typed) or ()))
    labels = [m.label for m in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise _err(where, f"duplicate method label(s) {', '.join(dup)}: give each entry a distinct 'label'")
    return tuple(out)


def _check_task(where: str, name: str) -> None:
    """A registered task or local data (a path, a task file)."""
    from statprune.data import get_task

    try:
        get_task(name)
    except StatpruneError as e:
        raise _err(where, str(e)) from None


def _check_model(where: str, spec: str) -> None:
    """Reject model specs that cannot load (unknown alias or random shape) before submitting."""
    import re

    from statprune.assets import model_aliases
    from statprune.models.shapes import SHAPES

    if spec.startswith("random:"):
        shape = spec.removeprefix("random:")
        if shape not in SHAPES:
            raise _err(where, SHAPES.unknown_message(shape))
        return
    if spec in model_aliases() or Path(spec).expanduser().is_dir():
        return
    if Path(spec).suffix.lower() == ".gguf" and Path(spec).expanduser().is_file():  # converted when loaded
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
    from statprune.data import get_task

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
    from statprune.models.finetune import FinetuneConfig
    from statprune.pruner import parse_options

    try:
        parse_options(FinetuneConfig, table)
    except StatpruneError as e:
        raise _err(where, str(e)) from None
    return freeze(table)


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
    raw = load_toml(p, what="sweep spec")
    spec = parse_spec(raw, source=str(p))
    expand(spec)  # duplicate names/ids are spec errors too
    return spec
