"""``statprune report SPEC``: every table and plot of one study, under ``results/<study>/report/``.

Per model/task the runs are split into *facets* by any setting that varies within that model/task
(calibration size, calibration task, sequence length, dtype, fine-tuning); each facet gets its
comparison table, metric-vs-FLOPs plot and, for STAT, the per-layer heat map. A model/task whose
calibration size varies also gets calibration tables (one per sparsity) and a plot. One prune-time
table covers all models (each at its largest calibration size), with a plot when there are several.
``index.md`` shows all of it on one page; ``runs.csv``/``summary.csv`` hold the frames.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from statprune.analysis.figures import StudyCheck, check_study, write_table
from statprune.analysis.records import CELL_KEYS, aggregate, load_study, resolve_study, varying_columns
from statprune.errors import StatpruneError

# settings that split a study into separately compared groups (besides model and task)
SETTING_KEYS = ("calib_task", "calib_size", "seq_len", "max_length", "dtype", "finetune")
_SLUG_PREFIX = {
    "calib_task": "c-",
    "calib_size": "n",
    "seq_len": "len",
    "max_length": "max",
    "dtype": "",
    "finetune": "ft",
}


@dataclass
class Report:
    study: str
    out_dir: Path
    markdown: str  # the comparison tables, as printed
    paths: list[Path] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # file stems of the tables and figures built
    check: StudyCheck | None = None
    skipped: list[str] = field(default_factory=list)  # outputs that could not be drawn, and why


def _slug(values: dict[str, object]) -> str:
    parts = []
    for k, v in values.items():
        text = str(v)
        if k == "finetune":
            text = "yes" if v not in (None, "None", "nan") else "no"
        if k in ("calib_size", "max_length", "seq_len") and isinstance(v, float) and v.is_integer():
            text = str(int(v))
        parts.append(_SLUG_PREFIX.get(k, "") + text)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "__".join(parts)).strip("-")


def _facets(frame: pd.DataFrame, keys: Sequence[str]) -> list[tuple[dict[str, object], pd.DataFrame]]:
    """(values, rows) per combination of ``keys`` that has at least one done run."""
    keys = list(keys)
    if not keys:
        return [({}, frame)]
    out = []
    for vals, sub in frame.groupby(keys, dropna=False, sort=True):
        vals = vals if isinstance(vals, tuple) else (vals,)
        if sub["status"].eq("done").any():
            out.append((dict(zip(keys, vals)), sub))
    return out


def build_report(
    spec: str | Path,
    *,
    results_root: str | Path | None = None,
    out_dir: str | Path | None = None,
    figure_formats: Sequence[str] = ("png", "pdf"),
) -> Report:
    """Write the study's tables and plots; return the comparison tables' Markdown and the paths."""
    from statprune.analysis import plots, tables

    study = resolve_study(spec, results_root)
    frame = load_study(study)
    if frame.empty or not frame["status"].eq("done").any():
        counts = (
            ", ".join(f"{n} {s}" for s, n in frame["status"].value_counts().items())
            if not frame.empty
            else "no records"
        )
        raise StatpruneError(
            f"study {study.name!r} has no finished runs yet ({counts}) in {study.results_dir}; run: statprune sweep {spec}"
        )
    out = Path(out_dir) if out_dir else study.results_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    report = Report(
        study.name, out, "", check=check_study(study, frame, Path(results_root) if results_root else None)
    )
    md_tables: list[str] = []
    index: list[str] = [f"# Study `{study.name}`", "", f"Spec: `{spec}`. Runs: {_counts_text(frame)}.", ""]

    def attempt(what: str, fn):
        try:
            return fn()
        except StatpruneError as e:
            report.skipped.append(f"{what}: {e}")
            return None

    def add_table(t, stem: str, *, stdout: bool = False) -> None:
        report.outputs.append(stem)
        report.paths.extend(write_table(t, out / stem))
        index.extend([t.to_markdown(), ""])
        if stdout:
            md_tables.append(t.to_markdown())

    def add_figure(fig, stem: str, alt: str) -> None:
        report.outputs.append(stem)
        report.paths.extend(plots.save_figure(fig, out / stem, figure_formats))
        index.extend([f"![{alt}]({stem}.png)", ""])

    # settings that vary *within* a model/task split it further; across models they are just part of it
    for (model, task), group in frame.groupby(["model", "task"], sort=True):
        settings = varying_columns(group, SETTING_KEYS)
        for vals, sub in _facets(group, settings):
            slug = _slug({"model": model, "task": task, **vals})
            t = attempt(f"table {slug}", lambda sub=sub: tables.comparison_table(sub))
            if t is not None:
                add_table(t, f"table_{slug}", stdout=True)
            fig = attempt(f"plot {slug}", lambda sub=sub: plots.plot_metric_vs_flops(sub))
            if fig is not None:
                add_figure(fig, f"flops_{slug}", f"metric vs FLOPs kept, {slug}")
            stat = sub[sub["method"].eq("stat")]
            if stat["status"].eq("done").any() and stat["method_label"].nunique() == 1:
                fig = attempt(f"layer heat map {slug}", lambda s=stat: plots.plot_layer_heatmap(s, "stat"))
                if fig is not None:
                    add_figure(fig, f"layers_stat_{slug}", f"where STAT prunes, {slug}")
        if "calib_size" in settings:
            for vals, sub in _facets(group, [k for k in settings if k != "calib_size"]):
                slug = _slug({"model": model, "task": task, **vals})
                for sp, sub_sp in sub.groupby("sparsity", sort=True):
                    t = attempt(f"calibration table {slug} {sp:g}", lambda s=sub_sp: tables.calib_table(s))
                    if t is not None:
                        add_table(t, f"calib_{slug}__s{100 * sp:g}")
                fig = attempt(f"calibration plot {slug}", lambda sub=sub: plots.plot_metric_vs_calib(sub))
                if fig is not None:
                    add_figure(fig, f"calib_{slug}", f"metric vs calibration size, {slug}")

    timed = frame[frame["status"].eq("done") & frame["prune_seconds"].notna()]
    if not timed.empty:
        # per model its largest calibration size and most common dtype: like is compared with like
        keep = timed.groupby("model")["calib_size"].transform("max").eq(timed["calib_size"])
        timed = timed[keep]
        keep = timed.groupby("model")["dtype"].transform(lambda d: d.astype(str).mode().iloc[0])
        timed = timed[timed["dtype"].astype(str).eq(keep)]
        t = attempt("prune-time table", lambda: tables.prune_time_table(timed))
        if t is not None:
            add_table(t, "prune_time")
        if timed["model"].nunique() > 1:
            fig = attempt("prune-time plot", lambda: plots.plot_prune_time_vs_params(timed))
            if fig is not None:
                add_figure(fig, "prune_time", "pruning time vs parameters")

    frame.to_csv(out / "runs.csv", index=False)
    aggregate(frame, CELL_KEYS).to_csv(out / "summary.csv", index=False)
    if report.skipped:
        index += ["## Not drawn", "", *(f"- {s}" for s in report.skipped), ""]
    (out / "index.md").write_text("\n".join(index))
    report.paths += [out / "runs.csv", out / "summary.csv", out / "index.md"]
    report.markdown = "\n".join(md_tables)
    return report


def _counts_text(frame: pd.DataFrame) -> str:
    return ", ".join(f"{n} {s}" for s, n in frame["status"].value_counts().items())
