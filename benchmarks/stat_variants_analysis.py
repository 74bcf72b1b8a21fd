"""STAT variants on SmolLM2-135M / sotu (issue 15), from the run records alone (no model is run).

1. where the former default (``stat-share``: ``error_norm=residual allocation=share``) and the paper's
   rule (``stat-reference``) prune:
   per-layer kept fraction of attention (query heads kept / dense = KV groups kept / 3) and of FFN
   neurons, test-split runs, one panel per sparsity → ``docs/figures/stat_variants_layers.png``;
2. does STAT's own predicted output error (``prune.diagnostics.predicted_error``) rank the measured
   perplexity increase (ppl / dense − 1)? Spearman ρ over the variants, per sparsity and pooled, dev
   and test;
3. prune seconds per variant (the runs shared one GPU, 8 at a time: comparable only within the table).

    python benchmarks/stat_variants_analysis.py [--records results/published/smollm2_stat_variants]
    python benchmarks/stat_variants_analysis.py --records results/published/smollm2_stat_variants \
        results/published/smollm2_stat_loss --variants stat-share stat-reference stat-loss-greedy \
        --figure docs/figures/stat_loss_layers.png --out benchmarks/results/stat_loss_analysis.json

Prints Markdown tables; writes the numbers and the command to
``benchmarks/results/stat_variants_analysis.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from statprune.analysis.plots import new_figure, paper_style, save_figure
from statprune.analysis.records import load_records
from statprune.errors import StatpruneError
from statprune.io import write_json_atomic
from statprune.provenance import provenance

# the predicted error is on the `residual` scale unless another error normalisation was used, and
# covers the whole budget unless rounds > 1 (the last round's curves only)
SCALE = "residual"


def variant_of(name: str) -> str:
    """The spec label of a run: its record name up to the model (``stat-exact-heads-smollm2-…``)."""
    return name.split("-smollm2")[0]


def load_variants(*folders: str | Path) -> pd.DataFrame:
    """Done runs of the studies (a run in several, by run id, once), with ``variant``,
    ``predicted_error`` and ``ppl_increase`` columns."""
    frame = pd.concat([load_records(f) for f in folders], ignore_index=True)
    frame = frame[frame["status"].eq("done")].drop_duplicates("run_id").copy()
    if frame.empty:
        raise StatpruneError(f"no finished run records in {', '.join(map(str, folders))}")
    frame["variant"] = frame["name"].map(variant_of)
    frame["ppl_increase"] = frame["metric.perplexity"] / frame["dense.perplexity"] - 1.0
    options = frame["method_options"].map(json.loads)
    norms = [error_norm_used(path, o) for path, o in zip(frame["path"], options)]
    frame["same_scale"] = [n == SCALE and o.get("rounds", 1) == 1 for n, o in zip(norms, options)]
    return frame.reset_index(drop=True)


def error_norm_used(path: str | Path, options: dict) -> str:
    """The error normalisation a run used: what ``auto`` became (``diagnostics.auto_options``), else
    the resolved options, else the spec's (records made before either field: ``residual``)."""
    rec = json.loads(Path(path).read_text())
    auto = ((rec.get("prune") or {}).get("diagnostics") or {}).get("auto_options") or {}
    resolved = rec.get("method_options_resolved") or {}
    return auto.get("error_norm") or resolved.get("error_norm") or options.get("error_norm", SCALE)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman ρ: Pearson correlation of the ranks (ties get their average rank)."""
    rx, ry = pd.Series(list(x), dtype=float).rank(), pd.Series(list(y), dtype=float).rank()
    return float(rx.corr(ry)) if len(rx) > 2 else math.nan


def rank_correlations(frame: pd.DataFrame) -> list[dict]:
    """ρ(predicted error, perplexity increase) per split × (each sparsity, pooled) × (all variants,
    only those whose predicted error is on the default's scale)."""
    rows = []
    for split in sorted(frame["eval_split"].unique()):
        runs = frame[frame["eval_split"].eq(split)]
        for subset, sel in (("all", runs), ("same scale", runs[runs["same_scale"]])):
            groups = [(f"{s:.0%}", g) for s, g in sel.groupby("sparsity")] + [("pooled", sel)]
            for sparsity, g in groups:
                rho = spearman(g["predicted_error"], g["ppl_increase"])
                rows.append(
                    {"split": split, "variants": subset, "sparsity": sparsity, "n": len(g), "spearman": rho}
                )
    return rows


def layer_fractions(frame: pd.DataFrame, variants: Sequence[str], split: str = "test") -> list[dict]:
    """Per-layer kept fractions (attention, FFN) of ``variants`` at each sparsity of ``split``."""
    out = []
    runs = frame[frame["eval_split"].eq(split) & frame["variant"].isin(variants)]
    for _, r in runs.sort_values(["sparsity", "variant"]).iterrows():
        out.append(
            {
                "variant": r["variant"],
                "sparsity": float(r["sparsity"]),
                "attention": [k / d for k, d in zip(r["layer_heads"], r["layer_heads_dense"])],
                "ffn": [k / d for k, d in zip(r["layer_neurons"], r["layer_neurons_dense"])],
                "perplexity": float(r["metric.perplexity"]),
            }
        )
    return out


def plot_layers(fractions: list[dict], path: str | Path, dense_ppl: float | None = None) -> Path:
    """Two rows (attention, FFN) × one column per sparsity; one line per variant, legend below."""
    sparsities = sorted({f["sparsity"] for f in fractions})
    variants = list(dict.fromkeys(f["variant"] for f in fractions))
    marks = ({"color": "C0", "marker": "o"}, {"color": "C3", "marker": "s"}, {"color": "C2", "marker": "^"})
    styles = dict(zip(variants, marks))
    rows = (("attention", "attention kept\n(KV groups / 3)"), ("ffn", "FFN neurons kept"))
    with paper_style():
        fig, axes = new_figure(ncols=len(sparsities), nrows=2, width=7.0, height=4.4)
        for col, s in enumerate(sparsities):
            runs = [f for v in variants for f in fractions if (f["variant"], f["sparsity"]) == (v, s)]
            ppl = " vs ".join(f"{f['perplexity']:.1f}" for f in runs)
            for row, (key, ylabel) in enumerate(rows):
                ax = axes[row * len(sparsities) + col]
                for f in runs:
                    layers = range(len(f[key]))
                    ax.plot(layers, f[key], ms=3, lw=1, label=f["variant"], **styles.get(f["variant"], {}))
                ax.set_ylim(0, 1.05)
                ax.set_xticks(range(0, len(f[key]), 5))
                if row == 0:
                    ax.set_title(f"{s:.0%} of FLOPs removed\ntest ppl: {ppl}")
                else:
                    ax.set_xlabel("layer")
                if col == 0:
                    ax.set_ylabel(ylabel)
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=len(variants))
        dense = f" (dense test ppl {dense_ppl:.2f})" if dense_ppl else ""
        fig.suptitle(f"SmolLM2-135M / sotu, per-layer kept fraction: {' vs '.join(variants)}{dense}")
    return save_figure(fig, Path(path).with_suffix(""), formats=("png",))[0]


