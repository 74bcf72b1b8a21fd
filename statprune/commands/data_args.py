"""Options shared by the commands that take a task: reading local data, and random task heads."""

from __future__ import annotations

import argparse

# flag → (LocalOptions field, type, help)
_FLAGS = {
    "--text-column": ("text_column", str, "local data: column of the text (name or 0-based position; default: detected)"),
    "--text-pair-column": ("text_pair_column", str, "local data: column of the second text of pairs (default: none "
                           "unless a column is named text_pair, sentence2, hypothesis, question2)"),
    "--label-column": ("label_column", str, "local data: column of the label (default: detected; none → language "
                       "modelling). Labels are mapped to ids in sorted order, recorded in the output"),
    "--split-from": ("split_from", str, "local data: create missing dev/test splits from this split (e.g. train) by "
                     "a seeded hash of each row; default: never (a missing split is an error)"),
    "--dev-fraction": ("dev_fraction", float, "with --split-from: fraction of its rows that become dev (default 0)"),
    "--test-fraction": ("test_fraction", float, "with --split-from: fraction of its rows that become test (default 0)"),
    "--split-seed": ("seed", int, "with --split-from: seed of the split hash (default 0)"),
}  # fmt: skip


def add_data_arguments(p: argparse.ArgumentParser, *, task_flag: str = "--task") -> None:
    """Flags that say how to read a local task (a path given to ``task_flag``)."""
    group = p.add_argument_group(
        "local data",
        f"{task_flag} may be a data file (.txt .jsonl .csv .tsv .parquet), a folder of train/dev/test files, "
        "or a task file (.toml); see the README section 'Your own data'",
    )
    for flag, (dest, typ, help_) in _FLAGS.items():
        metavar = {str: "COLUMN", float: "FRACTION", int: "SEED"}[typ] if dest != "split_from" else "SPLIT"
        group.add_argument(flag, dest="data_" + dest, type=typ, default=None, metavar=metavar, help=help_)


def add_random_head_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-random-head",
        action="store_true",
        help="go on (with a warning) when the model has no trained head for a classification/regression "
        "task and one is randomly initialised; default: refuse (fine-tune first)",
    )


def configure_task(args: argparse.Namespace, spec: str) -> None:
    """Apply the local-data flags to ``spec`` so every later ``get_task(spec)`` sees them."""
    given = {dest: getattr(args, "data_" + dest) for dest, *_ in _FLAGS.values()}
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return
    from statprune.data.local import configure, is_local_spec
    from statprune.data.tasks import TASKS
    from statprune.errors import StatpruneError

    if spec in TASKS or not is_local_spec(spec):
        flags = ", ".join(f for f, (d, *_) in _FLAGS.items() if d in given)
        raise StatpruneError(f"{flags} apply to local data files; {spec!r} is not one")
    configure(spec, given)
