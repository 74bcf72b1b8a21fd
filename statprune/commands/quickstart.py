"""``statprune quickstart``: the README's main job, as a small real sweep followed by its report.

Runs ``experiments/quickstart.toml`` in-process (fine-tune cached, STAT at three sparsities,
evaluation), writes the report (tables and plots) and prints one summary table with the achieved
FLOPs, parameters, accuracy and prune seconds of every run next to the dense model.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas

DEFAULT_SPEC = Path(__file__).resolve().parents[2] / "experiments" / "quickstart.toml"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="fine-tune MiniLM, prune it with STAT at 30/40/50%%, report",
        description="Example: statprune quickstart  (or: statprune quickstart --spec my.toml)",
    )
    p.add_argument(
        "--spec", type=Path, default=DEFAULT_SPEC, help="sweep spec (default: experiments/quickstart.toml)"
    )
    p.add_argument("--results", type=Path, default=Path("results"), help="results root (default ./results)")
    p.set_defaults(func=_run)


def summary_table(frame: pandas.DataFrame) -> str:
    """Dense row plus one row per finished run: the columns the README promises."""
    done = frame[frame["status"] == "done"].sort_values("sparsity")
    metric = "accuracy" if "metric.accuracy" in done else next(c[7:] for c in done if c.startswith("metric."))
    lines = [
        f"| FLOPs removed (target) | FLOPs removed (achieved) | params | {metric} | prune s |",
        "|---:|---:|---:|---:|---:|",
    ]
    if len(done):
        first = done.iloc[0]
        lines.append(
            f"| dense | 0.0% | {first['params_dense'] / 1e6:.2f} M | {first[f'dense.{metric}']:.4f} | – |"
        )
    for _, r in done.iterrows():
        lines.append(
            f"| {r['sparsity']:.0%} | {r['sparsity_achieved']:.1%} | {r['params_pruned'] / 1e6:.2f} M | "
            f"{r[f'metric.{metric}']:.4f} | {r['prune_seconds']:.1f} |"
        )
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    import sys

    from statprune.analysis.records import load_study, resolve_study
    from statprune.analysis.report import build_report
    from statprune.sweep.launch import LaunchOptions, launch
    from statprune.sweep.spec import load_spec
    from statprune.sweep.store import RunStore

    spec = load_spec(args.spec)
    store = RunStore(args.results, spec.study)
    runs = spec.runs()
    final = launch(spec, store, runs, LaunchOptions(executor="inline")).final
    print(f"{spec.study}: " + ", ".join(f"{k} {v}" for k, v in final.items()) + f"  ({store.dir})")
    if final.get("done", 0) != len(runs):
        return 1
    rep = build_report(args.spec, results_root=args.results)
    sys.stdout.write(rep.markdown)
    for path in rep.paths:
        print(f"wrote {path}", file=sys.stderr)
    print("\n" + summary_table(load_study(resolve_study(args.spec, args.results))))
    return 0