def prune_times(frame: pd.DataFrame) -> list[dict]:
    """Prune seconds per variant: mean over all its runs, and per split."""
    rows = []
    for v, g in frame.groupby("variant", sort=False):
        rows.append(
            {
                "variant": v,
                "n": len(g),
                "mean": float(g["prune_seconds"].mean()),
                **{f"mean_{s}": float(x["prune_seconds"].mean()) for s, x in g.groupby("eval_split")},
                "min": float(g["prune_seconds"].min()),
                "max": float(g["prune_seconds"].max()),
            }
        )
    return sorted(rows, key=lambda r: r["mean"])


def markdown_correlations(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(r["sparsity"] for r in rows))
    lines = [f"| split | variants | {' | '.join(cols)} |", "|---|---|" + "---:|" * len(cols)]
    for (split, subset), _ in pd.DataFrame(rows).groupby(["split", "variants"], sort=False):
        cells = [
            next(r for r in rows if (r["split"], r["variants"], r["sparsity"]) == (split, subset, c))
            for c in cols
        ]
        lines.append(
            f"| {split} | {subset} | "
            + " | ".join(f"{c['spearman']:+.2f} (n={c['n']})" for c in cells)
            + " |"
        )
    return "\n".join(lines)


def markdown_times(rows: list[dict]) -> str:
    splits = sorted({k.removeprefix("mean_") for r in rows for k in r if k.startswith("mean_")})
    lines = [
        f"| variant | runs | mean s | {' | '.join(f'mean s ({s})' for s in splits)} | min–max s |",
        "|---|---:|---:|" + "---:|" * len(splits) + "---:|",
    ]
    for r in rows:
        per = " | ".join(f"{r.get(f'mean_{s}', math.nan):.1f}" for s in splits)
        lines.append(
            f"| {r['variant']} | {r['n']} | {r['mean']:.1f} | {per} | {r['min']:.0f}–{r['max']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", nargs="+", default=["results/published/smollm2_stat_variants"])
    ap.add_argument("--variants", nargs="+", default=["stat-share", "stat-reference"], help="in the figure")
    ap.add_argument("--figure", default="docs/figures/stat_variants_layers.png")
    ap.add_argument("--out", default="benchmarks/results/stat_variants_analysis.json")
    args = ap.parse_args(argv)
    frame = load_variants(*args.records)
    fractions = layer_fractions(frame, args.variants)
    if not fractions:
        raise StatpruneError(f"no test-split runs of {args.variants} in {args.records}")
    test = frame[frame["eval_split"].eq("test")]
    figure = plot_layers(
        fractions, args.figure, float(test["dense.perplexity"].mean()) if len(test) else None
    )
    corr, times = rank_correlations(frame), prune_times(frame)
    print(
        "Spearman ρ(predicted error, measured ppl/dense − 1); 'same scale' keeps the runs whose errors",
        f"were normalised by {SCALE!r}, in one round\n",
    )
    print(markdown_correlations(corr) + "\n")
    print("Prune seconds (the runs shared one GPU, 8 at a time)\n")
    print(markdown_times(times))
    print(f"\nfigure: {figure}")
    command = shlex.join(["python", "benchmarks/stat_variants_analysis.py", *(argv or sys.argv[1:])])
    record = {
        "command": command,
        "records": [str(r) for r in args.records],
        "runs": len(frame),
        "figure": str(figure),
        "rank_correlation": corr,
        "prune_seconds": times,
        "layer_fractions": fractions,
        "runs_table": frame[
            [
                "variant",
                "eval_split",
                "sparsity",
                "metric.perplexity",
                "dense.perplexity",
                "ppl_increase",
                "predicted_error",
                "prune_seconds",
            ]
        ].to_dict("records"),
        **provenance(),
    }
    write_json_atomic(args.out, record)
    return record


if __name__ == "__main__":
    main()
