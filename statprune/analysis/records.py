"""Sweep run records → one tidy pandas frame (one row per run), seed aggregates, dense reference.

Records (docs/RECORDS.md) are the source of truth; everything the analysis shows is derived here,
so a table and a plot of the same study can never disagree. Failed, running and unreadable runs
stay in the frame (``status`` says which) so they are counted, not silently dropped; only
aggregates of metric values use ``done`` runs.

Frame columns: ``run_id, study, name, status, path``; the run config (:data:`CONFIG_COLUMNS`, with
``method_options`` as canonical JSON and ``method_label`` = method plus the options that tell its
variants in this frame apart); ``metric.<name>`` (pruned model) and ``dense.<name>`` (the dense
reference of the run's model/task, the same for every run of that pair, failed ones included);
``sparsity_achieved, flops_kept`` (fractions of prunable FLOPs), ``flops_dense, flops_pruned,
params_dense, params_pruned, params_kept``; ``prune_seconds, total_seconds, peak_memory_bytes``;
per-layer ``layer_heads, layer_neurons`` and their ``*_dense`` (lists); ``error_type,
error_message``; ``started, finished``; ``outdated`` (why a published record comes from older code,
see :mod:`.publish`; else None).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from statprune.analysis.style import PRIMARY_METRICS
from statprune.errors import StatpruneError
from statprune.io import load_toml

log = logging.getLogger(__name__)

# "outdated": a done published record from older code (statprune.analysis.publish), when excluded
STATUSES = ("done", "outdated", "failed", "running", "cancelled", "missing", "unreadable")
CONFIG_COLUMNS = (
    "model",
    "task",
    "calib_task",
    "method",
    "method_options",
    "sparsity",
    "calib_size",
    "seed",
    "seq_len",
    "max_length",
    "batch_size",
    "dtype",
    "device",
    "finetune",
    "eval_split",
)
# what defines one cell of a table/plot point: the config minus the seed and the execution details
CELL_KEYS = (
    "model",
    "task",
    "calib_task",
    "method",
    "method_label",
    "sparsity",
    "calib_size",
    "seq_len",
    "max_length",
    "dtype",
    "finetune",
    "eval_split",
)
VALUE_COLUMNS = (
    "sparsity_achieved",
    "flops_kept",
    "params_kept",
    "params_dense",
    "params_pruned",
    "prune_seconds",
    "total_seconds",
    "peak_memory_bytes",
)


# --------------------------------------------------------------------------- studies


@dataclass(frozen=True)
class StudyRef:
    """A sweep spec's study: its name, the folder of its run records, and (when the spec could be
    expanded) the runs it expects and the method labels it gives."""

    name: str
    results_dir: Path
    spec_path: Path
    expected: tuple[tuple[str, str, dict[str, Any]], ...] | None = field(default=None, compare=False)
    labels: dict[tuple[str, str] | str, str] = field(default_factory=dict, compare=False)


def resolve_study(spec_path: str | Path, results_root: str | Path | None = None) -> StudyRef:
    """Study name, results folder and expected runs of a sweep spec.

    Uses :func:`statprune.sweep.spec.load_spec` (which also lists the expected runs); when the sweep
    package is absent or the spec no longer validates (a method renamed since the sweep ran), the
    study name is read from the TOML's top-level ``study`` key so finished records stay readable.
    ``results_root`` overrides the folder holding ``<study>/`` (default: the spec's ``results_dir``,
    else ``results`` relative to the working directory).
    """
    spec_path = Path(spec_path)
    if not spec_path.is_file():
        raise StatpruneError(f"sweep spec {spec_path} not found")
    ref = _study_from_sweep(spec_path)
    if ref is None:
        ref = _study_from_toml(spec_path)
    name, root, expected, labels = ref
    if results_root is not None:
        root = Path(results_root)
    return StudyRef(name, Path(root or "results") / name, spec_path, expected, labels)


def _options_key(method: str, options: Mapping[str, Any] | None) -> tuple[str, str]:
    return (method, json.dumps(dict(options or {}), sort_keys=True))


def _study_from_sweep(spec_path: Path) -> tuple | None:
    from statprune.sweep.spec import load_spec

    try:
        spec = load_spec(spec_path)
    except StatpruneError as e:
        log.warning("%s does not validate as a sweep spec (%s); reading its study name only", spec_path, e)
        return None
    expected = tuple((r.run_id, r.name, r.config.to_dict()) for r in spec.runs())
    labels: dict[tuple[str, str] | str, str] = {
        _options_key(m.name, m.options_dict): m.label for g in spec.grids for m in g.methods
    }
    labels.update({r.run_id: r.label for r in spec.runs()})  # wins where two labels share options
    root = Path(spec.results_dir) if spec.results_dir else None
    return spec.study, root, expected, labels


def _study_from_toml(spec_path: Path) -> tuple:
    data = load_toml(spec_path, what="sweep spec")
    name = data.get("study")
    if not isinstance(name, str) or not name:
        raise StatpruneError(f"sweep spec {spec_path} has no top-level 'study' name")
    root = data.get("results_dir")
    return name, Path(root) if root else None, None, {}


# --------------------------------------------------------------------------- loading


def _record_paths(folder: Path) -> list[Path]:
    # top-level *.json only: report/ and temp files of atomic writes (".name.json.tmp") are not runs
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith("."))


def _flatten_record(rec: Mapping[str, Any], path: Path, study: str) -> dict[str, Any]:
    cfg = rec.get("config") or {}
    prune = rec.get("prune") or {}
    timings = rec.get("timings") or {}
    error = rec.get("error") or {}
    row: dict[str, Any] = {
        "run_id": rec.get("run_id", path.stem),
        "study": rec.get("study") or study,
        "name": rec.get("name"),
        "status": rec.get("status", "unreadable"),
        "path": str(path),
        "outdated": rec.get("outdated"),  # why a published record is from older code, else None
    }
    for key in CONFIG_COLUMNS:
        row[key] = cfg.get(key)
    row["device"] = rec.get("device") or cfg.get("device")  # where it ran, not "auto"
    row["method_options"] = json.dumps(cfg.get("method_options") or {}, sort_keys=True)
    if row["finetune"] is not None:
        row["finetune"] = json.dumps(row["finetune"], sort_keys=True)
    for k, v in (rec.get("metrics") or {}).items():
        row[f"metric.{k}"] = _number(v)
    for k, v in (rec.get("dense_metrics") or {}).items():
        row[f"dense.{k}"] = _number(v)
    flops_dense, flops_pruned = _number(prune.get("flops_dense")), _number(prune.get("flops_pruned"))
    achieved = _number(prune.get("sparsity_achieved"))
    if math.isnan(achieved) and flops_dense > 0:
        achieved = 1.0 - flops_pruned / flops_dense
    params_dense, params_pruned = _number(prune.get("params_dense")), _number(prune.get("params_pruned"))
    row.update(
        sparsity_achieved=achieved,
        flops_kept=1.0 - achieved,
        flops_dense=flops_dense,
        flops_pruned=flops_pruned,
        params_dense=params_dense,
        params_pruned=params_pruned,
        params_kept=params_pruned / params_dense if params_dense > 0 else math.nan,
        prune_seconds=_number(prune.get("prune_seconds", timings.get("prune_seconds"))),
        total_seconds=_number(timings.get("total_seconds")),
        peak_memory_bytes=_number(rec.get("peak_memory_bytes", prune.get("peak_memory_bytes"))),
        # STAT's own prediction of its output error (``prune.diagnostics``); NaN for other methods
        predicted_error=_number((prune.get("diagnostics") or {}).get("predicted_error")),
        error_type=error.get("type"),
        error_message=error.get("message"),
        started=rec.get("started"),
        finished=rec.get("finished"),
    )
    for src, suffix in (("layers", ""), ("layers_dense", "_dense")):
        layers = prune.get(src)  # per-layer shapes: query heads and FFN neurons kept
        row[f"layer_heads{suffix}"] = [int(x["num_heads"]) for x in layers] if layers else None
        row[f"layer_neurons{suffix}"] = [int(x["intermediate"]) for x in layers] if layers else None
    return row


def _number(v: Any) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _unreadable_row(path: Path, study: str, why: str) -> dict[str, Any]:
    return {
        "run_id": path.stem,
        "study": study,
        "status": "unreadable",
        "path": str(path),
        "error_message": why,
    }


def load_records(
    folders: Path | str | Iterable[Path | str],
    *,
    labels: Mapping[tuple[str, str] | str, str] | None = None,
    expected: Iterable[tuple[str, str, Mapping[str, Any]]] = (),
) -> pd.DataFrame:
    """One row per run record found in ``folders`` (each a ``results/<study>/`` folder).

    Unreadable files appear with ``status == "unreadable"``; JSON files that are not run records
    (no ``run_id`` and no ``config``) are skipped. ``expected`` runs ``(run_id, name, config)``
    without a record are added with ``status == "missing"``. ``labels`` maps a run id, or
    ``(method, options JSON)``, to the spec's method label (the run id first).
    """
    if isinstance(folders, (str, Path)):
        folders = [folders]
    rows = []
    folders = [Path(f) for f in folders]
    for folder in folders:
        for path in _record_paths(folder):
            try:
                rec = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
                log.warning("unreadable run record %s: %s", path, e)
                rows.append(_unreadable_row(path, folder.name, str(e)))
                continue
            if not isinstance(rec, dict) or ("run_id" not in rec and "config" not in rec):
                continue
            rows.append(_flatten_record(rec, path, folder.name))
    seen = {r["run_id"] for r in rows}
    for run_id, name, config in expected:
        if run_id not in seen:
            study = folders[0].name if folders else ""
            fake = {"run_id": run_id, "name": name, "status": "missing", "config": dict(config)}
            rows.append(_flatten_record(fake, Path(folders[0] if folders else ".") / f"{run_id}.json", study))
    frame = pd.DataFrame(rows)
    if frame.empty:
        return _empty_frame()
    for col in ("run_id", "study", "status", *CONFIG_COLUMNS, *VALUE_COLUMNS):
        if col not in frame:
            frame[col] = None
    frame = _label_methods(frame, labels or {})
    frame = _join_dense_reference(frame)
    return frame.sort_values(
        ["study", "model", "task", "method_label", "sparsity", "calib_size", "seed"],
        na_position="last",
        kind="stable",
    ).reset_index(drop=True)


def _empty_frame() -> pd.DataFrame:
    cols = ["run_id", "study", "name", "status", "path", *CONFIG_COLUMNS, "method_label", *VALUE_COLUMNS]
    return pd.DataFrame(columns=cols)


def load_study(study: StudyRef, *, include_missing: bool = True) -> pd.DataFrame:
    """The records of one study, plus a ``missing`` row per expected run without a record."""
    return load_studies([study], include_missing=include_missing)


def load_studies(studies: Sequence[StudyRef], *, include_missing: bool = True) -> pd.DataFrame:
    """The records of several studies in one frame (labels and dense references over the union)."""
    frames = []
    for s in studies:
        expected = (s.expected or ()) if include_missing else ()
        if s.results_dir.is_dir() or expected:
            f = load_records(
                [s.results_dir] if s.results_dir.is_dir() else [], labels=s.labels, expected=expected
            )
            if not f.empty:
                f.loc[f["status"].eq("missing"), "study"] = s.name
            frames.append(f)
    frames = [f for f in frames if not f.empty]
    if not frames:
        return _empty_frame()
    if len(frames) == 1:
        return frames[0]
    # each study's rows carry its own dense reference; re-join so one (model, task) has one value
    return _join_dense_reference(pd.concat(frames, ignore_index=True))


def _label_methods(frame: pd.DataFrame, spec_labels: Mapping[tuple[str, str] | str, str]) -> pd.DataFrame:
    """``method_label``: the spec's label of the run (or of its (method, options) pair); otherwise
    the method plus ``[k=v,...]`` for the options that differ between its runs in this frame."""
    labels = pd.Series(frame["method"].astype(object), index=frame.index)
    for method, group in frame.groupby("method", dropna=True):
        options = [json.loads(o) if isinstance(o, str) else {} for o in group["method_options"]]
        keys = sorted({k for o in options for k in o})
        varying = [k for k in keys if len({json.dumps(o.get(k), sort_keys=True) for o in options}) > 1]
        for idx, opts, run_id in zip(group.index, options, group["run_id"]):
            spec_label = spec_labels.get(run_id) or spec_labels.get(_options_key(method, opts))
            if spec_label:
                labels.loc[idx] = spec_label
            elif varying:
                parts = ",".join(f"{k}={_short(opts.get(k))}" for k in varying)
                labels.loc[idx] = f"{method}[{parts}]"
    frame = frame.copy()
    frame["method_label"] = labels
    return frame


def _short(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def _join_dense_reference(frame: pd.DataFrame) -> pd.DataFrame:
    """Replace per-record dense metrics with the reference of the run's dense evaluation: their mean
    over the runs sharing model, fine-tune, task, split, length and dtype (the sweep caches one dense
    evaluation per such key, so the records agree anyway; a dev run's dense score is not a test one)."""
    dense_cols = [c for c in frame if c.startswith("dense.")]
    if not dense_cols:
        return frame
    keys = [k for k in ("model", "finetune", "task", "eval_split", "max_length", "dtype") if k in frame]
    frame = frame.copy()
    frame[dense_cols] = frame.groupby(keys, dropna=False)[dense_cols].transform("mean")
    return frame


# --------------------------------------------------------------------------- derived views


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Names of the metrics the runs report (without the ``metric.`` prefix)."""
    return [c.removeprefix("metric.") for c in frame if c.startswith("metric.")]


def primary_metric(frame: pd.DataFrame) -> str:
    """The metric a table/figure shows when none is named (accuracy, pearson, perplexity, …)."""
    have = [m for m in metric_columns(frame) if frame[f"metric.{m}"].notna().any()]
    if not have:
        raise StatpruneError("no run in this selection reports any metric (none finished?)")
    for m in PRIMARY_METRICS:
        if m in have:
            return m
    return sorted(have)[0]


def apply_filter(frame: pd.DataFrame, where: Mapping[str, Any] | None) -> pd.DataFrame:
    """Rows whose column ``k`` equals ``v`` (or is in ``v`` when it is a list), for every item."""
    if not where:
        return frame
    mask = pd.Series(True, index=frame.index)
    for key, value in where.items():
        if key not in frame:
            raise StatpruneError(
                f"filter key {key!r} is not a record column; try one of {', '.join(CELL_KEYS)}"
            )
        values = value if isinstance(value, (list, tuple)) else [value]
        col = frame[key]
        hit = pd.Series(False, index=frame.index)
        for v in values:
            if isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool)):
                hit |= pd.to_numeric(col, errors="coerce").sub(v).abs().lt(1e-9)
            else:
                hit |= col.astype(str).eq(str(v))
        mask &= hit
    return frame[mask]


def aggregate(frame: pd.DataFrame, keys: Sequence[str] = CELL_KEYS) -> pd.DataFrame:
    """One row per cell (config without the seed): ``<value>.mean``, ``<value>.std``, and counts.

    Values are every ``metric.*`` column plus :data:`VALUE_COLUMNS`, over ``done`` runs only;
    ``n`` counts done runs, ``n_failed`` failed ones, ``n_other`` the rest (running, cancelled,
    missing, unreadable).
    std is the sample std (ddof=1), NaN for a single seed. Dense reference columns are carried.
    """
    keys = [k for k in keys if k in frame]
    values = [c for c in frame if c.startswith("metric.")] + [c for c in VALUE_COLUMNS if c in frame]
    dense = [c for c in frame if c.startswith("dense.")]
    work = frame[keys + values + dense].copy()
    done = frame["status"].eq("done")
    work[values] = work[values].apply(pd.to_numeric, errors="coerce").where(done, other=math.nan)
    work["n"] = done.astype(int)
    work["n_failed"] = frame["status"].eq("failed").astype(int)
    work["n_other"] = (~frame["status"].isin(["done", "failed"])).astype(int)
    grouped = work.groupby(keys, dropna=False, sort=True)
    stats = grouped[values].agg(["mean", "std"]) if values else pd.DataFrame(index=grouped.size().index)
    stats.columns = [f"{c}.{s}" for c, s in stats.columns] if values else []
    counts = grouped[["n", "n_failed", "n_other"]].sum()
    out = stats.join(counts)
    if dense:
        out = out.join(grouped[dense].first())
    return out.reset_index()


def method_of(frame: pd.DataFrame) -> dict[str, str]:
    """method label → base method (for colours and names)."""
    pairs = frame[["method_label", "method"]].dropna().drop_duplicates()
    return dict(zip(pairs["method_label"], pairs["method"]))


def varying_columns(frame: pd.DataFrame, candidates: Sequence[str]) -> list[str]:
    """Which of ``candidates`` take more than one value in ``frame`` (NaN counts as a value)."""
    return [c for c in candidates if c in frame and frame[c].astype(str).nunique(dropna=False) > 1]


def status_counts(frame: pd.DataFrame) -> dict[str, int]:
    counts = frame["status"].value_counts().to_dict() if not frame.empty else {}
    return {s: int(counts.get(s, 0)) for s in STATUSES if counts.get(s, 0)} | {
        s: int(n) for s, n in counts.items() if s not in STATUSES
    }
