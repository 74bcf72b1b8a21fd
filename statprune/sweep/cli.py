"""``statprune sweep SPEC``: launch, resume, or inspect a sweep (see docs/SWEEPS.md)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from statprune.errors import StatpruneError


def register(subparsers: argparse._SubParsersAction) -> None:
    from statprune.commands.prune import HelpFormatter

    p = subparsers.add_parser(
        "sweep",
        help="run a grid of prune+evaluate runs (inline, local processes or SLURM); resumable",
        description="Run every run of a sweep spec that has no done record; records go to "
        "<results>/<study>/<run_id>.json. Re-running resumes.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("spec", help="sweep spec TOML (experiments/*.toml)")
    p.add_argument(
        "--executor",
        default="local",
        help="inline (this process, for debugging) | local (submitit processes) | slurm",
    )
    p.add_argument(
        "--cluster",
        metavar="PROFILE",
        default=os.environ.get("STATPRUNE_SLURM_PROFILE"),
        help="cluster profile TOML for --executor slurm (None: $STATPRUNE_SLURM_PROFILE)",
    )
    p.add_argument(
        "--results", metavar="DIR", help="results root (None: the spec's results_dir, else ./results)"
    )
    p.add_argument(
        "--status", action="store_true", help="show done/outdated/running/failed/missing per run and exit"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan (run_id, name, status, action) and exit"
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="also re-run runs with a failed or cancelled record"
    )
    p.add_argument(
        "--keep-outdated",
        action="store_true",
        help="count done records made by other code (other resolved options, FLOPs model or record "
        "format; shown as outdated by --status) as done instead of running them again",
    )
    p.add_argument(
        "--no-adopt",
        action="store_true",
        help="do not let runs without a record adopt the done record of a run that differs only in how "
        "its options are spelled (same config otherwise, same resolved options: same fingerprint)",
    )
    p.add_argument(
        "--adopt-from",
        action="append",
        metavar="DIR",
        help="also adopt from the records in DIR (e.g. results/published/<study>), after the study's own; repeatable",
    )
    p.add_argument("--no-wandb", action="store_true", help="do not mirror runs to wandb")
    p.add_argument(
        "--only", action="append", metavar="ID|NAME", help="restrict to these run ids (prefixes) or names"
    )
    p.add_argument("--parallel", type=int, metavar="N", help="local: runs at once (None: min(4, CPUs))")
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch threads per run (None: local CPUs/parallel; SLURM: the job's CPUs)",
    )
    p.add_argument("--no-wait", action="store_true", help="submit and return; check later with --status")
    p.add_argument(
        "--poll", type=float, metavar="SECONDS", help="how often to check jobs (None: per executor)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from statprune.sweep import launch as L
    from statprune.sweep.executors import EXECUTORS, load_profile
    from statprune.sweep.spec import load_spec, select
    from statprune.sweep.store import RunStore

    spec = load_spec(args.spec)
    results = Path(args.results or spec.results_dir or "results")
    store = RunStore(results, spec.study)
    runs = select(spec.runs(), args.only)
    if args.only and not runs:
        raise StatpruneError(f"--only {' '.join(args.only)} matches no run of {args.spec}")

    if args.no_adopt and args.adopt_from:
        raise StatpruneError("--adopt-from and --no-adopt contradict each other")
    if args.status or args.dry_run:
        from statprune.sweep.adopt import adoptable

        found = {} if args.no_adopt else adoptable(store, runs, args.adopt_from or ())
        rows = L.plan(
            store,
            runs,
            retry_failed=args.retry_failed,
            keep_outdated=args.keep_outdated,
            adoptable={r: a.from_id for r, a in found.items()},
        )
        print(L.format_table(rows, actions=args.dry_run))
        c = L.counts(rows)
        print(
            f"\n{spec.study}: {len(rows)} runs — "
            + ", ".join(f"{k} {v}" for k, v in c.items())
            + f"  ({store.dir})"
        )
        return 0

    EXECUTORS.get(args.executor)  # unknown executor: error before anything else
    profile = None
    if args.executor == "slurm":
        if not args.cluster:
            raise StatpruneError(
                "--executor slurm needs --cluster slurm/<profile>.toml (or $STATPRUNE_SLURM_PROFILE)"
            )
        profile = load_profile(args.cluster)
    if args.no_wait and args.executor == "inline":
        raise StatpruneError("--no-wait needs --executor local or slurm (inline runs inside this process)")
    for flag in ("parallel", "threads"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise StatpruneError(f"--{flag} must be >= 1, got {v}")
    opts = L.LaunchOptions(
        executor=args.executor,
        profile=profile,
        retry_failed=args.retry_failed,
        keep_outdated=args.keep_outdated,
        adopt=not args.no_adopt,
        adopt_from=tuple(args.adopt_from or ()),
        tracking=not args.no_wandb,
        parallel=args.parallel,
        threads=args.threads,
        wait=not args.no_wait,
        poll_seconds=args.poll,
        progress=not args.quiet,
    )
    report = L.launch(spec, store, runs, opts)
    if not opts.wait:
        return 0
    final = report.final
    print(
        f"{spec.study}: {sum(final.values())} runs — "
        + ", ".join(f"{k} {v}" for k, v in final.items())
        + f" in {report.seconds:.1f}s  ({store.dir})"
    )
    return 0 if final.get("done", 0) == len(runs) else 1
