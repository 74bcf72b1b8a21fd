"""Rows of hub-backed tasks (GLUE, SQuAD, WikiText-2) from local files or the Hugging Face Hub.

Where a task's split comes from, first match wins:

1. ``$STATPRUNE_DATA_<TASK>`` — a directory of split files for that one task. ``<TASK>`` is the task
   name upper-cased with every run of other characters turned into ``_``: ``glue/sst2`` →
   ``STATPRUNE_DATA_GLUE_SST2``, ``squad_v2`` → ``STATPRUNE_DATA_SQUAD_V2``, ``wikitext-2`` →
   ``STATPRUNE_DATA_WIKITEXT_2``.
2. ``$STATPRUNE_DATA_DIR/<task name>/`` — one root for every task; the task name is a relative path
   (``$STATPRUNE_DATA_DIR/glue/sst2/``, ``$STATPRUNE_DATA_DIR/squad_v2/``).
3. The hub dataset via ``datasets.load_dataset`` (its local cache when the hub is offline).

A split directory holds one file per split, named by the canonical split (``train``, ``dev``), the
hub split (``validation``, ``validation_matched``) or the file name the benchmark ships
(``dev-v2.0``, ``wiki.test``), with any extension in :data:`READERS` (JSON lines, JSON, parquet,
CSV, TSV, raw text); a ``datasets.save_to_disk`` folder works too. Files hold the hub's columns
(each task module also accepts the benchmark's original column names). Environment variables, not
arguments, because they reach every process a sweep starts (SLURM jobs inherit them or set them in
the cluster profile's ``setup`` lines) without changing a spec's run ids.

Offline by configuration (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``), only ``datasets``' cache is
tried; with nothing set, a 3-second probe decides whether the hub is reachable (if not, the error
says when ``HF_DATASETS_OFFLINE=1`` would find a cached copy). Without local files or a cached copy,
:func:`load_split` raises a :class:`StatpruneError` at once that says where to put the files, instead
of letting ``datasets`` retry the network for minutes.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from statprune.errors import StatpruneError

Row = dict[str, Any]
DATA_DIR_ENV = "STATPRUNE_DATA_DIR"
_TRUE = ("1", "ON", "YES", "TRUE")


@dataclass(frozen=True)
class HubSource:
    """A hub dataset and how its splits are named: canonical split → accepted names.

    The first name of each split is the hub split; all names are accepted as local file stems.
    """

    path: str  # hub dataset id, e.g. "nyu-mll/glue"
    config: str | None  # dataset configuration, e.g. "sst2"; None for single-config datasets
    splits: Mapping[str, tuple[str, ...]]
    columns: tuple[str, ...] = ()  # the columns a local file needs (for error messages)

    def hub_split(self, split: str) -> str:
        return self.splits[split][0]

    @property
    def label(self) -> str:
        return self.path + (f" ({self.config})" if self.config else "")


def env_var(task_name: str) -> str:
    """The per-task override variable: ``glue/sst2`` → ``STATPRUNE_DATA_GLUE_SST2``."""
    return "STATPRUNE_DATA_" + re.sub(r"[^A-Za-z0-9]+", "_", task_name).strip("_").upper()


def local_dir(task_name: str) -> Path | None:
    """The directory holding the task's split files, if the environment names one.

    A named directory that does not exist is an error (a typo should not silently fall back to the hub).
    """
    var = env_var(task_name)
    value = os.environ.get(var)
    if value:
        path = Path(value).expanduser()
        if not path.is_dir():
            raise StatpruneError(f"${var}={value} is not a directory (it should hold the split files)")
        return path
    root = os.environ.get(DATA_DIR_ENV)
    if root:
        path = Path(root).expanduser() / task_name
        if path.is_dir():
            return path
    return None


# ---- local files ----------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise StatpruneError(f"{path}:{lineno}: not valid JSON: {e}") from None
    return rows


def _read_json(path: Path) -> list[Row]:
    """A JSON list of rows, a ``{"data": [...]}`` document (SQuAD's files), or JSON lines.

    ``datasets.Dataset.to_json`` writes JSON lines even to ``.json`` files, so both are accepted.
    """
    text = path.read_text(encoding="utf-8")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return _read_jsonl(path)
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        return doc["data"]
    if isinstance(doc, list):
        return doc
    raise StatpruneError(f"{path}: expected a JSON list of rows or an object with a 'data' list")


def _read_delimited(path: Path, delimiter: str) -> list[Row]:
    # GLUE's TSVs contain unbalanced quotes inside sentences: quotes are text there, not syntax.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with open(path, encoding="utf-8-sig", newline="") as f:
        return [dict(r) for r in csv.DictReader(f, delimiter=delimiter, quoting=quoting)]


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _read_lines(path: Path) -> list[Row]:
    """One row per line, line end kept and blank lines as ``""`` (the hub's WikiText rows)."""
    with open(path, encoding="utf-8", newline="") as f:
        return [{"text": line if line.strip() else ""} for line in f]


READERS: dict[str, Callable[[Path], list[Row]]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".parquet": _read_parquet,
    ".csv": lambda p: _read_delimited(p, ","),
    ".tsv": lambda p: _read_delimited(p, "\t"),
    ".raw": _read_lines,
    ".txt": _read_lines,
}


def read_file(path: str | Path) -> list[Row]:
    """All rows of one local file (format by extension); cached while the file is unchanged."""
    p = Path(path)
    if p.suffix not in READERS:
        raise StatpruneError(f"{p}: unknown data file type; use one of {', '.join(READERS)}")
    try:
        st = p.stat()
    except OSError as e:
        raise StatpruneError(f"cannot read {p}: {e}") from None
    return [dict(r) for r in _read_cached(str(p), st.st_mtime_ns, st.st_size)]


@functools.lru_cache(maxsize=16)
def _read_cached(path: str, _mtime: int, _size: int) -> tuple[Row, ...]:
    try:
        return tuple(READERS[Path(path).suffix](Path(path)))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise StatpruneError(f"cannot read {path}: {e}") from None


def split_file(directory: Path, names: tuple[str, ...]) -> Path | None:
    """The first ``<name><ext>`` in ``directory`` over names (in order) and extensions (READERS order)."""
    for name in names:
        for ext in READERS:
            p = directory / f"{name}{ext}"
            if p.is_file():
                return p
    return None


def _local_rows(directory: Path, source: HubSource, split: str, task_name: str) -> list[Row]:
    names = source.splits[split]
    if (directory / "dataset_dict.json").is_file():  # a datasets.save_to_disk folder
        import datasets

        dd = datasets.load_from_disk(str(directory))
        for name in names:
            if name in dd:
                return dd[name].to_list()
        raise StatpruneError(
            f"{directory} (task {task_name!r}) has no split {' / '.join(names)}; it has {', '.join(dd)}"
        )
    path = split_file(directory, names)
    if path is None:
        raise StatpruneError(
            f"task {task_name!r}, split {split!r}: no file in {directory} named "
            f"{' / '.join(names)} with extension {' / '.join(READERS)}"
        )
    return read_file(path)


# ---- the hub --------------------------------------------------------------------------------------


def datasets_offline() -> bool:
    """Offline by configuration: ``HF_DATASETS_OFFLINE`` or the hub's own offline switches."""
    if os.environ.get("HF_DATASETS_OFFLINE", "").upper() in _TRUE:
        return True
    from statprune.models.load import hub_offline

    return hub_offline()


def in_local_cache(source: HubSource) -> bool:
    """Whether a download of the dataset exists in the hub or ``datasets`` caches (without importing datasets).

    ``datasets`` names its prepared cache ``org___name`` with the name in snake case.
    """
    from huggingface_hub import constants

    hub = Path(constants.HF_HUB_CACHE) / ("datasets--" + source.path.replace("/", "--"))
    prepared = Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets")
    org, _, name = source.path.rpartition("/")
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()
    names = {source.path.replace("/", "___"), "___".join(filter(None, (org, snake)))}
    return hub.is_dir() or any((prepared / n).is_dir() for n in names)


def how_to_point(task_name: str, source: HubSource, split: str) -> str:
    """The part of every 'cannot load' message that says how to use local files instead."""
    names = " / ".join(source.splits[split])
    columns = f" ({', '.join(source.columns)})" if source.columns else ""
    return (
        f"Point the task at local files with the hub's columns{columns}: set ${env_var(task_name)}=/path/to/dir "
        f"or ${DATA_DIR_ENV}=/path/to/root (files then go in /path/to/root/{task_name}/), holding one file "
        f"per split named {names} (.jsonl, .json, .parquet, .csv or .tsv; see docs/PAPER_BENCHMARKS.md). "
        "Where the hub is reachable, `datasets.load_dataset(...)[split].to_json(...)` writes such files."
    )


def _hub_rows(task_name: str, source: HubSource, split: str) -> list[Row]:
    where = f"cannot load task {task_name!r} ({split}) from {source.label}: "
    if datasets_offline():
        if not in_local_cache(source):
            raise StatpruneError(
                where + "the Hugging Face Hub is offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and the "
                "dataset is not in the local cache. " + how_to_point(task_name, source, split)
            )
    else:
        from statprune.models.load import hub_reachable

        if not hub_reachable():
            cached = (
                " A cached copy exists: set HF_DATASETS_OFFLINE=1 to use it."
                if in_local_cache(source)
                else ""
            )
            raise StatpruneError(
                where
                + "the Hugging Face Hub is unreachable (no network)."
                + cached
                + " "
                + how_to_point(task_name, source, split)
            )
    return [dict(r) for r in _hub_cached(source.path, source.config, source.hub_split(split))]


@functools.lru_cache(maxsize=8)
def _hub_cached(path: str, config: str | None, hub_split: str) -> tuple[Row, ...]:
    import datasets

    try:
        ds = datasets.load_dataset(path, config, split=hub_split)
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as e:  # ConnectionError is an OSError
        label = path + (f" ({config})" if config else "")
        raise StatpruneError(
            f"cannot load {label} split {hub_split!r}: {e.__class__.__name__}: {e}"
        ) from None
    return tuple(ds.to_list())


def load_split(
    data_name: str, source: HubSource, split: str, *, directory: str | Path | None = None
) -> list[Row]:
    """Raw rows (the file's or the hub's columns) of a canonical split, local files first.

    ``data_name`` names the data for the environment lookup (usually the task name; task variants
    that relabel the same data share their base task's files). ``directory`` skips the lookup.
    """
    if split not in source.splits:
        raise StatpruneError(f"task {data_name!r} has no split {split!r}")
    local = Path(directory).expanduser() if directory is not None else local_dir(data_name)
    if local is not None:
        if not local.is_dir():
            raise StatpruneError(f"data directory {local} of task {data_name!r} does not exist")
        return _local_rows(local, source, split, data_name)
    return _hub_rows(data_name, source, split)


def source_provenance(
    data_name: str, source: HubSource, directory: str | Path | None = None
) -> dict[str, Any]:
    """Provenance of what :func:`load_split` reads now: the local folder (path + hash) or the hub dataset."""
    from statprune.data.origin import hub_provenance, local_provenance

    local = Path(directory).expanduser() if directory is not None else local_dir(data_name)
    if local is not None:
        return local_provenance(local)
    return hub_provenance(source.path, source.config)


def first_column(row: Row, names: tuple[str, ...], *, task_name: str, what: str) -> Any:
    """The value of the first of ``names`` present in ``row``; a clear error naming them otherwise."""
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    raise StatpruneError(
        f"task {task_name!r}: a row has no {what} column ({' / '.join(names)}); its columns: "
        f"{', '.join(row) or '(none)'}"
    )
