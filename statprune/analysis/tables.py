"""Paper tables from the run frame: method × sparsity, prune time, calibration-size ablation.

A table is built once as a small cell model (:class:`Table`) and rendered to Markdown (reports, the
README) or LaTeX booktabs (the paper) from the same cells, so both always show the same numbers.
Values are mean ± sample std over seeds of ``done`` runs; the best mean per column is bold (ties at
the displayed precision are all bold); a cell with runs that did not finish carries a dagger and a
footnote, a cell without any finished run says ``failed`` or ``pending`` (running or not yet run),
and a cell the study does not have shows a dash.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from statprune.analysis.records import CELL_KEYS, aggregate, method_of, primary_metric, varying_columns
from statprune.analysis.style import MetricInfo, method_display, method_sort_key, metric_info
from statprune.errors import StatpruneError

DAGGER = "†"


@dataclass(frozen=True)
class Cell:
    """One table entry: ``mean ± std`` (either may be empty), bold flag, a note and a flag mark."""

    mean: str = ""
    std: str = ""
    bold: bool = False
    note: str = ""  # e.g. achieved sparsity, shown small after the value
    flag: str = ""  # e.g. the dagger of an incomplete cell
    text: str = ""  # plain text instead of a number ("failed", "—", a row label)

    def markdown(self) -> str:
        if self.text:
            return self.text + self.flag
        body = f"{self.mean} ± {self.std}" if self.std else self.mean
        if self.bold:
            body = f"**{body}**"
        return body + (f" ({self.note})" if self.note else "") + self.flag

    def latex(self) -> str:
        if self.text:
            return latex_escape(self.text) + _latex_flag(self.flag)
        body = f"{self.mean} \\pm {self.std}" if self.std else self.mean
        body = f"$\\mathbf{{{body}}}$" if self.bold else f"${body}$"
        note = f" {{\\scriptsize ({latex_escape(self.note)})}}" if self.note else ""
        return body + note + _latex_flag(self.flag)


@dataclass(frozen=True)
class Table:
    """Header + body rows of cells; ``rule_after`` lists body rows followed by a mid rule."""

    title: str
    caption: str
    header: list[str]
    rows: list[list[Cell]]
    rule_after: tuple[int, ...] = ()
    footnotes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        lines = [f"**{self.title}.** {self.caption}", ""]
        lines.append("| " + " | ".join(self.header) + " |")
        lines.append("|" + "|".join([":--"] + ["--:"] * (len(self.header) - 1)) + "|")
        lines += ["| " + " | ".join(c.markdown() for c in row) + " |" for row in self.rows]
        if self.footnotes:
            lines += ["", *self.footnotes]
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``); caption as a comment to copy."""
        ncol = len(self.header)
        lines = [f"% {self.title}. {self.caption}", f"\\begin{{tabular}}{{l{'r' * (ncol - 1)}}}", "\\toprule"]
        lines.append(" & ".join(latex_escape(h) for h in self.header) + " \\\\")
        lines.append("\\midrule")
        for i, row in enumerate(self.rows):
            lines.append(" & ".join(c.latex() for c in row) + " \\\\")
            if i in self.rule_after:
                lines.append("\\midrule")
        lines.append("\\bottomrule")
        for note in self.footnotes:
            lines.append(f"\\multicolumn{{{ncol}}}{{l}}{{\\footnotesize {latex_escape(note)}}} \\\\")
        lines.append("\\end{tabular}")
        return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "—": "---",
    "–": "--",
    "×": r"$\times$",
    "ρ": r"$\rho$",
    DAGGER: r"$^\dagger$",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _latex_flag(flag: str) -> str:
    return r"$^\dagger$" if flag == DAGGER else latex_escape(flag)


# --------------------------------------------------------------------------- number formatting


def decimals_for(value: float) -> int:
    """2 decimals below 100, 1 below 1000, none above (perplexities of collapsed models)."""
    a = abs(value)
    return 2 if a < 100 else 1 if a < 1000 else 0


def fmt(value: float, decimals: int) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.{decimals}f}"


def pct(fraction: float, decimals: int = 1) -> str:
    return f"{100 * fraction:.{decimals}f}%"


def _sparsity_header(s: float) -> str:
    return f"{100 * s:g}%"


def _params_text(n: float) -> str:
    if math.isnan(n):
        return "?"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


# --------------------------------------------------------------------------- shared cell logic


