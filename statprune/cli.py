"""The ``statprune`` command: thin argument parsing over library functions.

Each command lives in its own module exposing ``register(subparsers)``; that function adds a parser
and sets ``func`` to a callable taking the parsed namespace. Library code never sees the namespace.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from statprune.errors import StatpruneError

# module path of every command group; each module defines register(subparsers)
COMMAND_MODULES = (
    "statprune.commands.assets",
    "statprune.commands.prune",
    "statprune.commands.evaluate",
    "statprune.commands.finetune",
    "statprune.commands.quickstart",
    "statprune.sweep.cli",
    "statprune.analysis.cli",
    "statprune.bench.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="statprune", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and (name == e.name or name.startswith(e.name + ".")):  # group not in this tree
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        rc = args.func(args)
    except StatpruneError as e:
        print(f"statprune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("statprune: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
