"""``statprune report SPEC``, ``statprune figures`` and ``statprune publish SPEC``: tables and plots
from sweep records, and the tracked copy of a finished study's records they are drawn from."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="tables and plots of one study (Markdown table to stdout; files under results/<study>/report/)",
        description="Read the study's run records and write comparison tables (Markdown, LaTeX) and "
        "plots (PNG, PDF) under <results>/<study>/report/. The comparison tables go to stdout, the "
        "written paths and the study's completeness to stderr.",
    )
    p.add_argument("spec", help="sweep spec TOML (experiments/*.toml)")
    p.add_argument(
        "--results", metavar="DIR", help="results root (default: the spec's results_dir, else ./results)"
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default <results>/<study>/report)")
    p.set_defaults(func=_report)

    f = subparsers.add_parser(
        "figures",
        help="rebuild the paper figures and tables listed in paper_figures/manifest.toml",
        description="Rebuild every figure/table of the manifest from the sweep records. Outputs whose "
        "studies are missing or incomplete are not drawn (unless --allow-missing); the exact "
        "`statprune sweep` command that completes each is printed, and the exit code is 1.",
    )
    f.add_argument(
        "--manifest", default="paper_figures/manifest.toml", help="manifest TOML (default %(default)s)"
    )
    f.add_argument(
        "--only", action="append", metavar="ID", help="build only this figure/table id (repeatable)"
    )
    f.add_argument("--results", metavar="DIR", help="results root for every study (default: manifest/spec)")
    f.add_argument(
        "--allow-missing",
        action="store_true",
        help="draw what exists from incomplete studies and exit 0 even when studies are missing",
    )
    f.add_argument(
        "--include-outdated",
        action="store_true",
        help="count published records made by older code (marked `outdated`) as done",
    )
    f.add_argument("--list", action="store_true", help="list the manifest's ids and exit")
    f.set_defaults(func=_figures)

    pub = subparsers.add_parser(
        "publish",
        help="copy a study's done run records into results/published/<study>/ (tracked) with provenance",
        description="Copy the JSON record of every done run of the study (never weights or checkpoints; "
        "home paths become ~) into <to>/<study>/, remove earlier copies of runs no longer done, and write "
        "PROVENANCE.json. Records from code older than the study's compatible-since commit, or of an "
        "older record format, or that the current code would run differently (the sweep's fingerprint: "
        "resolved options, FLOPs model), are marked `outdated`; `statprune figures` leaves them out.",
    )
    pub.add_argument("spec", help="sweep spec TOML (experiments/*.toml)")
    pub.add_argument(
        "--results",
        metavar="DIR",
        help="where the sweep wrote (default: the spec's results_dir, else ./results)",
    )
    pub.add_argument(
        "--to", metavar="DIR", default="results/published", help="published root (default %(default)s)"
    )
    pub.add_argument(
        "--compatible-since",
        metavar="COMMIT",
        help="records made before this commit are outdated (kept in PROVENANCE.json for later publishes)",
    )
    pub.add_argument("--reason", default="", help="what changed at --compatible-since (recorded)")
    pub.set_defaults(func=_publish)


def _report(args: argparse.Namespace) -> int:
    from statprune.analysis.report import build_report

    rep = build_report(args.spec, results_root=args.results, out_dir=args.out)
    sys.stdout.write(rep.markdown)
    sys.stdout.flush()
    for path in rep.paths:
        print(f"wrote {path}", file=sys.stderr)
    for why in rep.skipped:
        print(f"not drawn: {why}", file=sys.stderr)
    if rep.check is not None and not rep.check.complete:
        print(f"incomplete: {rep.check.describe()}", file=sys.stderr)
    return 0


def _figures(args: argparse.Namespace) -> int:
    from statprune.analysis.figures import build_figures, load_manifest

    manifest = load_manifest(args.manifest)
    if args.list:
        for it in manifest.items:
            print(f"{it.id:34s} {it.output:6s} {it.kind:22s} {', '.join(str(_rel(s)) for s in it.specs)}")
        return 0
    results = build_figures(
        manifest,
        only=args.only,
        allow_missing=args.allow_missing,
        results_root=Path(args.results) if args.results else None,
        include_outdated=args.include_outdated,
    )
    bad = 0
    for r in results:
        if r.paths:
            print(f"{r.status:10s} {r.id}: " + ", ".join(str(_rel(p)) for p in r.paths))
        else:
            print(f"{r.status:10s} {r.id}: not drawn")
        for problem in r.problems:
            print(f"{'':10s}   {problem}")
        if r.status == "error" or (not r.ok and not args.allow_missing):
            bad += 1
    done = sum(r.ok for r in results)
    print(f"\n{done}/{len(results)} outputs complete" + (f"; {bad} need attention" if bad else ""))
    commands = list(dict.fromkeys(c for r in results for c in r.commands))
    if commands:
        print("to complete the studies, run:")
        for c in commands:
            print(f"  {c}")
    return 1 if bad else 0


def _publish(args: argparse.Namespace) -> int:
    from statprune.analysis.publish import publish_study

    r = publish_study(
        args.spec,
        results_root=args.results,
        dest_root=args.to,
        compatible_since=args.compatible_since,
        reason=args.reason,
    )
    print(f"published {len(r.published)} done runs of {r.study!r} to {_rel(r.dest)}")
    if r.skipped:
        print("not published: " + ", ".join(f"{n} {s}" for s, n in r.skipped.items()))
    if r.removed:
        print(f"removed {len(r.removed)} earlier copies: {', '.join(r.removed)}")
    if r.adopted:
        print(f"{len(r.adopted)} of them adopted (same resolved options, other spelling; adopted_from)")
    for run_id, why in r.outdated.items():
        print(f"outdated {run_id}: {why}")
    return 0


def _rel(p: Path) -> Path:
    try:
        return Path(p).resolve().relative_to(Path.cwd())
    except ValueError:
        return Path(p)