def _value_cells(agg: pd.DataFrame, col: str, scale: float, higher_is_better: bool) -> dict[int, Cell]:
    """Cells of one column of aggregated rows (index → cell) with the best mean bold."""
    cells: dict[int, Cell] = {}
    means = {i: r[f"{col}.mean"] * scale for i, r in agg.iterrows() if r["n"] > 0}
    best = None
    if means:
        best_val = max(means.values()) if higher_is_better else min(means.values())
        best = fmt(best_val, decimals_for(best_val))
    for i, r in agg.iterrows():
        if r["n"] == 0:  # nothing to average: say why instead of a number
            cells[i] = Cell(text="failed" if r["n_failed"] else "pending")
            continue
        flag = DAGGER if (r["n_failed"] + r["n_other"]) > 0 else ""
        m = means[i]
        d = decimals_for(m)
        std = r[f"{col}.std"] * scale
        mean_text = fmt(m, d)
        cells[i] = Cell(mean=mean_text, std=fmt(std, d), bold=mean_text == best, flag=flag)
    return cells


def _incomplete_note(agg: pd.DataFrame) -> list[str]:
    """The footnote of the dagger: cells averaged over fewer runs than the study asked for."""
    bad = agg[(agg["n"] > 0) & ((agg["n_failed"] + agg["n_other"]) > 0)]
    if bad.empty:
        return []
    failed, other = int(bad["n_failed"].sum()), int(bad["n_other"].sum())
    parts = [f"{failed} failed"] if failed else []
    parts += [f"{other} pending"] if other else []
    return [
        f"{DAGGER} some runs of this cell did not finish ({', '.join(parts)}); mean over the finished ones."
    ]


def _require_single(frame: pd.DataFrame, what: str, keys: Sequence[str]) -> None:
    varying = varying_columns(frame, keys)
    if varying:
        vals = "; ".join(f"{k}: {', '.join(sorted(frame[k].astype(str).unique()))}" for k in varying)
        raise StatpruneError(
            f"{what} needs one value of {', '.join(varying)} (found {vals}); filter the runs first"
        )


