"""Paper figures from the run frame; each function returns a matplotlib ``Figure``.

Figures are built with ``matplotlib.figure.Figure`` (Agg canvas), never through pyplot: no global
figure registry, no interactive backend, safe in worker processes and tests, and a test can read
the drawn data back from the returned object. One style for all (:func:`paper_style`): 9 pt text at
one-column width (3.4 in), TrueType fonts in PDFs, the legend outside the axes so it never covers
data, and per method the colour/marker of :mod:`statprune.analysis.style`.

Every data series is an ``errorbar`` container labelled with the method's display name, so
``ax.containers`` lists one entry per method; the dense reference is a dashed black line.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import (
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
    NullLocator,
    PercentFormatter,
)

from statprune.analysis.records import CELL_KEYS, aggregate, method_of, primary_metric, varying_columns
from statprune.analysis.style import (
    DENSE_COLOR,
    VARIANT_LINESTYLES,
    method_display,
    method_sort_key,
    method_style,
    metric_info,
)
from statprune.errors import StatpruneError

# matplotlib's PDF backend subsets fonts through fontTools, which logs every glyph at INFO
logging.getLogger("fontTools").setLevel(logging.WARNING)

COLUMN_WIDTH_IN = 3.4  # one column of a two-column paper
FULL_WIDTH_IN = 7.0
PANEL_HEIGHT_IN = 2.5

PAPER_RC = {
    "font.size": 9,
    "axes.labelsize": 9,
    "axes.titlesize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "lines.linewidth": 1.5,
    "lines.markersize": 5,
    "errorbar.capsize": 2,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "pdf.fonttype": 42,  # TrueType in PDFs (venues reject Type 3)
    "ps.fonttype": 42,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
}


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    with mpl.rc_context(PAPER_RC):
        yield


def new_figure(
    ncols: int = 1, nrows: int = 1, *, width: float | None = None, height: float | None = None
) -> tuple[Figure, list[Axes]]:
    """A constrained-layout figure with ``nrows × ncols`` axes (flattened), built under the style."""
    if width is None:
        width = min(COLUMN_WIDTH_IN * ncols, FULL_WIDTH_IN)
    fig = Figure(figsize=(width, height or PANEL_HEIGHT_IN * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, list(axes.flat)


def save_figure(fig: Figure, stem: str | Path, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write ``stem.<fmt>`` for each format; metadata without dates/versions so reruns are byte-stable."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in formats:
        path = stem.parent / f"{stem.name}.{ext}"  # not with_suffix: ids may contain dots
        meta = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None}}
        with paper_style():
            fig.savefig(path, format=ext, metadata=meta.get(ext))
        out.append(path)
    return out


# --------------------------------------------------------------------------- helpers


def _series(frame: pd.DataFrame) -> list[tuple[str, dict]]:
    """(label, errorbar style) per method label in legend order: colour and marker of the base
    method; variants of one method (several labels) differ by line style."""
    out = []
    seen: dict[str, int] = {}
    for label, base in sorted(method_of(frame).items(), key=lambda lm: method_sort_key(*lm)):
        k = seen.get(base, 0)
        seen[base] = k + 1
        st = method_style(base)
        style = {
            "color": st.color,
            "marker": st.marker,
            "linestyle": VARIANT_LINESTYLES[k % len(VARIANT_LINESTYLES)],
            "label": method_display(label, base),
        }
        out.append((label, style))
    return out


def _errorbar(ax: Axes, x, y, yerr, style: dict) -> None:
    yerr = np.nan_to_num(np.asarray(yerr, dtype=float), nan=0.0)
    ax.errorbar(
        np.asarray(x, dtype=float), np.asarray(y, dtype=float), yerr=yerr if yerr.any() else None, **style
    )


def _dense_line(ax: Axes, value: float, label: str = "Dense") -> None:
    if not math.isnan(value):
        ax.axhline(value, color=DENSE_COLOR, linestyle="--", linewidth=1.0, label=label, zorder=1)


def _legend(fig: Figure, axes: Sequence[Axes]) -> None:
    """One legend above all panels (outside the axes, so it never hides data); methods, then dense."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    order = sorted(range(len(labels)), key=lambda i: labels[i] == "Dense")
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    if handles:
        fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 4))


def _facet_check(frame: pd.DataFrame, what: str, free: Sequence[str]) -> None:
    keys = [k for k in CELL_KEYS if k not in ("method", "method_label", *free)]
    varying = varying_columns(frame, keys)
    if varying:
        raise StatpruneError(f"{what}: runs differ in {', '.join(varying)}; filter them to one value each")


