"""``statprune quickstart``: the README's main job (fine-tune, prune at three sparsities, evaluate)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="fine-tune MiniLM, prune it with STAT at 30/40/50%%, print a table",
        description="Example: statprune quickstart --sparsities 0.3 0.4 0.5",
    )
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.4, 0.5])
    p.add_argument("--calib-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from statprune.quickstart import QuickstartConfig, format_table, run_quickstart

    rows = run_quickstart(
        QuickstartConfig(sparsities=tuple(args.sparsities), calib_size=args.calib_size, seed=args.seed)
    )
    print(format_table(rows))
    return 0
