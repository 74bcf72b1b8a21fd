"""Does STAT's loss-weighted predicted error foretell the measured loss increase? (issue 15)

Under ``error_norm=loss`` (the decoder default since 2026-12-01) a run's
``prune.diagnostics.predicted_error`` is Σ over the pruned sub-blocks of Σ_d g[d]·‖E[:, d]‖², E the
output error on the calibration tokens and g the mean squared loss gradient there
(statprune/stat/loss_weights.py): loss units summed over the calibration tokens. Divided by the
number of calibration tokens it is a per-token prediction, to set beside the measured increase of
the mean next-token loss (pruned nll − dense nll, on the scored split). No model is run.

    python benchmarks/loss_prediction.py                  # the published SmolLM2 studies
    python benchmarks/loss_prediction.py --records results/published/calib_ablation_smollm2

Prints a table (means over seeds) and Spearman's ρ over the runs; writes
``benchmarks/results/loss_prediction.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from statistics import mean

from statprune.errors import StatpruneError
from statprune.io import write_json_atomic
from statprune.provenance import provenance

_HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("stat_variants_analysis", _HERE / "stat_variants_analysis.py")
_sva = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sva)
spearman, error_norm_used = _sva.spearman, _sva.error_norm_used

ENOUGH = 64  # calibration windows from which the calibration-size study's means plateau (README)
DEFAULT_RECORDS = [
    "results/published/smollm2_sotu",
    "results/published/calib_ablation_smollm2",
    "results/published/smollm2_stat_loss",
    "results/published/smollm2_moby",
]


def loss_runs(folders: Sequence[str | Path]) -> list[dict]:
    """One row per done STAT run (each run id once) that used ``error_norm=loss``, one round."""
    rows, seen = [], set()
    for folder in folders:
        for path in sorted(Path(folder).glob("*.json")):
            rec = json.loads(path.read_text())
            cfg = rec.get("config") or {}
            if rec.get("status") != "done" or cfg.get("method") != "stat" or rec.get("run_id") in seen:
                continue
            options = cfg.get("method_options") or {}
            if error_norm_used(path, options) != "loss" or options.get("rounds", 1) != 1:
                continue
            seen.add(rec["run_id"])
            prune = rec["prune"]
            predicted = prune["diagnostics"]["predicted_error"] / prune["calib_tokens"]
            rows.append(
                {
                    "run_id": rec["run_id"],
                    "study": rec.get("study", Path(folder).name),
                    "task": cfg["task"],
                    "split": cfg["eval_split"],
                    "sparsity": cfg["sparsity"],
                    "calib_size": cfg["calib_size"],
                    "seed": cfg["seed"],
                    "allocation": _allocation(rec),
                    "predicted": predicted,
                    "measured": rec["metrics"]["nll"] - rec["dense_metrics"]["nll"],
                }
            )
    if not rows:
        raise StatpruneError(f"no finished error_norm=loss STAT runs in {', '.join(map(str, folders))}")
    return rows


def _allocation(rec: dict) -> str:
    """The allocation rule a run used (what ``auto`` became, when it was ``auto``)."""
    auto = (rec["prune"].get("diagnostics") or {}).get("auto_options") or {}
    return auto.get("allocation") or (rec.get("method_options_resolved") or {}).get("allocation", "?")


def grouped(rows: list[dict]) -> list[dict]:
    """Means over seeds per (task, split, allocation, calibration size, sparsity)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["task"], r["split"], r["allocation"], r["calib_size"], r["sparsity"])].append(r)
    out = []
    for (task, split, allocation, calib, sparsity), g in sorted(groups.items()):
        p, m = mean(r["predicted"] for r in g), mean(r["measured"] for r in g)
        out.append(
            {
                "task": task,
                "split": split,
                "allocation": allocation,
                "calib_size": calib,
                "sparsity": sparsity,
                "runs": len(g),
                "predicted": p,
                "measured": m,
                "ratio": m / p,
            }
        )
    return out


def markdown(table: list[dict]) -> str:
    head = "| task | split | allocation | calibration windows | sparsity | runs | predicted Δnll/token | measured Δnll | measured / predicted |"
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        lines.append(
            f"| {r['task']} | {r['split']} | {r['allocation']} | {r['calib_size']} | {r['sparsity']:.0%} | "
            f"{r['runs']} | {r['predicted']:.3f} | {r['measured']:.3f} | {r['ratio']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", nargs="+", default=DEFAULT_RECORDS)
    ap.add_argument("--out", default="benchmarks/results/loss_prediction.json")
    args = ap.parse_args(argv)
    rows = loss_runs(args.records)
    table = grouped(rows)
    rho = {
        name: spearman([r["predicted"] for r in sel], [r["measured"] for r in sel])
        for name, sel in (
            ("all runs", rows),
            (f"≥ {ENOUGH} windows", [r for r in rows if r["calib_size"] >= ENOUGH]),
        )
    }
    print(markdown(table))
    for name, value in rho.items():
        print(f"Spearman ρ(predicted, measured), {name}: {value:+.2f}")
    record = {
        "command": shlex.join(["python", "benchmarks/loss_prediction.py", *(argv or sys.argv[1:])]),
        "provenance": provenance(),
        "runs": rows,
        "table": table,
        "spearman": rho,
        "enough_windows": ENOUGH,
    }
    if args.out:
        write_json_atomic(Path(args.out), record)
    return record


if __name__ == "__main__":
    main()
