"""Movie-review sentiment (Hutto & Gilbert, ICWSM 2014): an SST-2-like task and an STS-B-like regression.

``movieReviewSnippets_GroundTruth.txt`` holds 10,605 Rotten-Tomatoes sentences (the Pang & Lee source
of SST) as ``id<TAB>mean_rating<TAB>text`` lines, UTF-8 with CRLF; the rating is the mean of ≥ 20
raters on −4…+4. There are no official splits, so each snippet goes to train/dev/test by a salted
hash of its id (:func:`~statprune.data.tasks.hash_split`, 80/10/10): stable across runs, file order
and machines, and shared by both tasks. The binary task keeps |rating| ≥ 0.5 (as SST-2 drops
neutrals; label = rating > 0); the regression task keeps every snippet with its raw rating.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

from statprune.data.origin import asset_provenance, local_provenance
from statprune.data.tasks import TASKS, Row, TextTask, hash_split
from statprune.errors import StatpruneError

FILENAME = "movieReviewSnippets_GroundTruth.txt"
NEUTRAL_BAND = 0.5  # |rating| below this is dropped from the binary task
# Mean dev-split length in tokens with the MiniLM (BERT-uncased WordPiece) tokenizer, [CLS]/[SEP]
# included: 26.8 for both tasks (24.5 with SmolLM2's BPE); Task.measure_seq_len re-measures it.
FLOPS_SEQ_LEN = 26.8


def read_ground_truth(path: Path) -> list[tuple[str, float, str]]:
    """Parse a Hutto ground-truth file into (id, mean rating, text) triples, in file order."""
    return list(_read_cached(str(path)))


@functools.lru_cache(maxsize=8)
def _read_cached(path: str) -> tuple[tuple[str, float, str], ...]:
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise StatpruneError(f"cannot read {path}: {e}") from None
    rows = []
    # Split on CRLF/LF only: str.splitlines() would also break on separators that occur inside text.
    for lineno, line in enumerate(re.split(r"\r?\n", text), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        try:
            rows.append((parts[0].strip(), float(parts[1]), parts[2].strip()))
        except (IndexError, ValueError):
            raise StatpruneError(
                f"{path}:{lineno}: expected 'id<TAB>rating<TAB>text', got {line[:80]!r}"
            ) from None
    return tuple(rows)


def movie_rows(split: str, *, path: Path | None = None, regression: bool = False, seed: int = 0) -> list[Row]:
    """Rows of one canonical split: ``id``, ``text``, ``rating``, ``label`` (int class or float rating)."""
    if path is None:
        from statprune.assets import asset_path

        path = asset_path("movie-sentiment") / FILENAME
    rows = []
    for sid, rating, text in read_ground_truth(path):
        if hash_split(sid, seed=seed) != split:
            continue
        if regression:
            rows.append({"id": sid, "text": text, "rating": rating, "label": rating})
        elif abs(rating) >= NEUTRAL_BAND:
            rows.append({"id": sid, "text": text, "rating": rating, "label": int(rating > 0)})
    # The source file is ordered by rating; order rows by a hash of their id so any prefix of a split
    # (an evaluation limit, a debugging subset) is a fair sample, stably across machines.
    rows.sort(key=lambda r: hashlib.sha256(f"order:{seed}:{r['id']}".encode()).digest())
    return rows


def movie_task(
    path: Path | None = None, *, regression: bool = False, seed: int = 0, name: str | None = None
) -> TextTask:
    """The movie task over the packaged asset (``path=None``) or a file in the same format."""
    loader = functools.partial(movie_rows, path=path, regression=regression, seed=seed)
    origin = (
        functools.partial(local_provenance, path)
        if path is not None
        else functools.partial(asset_provenance, "movie-sentiment", FILENAME)
    )
    if regression:
        return TextTask(
            name=name or "movie-sentiment-regression",
            kind="regression",
            num_labels=1,
            metric_names=("pearson", "spearman"),
            flops_seq_len=FLOPS_SEQ_LEN,
            max_length=128,
            loader=loader,
            description="mean rater score (−4…+4) of Rotten-Tomatoes snippets (STS-B-like regression)",
        )
    return TextTask(
        name=name or "movie-sentiment",
        kind="classification",
        num_labels=2,
        metric_names=("accuracy", "f1"),
        flops_seq_len=FLOPS_SEQ_LEN,
        max_length=128,
        loader=loader,
        origin=origin,
        description="binary sentiment of Rotten-Tomatoes snippets, |rating| ≥ 0.5 (SST-2-like)",
    )


TASKS.add("movie-sentiment", movie_task())
TASKS.add("movie-sentiment-regression", movie_task(regression=True))
