"""Reading user data files through ``datasets`` and telling their columns apart (see :mod:`.local`)."""

from __future__ import annotations

import csv
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from statprune.data.tasks import Row
from statprune.errors import StatpruneError

DATA_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".tsv", ".parquet")
TEXT_NAMES = ("text", "sentence", "sentence1", "review", "content", "document", "question", "question1",
              "premise", "comment", "body", "tweet")  # fmt: skip
PAIR_NAMES = ("text_pair", "sentence2", "hypothesis", "question2", "pair")
LABEL_NAMES = ("label", "labels", "target", "class", "score", "y", "gold_label", "sentiment", "category",
               "rating", "stars")  # fmt: skip
ID_NAMES = ("id", "idx", "index", "guid", "uid")
Column = str | int


# ---- reading ----------------------------------------------------------------------------------------


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise StatpruneError(
            "reading local data files needs the 'datasets' package: pip install datasets"
        ) from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    try:
        float(str(value).strip())
    except ValueError:
        return False
    return bool(str(value).strip())


def sniff_header(path: Path, delimiter: str, quoting: int) -> bool:
    """Whether a csv/tsv file starts with a header row.

    Yes when a first-row cell is a usual column name (``text``, ``label``, …), or when in some column
    the first cell is not a number but the rest are, or the rest take few values that the first is
    not one of (a label column under its name).
    """
    return _has_header(_sample_rows(path, delimiter, quoting))