def _methods(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(label, base method) pairs in table order."""
    pairs = method_of(frame)
    return sorted(pairs.items(), key=lambda lm: method_sort_key(*lm))


def _dense_value(frame: pd.DataFrame, metric: str) -> float:
    col = f"dense.{metric}"
    return float(frame[col].dropna().iloc[0]) if col in frame and frame[col].notna().any() else math.nan


def _metric_phrase(info: MetricInfo) -> str:
    direction = "higher" if info.higher_is_better else "lower"
    return (
        f"{info.display} ({info.unit}; {direction} is better)"
        if info.unit
        else f"{info.display} ({direction} is better)"
    )


def _seeds_phrase(frame: pd.DataFrame) -> str:
    """How many seeds a cell averages; says so per method when methods ran different numbers."""
    done = frame[frame["status"].eq("done")]
    per = done.groupby("method_label")["seed"].nunique() if "method_label" in done else pd.Series()
    n = done["seed"].nunique()
    if n <= 1:
        return "single seed"
    if per.nunique() > 1:
        many = ", ".join(method_display(m, m) for m in sorted(per[per > 1].index))
        return f"mean ± std over {per.max()} seeds for {many} (cells with ±), single seed otherwise"
    return f"mean ± std over {n} seeds"


def _title(frame: pd.DataFrame) -> str:
    parts = []
    for key in ("model", "task"):
        vals = sorted(frame[key].dropna().astype(str).unique())
        if vals:
            parts.append(", ".join(vals))
    return " · ".join(parts)


def _calib_phrase(agg: pd.DataFrame, methods: list[tuple[str, str]]) -> str:
    """``; 512 calibration examples``, or per method where they differ (Kwon at its own 2048)."""
    per = agg.dropna(subset=["calib_size"]).groupby("method_label")["calib_size"].first().astype(int)
    if per.empty:
        return ""
    common = int(per.mode().iloc[0])
    others = [f"{method_display(m, b)}: {per[m]}" for m, b in methods if m in per and per[m] != common]
    return f"; {common} calibration examples" + (f" ({', '.join(others)})" if others else "")


# --------------------------------------------------------------------------- the tables

_FACET_KEYS = tuple(k for k in CELL_KEYS if k not in ("method", "method_label", "sparsity"))


def comparison_table(frame: pd.DataFrame, metric: str | None = None) -> Table:
    """Method × target sparsity: metric mean ± std over seeds, achieved sparsity, best bold.

    ``frame`` holds the runs of one model/task/calibration setting (a :func:`records.load_records`
    frame, filtered); one row per method label, one column per target sparsity, a dense row on top.
    """
    _require_single(frame, "a comparison table", tuple(k for k in _FACET_KEYS if k != "calib_size"))
    for label, runs in frame.groupby("method_label"):
        _require_single(runs, f"a comparison table ({label})", ("calib_size",))
    metric = metric or primary_metric(frame)
    info = metric_info(metric)
    agg = aggregate(frame)
    sparsities = sorted(agg["sparsity"].dropna().unique())
    methods = _methods(agg)
    dense = _dense_value(frame, metric) * info.scale
    rows: list[list[Cell]] = []
    if not math.isnan(dense):
        d = fmt(dense, decimals_for(dense))
        rows.append([Cell(text="Dense")] + [Cell(mean=d) for _ in sparsities])
    body: dict[tuple[str, float], Cell] = {}
    for s in sparsities:
        col = agg[agg["sparsity"] == s]
        cells = _value_cells(col, f"metric.{metric}", info.scale, info.higher_is_better)
        for i, r in col.iterrows():
            c = cells[i]
            if r["n"] > 0:
                c = Cell(c.mean, c.std, c.bold, note=pct(r["sparsity_achieved.mean"]), flag=c.flag)
            body[(r["method_label"], s)] = c
    for m, base in methods:
        rows.append(
            [Cell(text=method_display(m, base))] + [body.get((m, s), Cell(text="—")) for s in sparsities]
        )
    caption = (
        f"{_metric_phrase(info)}, {_seeds_phrase(frame)}{_calib_phrase(agg, methods)}. "
        f"Columns: target sparsity (fraction of "
        f"prunable FLOPs removed); in parentheses the achieved sparsity. Bold: best per column."
    )
    return Table(
        title=_title(frame),
        caption=caption,
        header=["Method", *(_sparsity_header(s) for s in sparsities)],
        rows=rows,
        rule_after=(0,) if not math.isnan(dense) else (),
        footnotes=_incomplete_note(agg),
    )


def prune_time_table(frame: pd.DataFrame) -> Table:
    """Method × model: wall-clock pruning seconds (mean ± std over all runs of the pair).

    Models are ordered by parameter count and labelled with it; fastest per column bold. Each
    model's runs must share one calibration size and dtype (models may differ: a decoder is often
    calibrated on fewer, longer windows), so a column never mixes settings.
    """
    for model, runs in frame.groupby("model"):
        _require_single(runs, f"a prune-time table ({model})", ("calib_size", "dtype"))
    agg = aggregate(frame, keys=("model", "method", "method_label"))
    params = agg.groupby("model")["params_dense.mean"].max().sort_values()
    models = list(params.index)
    methods = _methods(agg)
    body: dict[tuple[str, str], Cell] = {}
    for model in models:
        col = agg[agg["model"] == model]
        cells = _value_cells(col, "prune_seconds", 1.0, higher_is_better=False)
        for i, r in col.iterrows():
            body[(r["method_label"], model)] = cells[i]
    rows = [
        [Cell(text=method_display(m, base))] + [body.get((m, md), Cell(text="—")) for md in models]
        for m, base in methods
    ]
    header = ["Method", *(f"{md} ({_params_text(params[md])})" for md in models)]
    devices = ", ".join(sorted(set(frame["device"].dropna().astype(str)) - {"auto"}))
    sizes = frame.groupby("model")["calib_size"].first().dropna().astype(int)
    if sizes.nunique() > 1:
        calib = "; calibration examples: " + ", ".join(f"{sizes[m]} ({m})" for m in models if m in sizes)
    else:
        calib = "".join(f"; {n} calibration examples" for n in sizes.unique())
    caption = (
        f"Pruning time in seconds (wall clock, excluding model loading and evaluation), mean ± std over "
        f"all sparsities and seeds{calib}"
        f"{f'; device: {devices}' if devices else ''}. Columns: model (parameters). Bold: fastest."
    )
    return Table("Pruning time", caption, header, rows, footnotes=_incomplete_note(agg))


def calib_table(frame: pd.DataFrame, metric: str | None = None) -> Table:
    """Method × calibration-set size at one sparsity: metric mean ± std, best per column bold."""
    _require_single(
        frame, "a calibration-size table", (*(k for k in _FACET_KEYS if k != "calib_size"), "sparsity")
    )
    metric = metric or primary_metric(frame)
    info = metric_info(metric)
    agg = aggregate(frame)
    sizes = sorted(agg["calib_size"].dropna().unique())
    methods = _methods(agg)
    body: dict[tuple[str, float], Cell] = {}
    for n in sizes:
        col = agg[agg["calib_size"] == n]
        cells = _value_cells(col, f"metric.{metric}", info.scale, info.higher_is_better)
        for i, r in col.iterrows():
            body[(r["method_label"], n)] = cells[i]
    rows = [
        [Cell(text=method_display(m, base))] + [body.get((m, n), Cell(text="—")) for n in sizes]
        for m, base in methods
    ]
    dense = _dense_value(frame, metric) * info.scale
    sparsity = frame["sparsity"].dropna().iloc[0]
    caption = (
        f"{_metric_phrase(info)} at target sparsity {_sparsity_header(sparsity)}, {_seeds_phrase(frame)}"
        f"{f'; dense {fmt(dense, decimals_for(dense))}' if not math.isnan(dense) else ''}. "
        f"Columns: number of calibration examples. Bold: best per column."
    )
    header = ["Method", *(str(int(n)) for n in sizes)]
    return Table(_title(frame), caption, header, rows, footnotes=_incomplete_note(agg))
