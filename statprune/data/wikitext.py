"""WikiText-2 (raw) language modelling, the perplexity benchmark of SliceGPT, SparseGPT and STAT.

The convention those papers use: the rows of ``Salesforce/wikitext`` (``wikitext-2-raw-v1``) — one
row per line of the raw file, line end kept, blank lines empty — joined with ``"\\n\\n"``, tokenized
once, and cut into non-overlapping windows of 2048 tokens (the tail is dropped); perplexity is over
the ``test`` split. Local files: the hub columns (``text``) in any format of
:mod:`statprune.data.hub`, or the raw files of the original download (``wiki.train.raw``,
``wiki.valid.raw``, ``wiki.test.raw``), which read into the same rows as the hub.
"""

from __future__ import annotations

import functools
from pathlib import Path

from statprune.data.hub import HubSource, first_column, load_split, source_provenance
from statprune.data.tasks import TASKS, LMTask, Row

WINDOW = 2048
SOURCE = HubSource(
    "Salesforce/wikitext",
    "wikitext-2-raw-v1",
    {
        "train": ("train", "wiki.train"),
        "dev": ("validation", "dev", "valid", "wiki.valid"),
        "test": ("test", "wiki.test"),
    },
    ("text",),  # or the raw wiki.*.raw files
)


def wikitext_rows(split: str, *, data_name: str, data_dir: str | Path | None = None) -> list[Row]:
    """The split's lines as rows ``{"text": line}`` in file order (blank lines kept as ``""``)."""
    rows = load_split(data_name, SOURCE, split, directory=data_dir)
    return [{"text": str(first_column(r, ("text",), task_name=data_name, what="text"))} for r in rows]


def wikitext_task(
    window: int = WINDOW, *, name: str = "wikitext-2", data_dir: str | Path | None = None
) -> LMTask:
    """WikiText-2 with windows of ``window`` tokens, over the hub (or ``$STATPRUNE_DATA_*``) or ``data_dir``."""
    return LMTask.windowed(
        window,
        name=name,
        loader=functools.partial(wikitext_rows, data_name="wikitext-2", data_dir=data_dir),
        description=f"WikiText-2 (raw), rows joined by blank lines, {window}-token windows",
        separator="\n\n",
        origin=functools.partial(source_provenance, "wikitext-2", SOURCE, data_dir),
    )


TASKS.add("wikitext-2", wikitext_task())