def _has_header(rows: list[list[str]]) -> bool:
    if len(rows) < 2:
        return False
    names = {n.lower() for n in (*TEXT_NAMES, *PAIR_NAMES, *LABEL_NAMES, *ID_NAMES)}
    first, rest = rows[0], rows[1:]
    if any(c.strip().lower() in names for c in first):
        return True
    for j, cell in enumerate(first):
        col = [r[j] for r in rest if j < len(r)]
        if not col:
            continue
        if all(_is_number(v) for v in col) and not _is_number(cell):
            return True
        distinct = set(col)
        if len(col) >= 4 and cell not in distinct and len(distinct) <= max(2, len(col) // 10):
            return True
    return False


def read_file(path: Path, header: bool | None = None) -> tuple[list[Row], bool | None]:
    """Rows of one data file through ``datasets``' builders, and whether a csv/tsv had a header.

    Delimited files are read with every column as a string (labels are parsed later), blank lines
    skipped and no ``NA`` guessing; text files give one row ``{"text": paragraph}`` per paragraph.
    """
    ds = _datasets()
    common = {"split": "train", "data_files": [str(path)]}
    try:
        if path.suffix == ".txt":
            data = ds.load_dataset("text", sample_by="paragraph", **common)
        elif path.suffix in (".json", ".jsonl"):
            data = ds.load_dataset("json", **common)
        elif path.suffix == ".parquet":
            data = ds.load_dataset("parquet", **common)
        else:
            sep = "\t" if path.suffix == ".tsv" else ","
            quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL  # TSV quotes are text
            sample = _sample_rows(path, sep, quoting)
            if header is None:
                header = _has_header(sample)
            width = max((len(r) for r in sample), default=0)
            names = sample[0] if header and sample else [str(i) for i in range(width)]
            if header and len({n.strip() for n in names}) != len(names):
                raise StatpruneError(f"{path}: repeated column names in the header: {', '.join(names)}")
            data = ds.load_dataset(
                "csv",
                sep=sep,
                quoting=quoting,
                header=0 if header else None,
                column_names=None if header else names,
                features=ds.Features({n: ds.Value("string") for n in names}),
                na_filter=False,
                encoding="utf-8-sig",
                **common,
            )
            if header:
                data = data.rename_columns({n: n.strip() for n in names if n != n.strip()})
    except StatpruneError:
        raise
    except Exception as e:  # datasets/pyarrow/pandas raise many types for malformed files
        raise StatpruneError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    return data.to_list(), header if path.suffix in (".csv", ".tsv") else None


def _sample_rows(path: Path, sep: str, quoting: int) -> list[list[str]]:
    """The first 500 non-blank rows (pandas skips blank lines too)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return [r for r in itertools.islice(csv.reader(f, delimiter=sep, quoting=quoting), 500) if r]


# ---- detection --------------------------------------------------------------------------------------


def _text_like(values: list[Any]) -> bool:
    """Strings that are not numbers, mostly with spaces or long: sentences, not codes or labels."""
    vals = [v for v in values if v not in (None, "")]
    if not vals or not all(isinstance(v, str) for v in vals):
        return False
    if sum(_is_number(v) for v in vals) > 0.1 * len(vals):
        return False
    spaced = sum(" " in v.strip() for v in vals) / len(vals)
    return spaced >= 0.5 or sum(len(v) for v in vals) / len(vals) > 20


def _pick(given: Column | None, columns: list[str], what: str, flag: str) -> str | None:
    """The column a user named, by name or 0-based position; an error lists the columns."""
    if given is None:
        return None
    if str(given) in columns:
        return str(given)
    if re.fullmatch(r"\d+", str(given)) and int(given) < len(columns):
        return columns[int(given)]
    raise StatpruneError(
        f"{flag} {given!r}: no such {what} column; columns: {', '.join(columns)} (or their 0-based positions)"
    )


def _named(columns: list[str], names: tuple[str, ...], exclude: set[str]) -> str | None:
    lower = {c.lower(): c for c in columns if c not in exclude}
    return next((lower[n] for n in names if n in lower), None)


@dataclass(frozen=True)
class Layout:
    kind: str
    text: str
    pair: str | None
    label: str | None


def detect(
    rows: list[Row],
    *,
    text: Column | None = None,
    pair: Column | None = None,
    label: Column | None = None,
    kind: str | None = None,
) -> Layout:
    """Kind and columns: the user's, else by name, else by content (first text-like column is the text,
    the first other column that is not an id is the label; none → language modelling)."""
    columns = list(dict.fromkeys(k for r in rows[:1000] for k in r))
    sample = rows[:2000]
    values = {c: [r.get(c) for r in sample] for c in columns}
    pair_given = pair is not None
    text = _pick(text, columns, "text", "--text-column")
    pair = _pick(pair, columns, "text pair", "--text-pair-column")
    label = _pick(label, columns, "label", "--label-column")
    used = {c for c in (text, pair, label) if c}
    if text is None:
        text = _named(columns, TEXT_NAMES, used) or next(
            (c for c in columns if c not in used and _text_like(values[c])), None
        )
        if text is None:
            raise StatpruneError(
                f"cannot tell which column holds the text; columns: {', '.join(columns)}; pass --text-column"
            )
        used.add(text)
    if not pair_given:
        pair = _named(columns, PAIR_NAMES, used)
        used |= {pair} if pair else set()
    if label is None and kind != "lm":
        label = _named(columns, LABEL_NAMES, used) or next(
            (c for c in columns if c not in used and _label_like(c, values[c])), None
        )
    if kind is None:
        if label is None:
            kind = "lm"
        else:
            vals = [v for v in values[label] if v not in (None, "")]
            fractional = any(_is_number(v) and not float(str(v)).is_integer() for v in vals)
            kind = (
                "regression" if vals and all(_is_number(v) for v in vals) and fractional else "classification"
            )
    if kind != "lm" and label is None:
        raise StatpruneError(
            f"a {kind} task needs a label column; columns: {', '.join(columns)}; pass --label-column"
        )
    return Layout(kind, text, pair if kind != "lm" else None, label if kind != "lm" else None)


def _label_like(name: str, values: list[Any]) -> bool:
    """Scalar values that are not an id (id-like name, or all distinct integers/strings of many rows)."""
    vals = [v for v in values if v not in (None, "")]
    if not vals or name.lower() in ID_NAMES or not all(isinstance(v, str | int | float | bool) for v in vals):
        return False
    fractional = all(_is_number(v) and not float(str(v)).is_integer() for v in vals)
    return fractional or len(vals) < 20 or len(set(map(str, vals))) < len(vals)


def label_key(value: Any) -> str:
    """A label as text: ``1``, ``1.0`` and ``"1"`` are the same label."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    s = str(value).strip()
    if re.fullmatch(r"-?\d+\.0*", s):
        return s.split(".")[0]
    return s


def label_ids(values: list[Any], given: tuple[str, ...] | None) -> dict[str, int]:
    """Label → id: the given order, else sorted (numerically when every label is a number)."""
    keys = sorted({label_key(v) for v in values if v not in (None, "")})
    if given is not None:
        missing = [k for k in keys if k not in given]
        if missing:
            raise StatpruneError(
                f"labels {', '.join(missing)} are not among the task's labels {', '.join(given)}"
            )
        return {name: i for i, name in enumerate(given)}
    if all(_is_number(k) for k in keys):
        keys.sort(key=float)
    if len(keys) < 2:
        raise StatpruneError(
            f"the label column holds a single value ({', '.join(keys) or 'none'}); a classifier needs two or more"
        )
    return {k: i for i, k in enumerate(keys)}