def _require_runs(frame: pd.DataFrame, what: str) -> None:
    if frame.empty or not frame["status"].eq("done").any():
        raise StatpruneError(f"{what}: no finished runs in this selection")


def _dense(agg: pd.DataFrame, metric: str) -> float:
    col = f"dense.{metric}"
    return float(agg[col].dropna().iloc[0]) if col in agg and agg[col].notna().any() else math.nan


def _apply_metric_axis(ax: Axes, metric: str) -> None:
    """Label the metric axis; log scale where the metric spans decades (perplexity). Call after drawing."""
    info = metric_info(metric)
    ax.set_ylabel(info.label())
    if info.log_scale:
        ax.set_yscale("log")
        _log_ticks(ax.yaxis, *ax.get_ylim())


def _log_ticks(axis, lo: float, hi: float) -> None:
    """Readable plain-number ticks on a log axis, also when the data span less than a decade."""
    ratio = hi / lo if lo > 0 else math.inf
    if ratio < 3:  # within a factor of 3 a log axis has no labelled decade: use round linear steps
        axis.set_major_locator(MaxNLocator(nbins=4))
    elif ratio < 30:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    else:
        axis.set_major_locator(LogLocator(base=10))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _short_model(model: str) -> str:
    return model.removeprefix("random:") + (" (rand.)" if model.startswith("random:") else "")


def _panel_title(model: str, task: str) -> str:
    return f"{_short_model(model)} · {task}"


# --------------------------------------------------------------------------- figures


def plot_metric_vs_flops(frame: pd.DataFrame, metric: str | None = None) -> Figure:
    """Metric vs achieved FLOPs kept (%), one line per method with error bars over seeds.

    One panel per (model, task) in ``frame``, each with its task's primary metric unless ``metric``
    is given; the dense model is a dashed line and a star at 100%.
    """
    _require_runs(frame, "metric vs FLOPs")
    for (model, task), runs in frame.groupby(["model", "task"]):  # each panel compares like with like
        _facet_check(runs, f"metric vs FLOPs ({model} · {task})", free=("sparsity", "seq_len"))
    agg = aggregate(frame)
    agg = agg[agg["n"] > 0]
    pairs = sorted(agg[["model", "task"]].drop_duplicates().itertuples(index=False, name=None))
    with paper_style():
        fig, axes = new_figure(ncols=len(pairs))
        series = _series(agg)
        for ax, (model, task) in zip(axes, pairs):
            runs = frame[(frame["model"] == model) & (frame["task"] == task)]
            m = metric or primary_metric(runs)
            info = metric_info(m)
            sub = agg[(agg["model"] == model) & (agg["task"] == task)]
            for label, style in series:
                s = sub[sub["method_label"] == label].sort_values("flops_kept.mean")
                if s.empty:
                    continue
                y, err = info.scale * s[f"metric.{m}.mean"], info.scale * s[f"metric.{m}.std"]
                _errorbar(ax, 100 * s["flops_kept.mean"], y, err, style)
            dense = info.scale * _dense(sub, m)
            _dense_line(ax, dense)
            if not math.isnan(dense):
                ax.plot(
                    [100], [dense], marker="*", markersize=9, color=DENSE_COLOR, linestyle="none", zorder=3
                )
            ax.set_xlabel("FLOPs kept (%, achieved)")
            ax.xaxis.set_major_formatter(PercentFormatter(decimals=0))
            lo = 100 * sub["flops_kept.mean"].min()
            ax.set_xlim(max(0.0, lo - 5), 103)
            _apply_metric_axis(ax, m)
            if len(pairs) > 1:
                ax.set_title(_panel_title(model, task))
        _legend(fig, axes)
    return fig


def plot_metric_vs_calib(frame: pd.DataFrame, metric: str | None = None) -> Figure:
    """Metric vs number of calibration examples (log₂ axis), one panel per target sparsity."""
    _require_runs(frame, "metric vs calibration size")
    _facet_check(frame, "metric vs calibration size", free=("calib_size", "sparsity"))
    metric = metric or primary_metric(frame)
    info = metric_info(metric)
    agg = aggregate(frame)
    agg = agg[agg["n"] > 0]
    sparsities = sorted(agg["sparsity"].unique())
    sizes = sorted(agg["calib_size"].dropna().unique())
    with paper_style():
        fig, axes = new_figure(ncols=len(sparsities))
        series = _series(agg)
        for ax, sp in zip(axes, sparsities):
            sub = agg[agg["sparsity"] == sp]
            for label, style in series:
                s = sub[sub["method_label"] == label].sort_values("calib_size")
                if s.empty:
                    continue
                _errorbar(
                    ax,
                    s["calib_size"],
                    info.scale * s[f"metric.{metric}.mean"],
                    info.scale * s[f"metric.{metric}.std"],
                    style,
                )
            _dense_line(ax, info.scale * _dense(sub, metric))
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("Calibration examples")
            _apply_metric_axis(ax, metric)
            ax.set_title(f"sparsity {100 * sp:g}%")
        _legend(fig, axes)
    return fig


def _params_label(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def plot_prune_time_vs_params(frame: pd.DataFrame) -> Figure:
    """Pruning wall-clock seconds vs model parameters (log–log), one line per method.

    Each point is the mean ± std over all runs of a (method, model) pair; x ticks name the models.
    """
    _require_runs(frame, "prune time vs parameters")
    agg = aggregate(frame, keys=("model", "method", "method_label"))
    agg = agg[agg["n"] > 0]
    models = agg.groupby("model")["params_dense.mean"].max().sort_values()
    with paper_style():
        fig, (ax,) = new_figure(height=PANEL_HEIGHT_IN + 0.2)
        for label, style in _series(agg):
            s = agg[agg["method_label"] == label].sort_values("params_dense.mean")
            _errorbar(ax, s["params_dense.mean"], s["prune_seconds.mean"], s["prune_seconds.std"], style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(list(models.values))
        ax.set_xticklabels([f"{_short_model(m)}\n{_params_label(p)}" for m, p in models.items()], fontsize=7)
        ax.xaxis.set_minor_locator(NullLocator())
        _log_ticks(ax.yaxis, *ax.get_ylim())
        span = models.values.max() / models.values.min() if len(models) else 1.0
        pad = span**0.08 if span > 1 else 2.0
        ax.set_xlim(models.values.min() / pad, models.values.max() * pad)
        ax.set_xlabel("Model (parameters)")
        ax.set_ylabel("Pruning time (s)")
        _legend(fig, [ax])
    return fig


def plot_layer_heatmap(frame: pd.DataFrame, method: str = "stat") -> Figure:
    """Where does a method prune? Fraction of heads and of FFN neurons kept, per layer × sparsity.

    Two panels (attention heads, FFN neurons); rows are target sparsities, columns layers; the
    colour is the percent kept (mean over seeds), annotated with the number when the grid is small.
    """
    runs = frame[(frame["method"] == method) & frame["status"].eq("done") & frame["layer_heads"].notna()]
    if runs.empty:
        raise StatpruneError(
            f"layer heat map: no finished {method!r} run with per-layer shapes in this selection"
        )
    _facet_check(runs, "layer heat map", free=("sparsity",))
    sparsities = sorted(runs["sparsity"].unique())
    grids = {}
    for kind in ("heads", "neurons"):
        rows = []
        for sp in sparsities:
            sub = runs[runs["sparsity"] == sp]
            kept = np.array(sub[f"layer_{kind}"].tolist(), dtype=float)
            dense = np.array(sub[f"layer_{kind}_dense"].tolist(), dtype=float)
            rows.append(100.0 * (kept / dense).mean(axis=0))
        grids[kind] = np.array(rows)
    n_layers = grids["heads"].shape[1]
    annotate = n_layers <= 12 and len(sparsities) <= 8
    with paper_style():
        height = 0.75 + 0.3 * max(len(sparsities), 2)
        fig, axes = new_figure(
            ncols=1, nrows=2, width=COLUMN_WIDTH_IN if n_layers <= 12 else FULL_WIDTH_IN, height=2 * height
        )
        cmap = mpl.colormaps["viridis"]
        for ax, kind, title in zip(axes, ("heads", "neurons"), ("Attention heads kept", "FFN neurons kept")):
            img = ax.imshow(
                grids[kind],
                aspect="auto",
                cmap=cmap,
                vmin=0,
                vmax=100,
                origin="upper",
                interpolation="nearest",
            )
            ax.set_title(title)
            ax.set_yticks(range(len(sparsities)), [f"{100 * s:g}%" for s in sparsities])
            ax.set_xticks(
                range(n_layers),
                [str(i) for i in range(n_layers)]
                if n_layers <= 16
                else [str(i) if i % 2 == 0 else "" for i in range(n_layers)],
            )
            ax.set_ylabel("Sparsity")
            ax.grid(False)
            if annotate:
                for (r, c), v in np.ndenumerate(grids[kind]):
                    ax.text(
                        c,
                        r,
                        f"{v:.0f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if v < 60 else "black",
                    )
        axes[-1].set_xlabel("Layer")
        fig.colorbar(img, ax=axes, label="Kept (%)", shrink=0.9)
        model = runs["model"].iloc[0]
        fig.suptitle(
            f"{method_display(method)} on {_short_model(model)} · {runs['task'].iloc[0]}", fontsize=9
        )
    return fig
