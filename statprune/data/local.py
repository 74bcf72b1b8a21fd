"""Your own data as a task: a data file, a folder of split files, or a task file (``.toml``).

Wherever a task name goes (``--task``, ``--calib-task``, a sweep spec's ``tasks``), a path works too:

* a file — ``.txt`` (language modelling: paragraphs joined by blank lines), ``.jsonl``/``.json``,
  ``.csv``/``.tsv`` (header or none) or ``.parquet``. A file named ``train``/``dev``/``validation``/
  ``test`` is that split; any other single file is the ``train`` split.
* a folder holding one file (or a sub-folder of files) per split, named ``train``, ``dev`` (or
  ``validation``/``valid``/``val``) and ``test``.
* a task file ``*.toml`` naming the data (``data = "folder"`` or a ``[splits]`` table) and anything
  else: ``kind``, ``text_column``, ``text_pair_column``, ``label_column``, ``labels``, ``header``,
  ``metrics``, ``max_length``, ``split_from``/``dev_fraction``/``test_fraction``/``seed``.

Rows are read through ``datasets``' csv/json/text/parquet builders (imported only when a file is read, :mod:`.local_files`). Without a
label column the task is language modelling over the text column; with one it is classification
(labels mapped to ids in sorted order — numeric order when every label is a number — over all splits,
so every split and every command agrees) or regression when a label is a non-integral number.
Missing splits are never made up: ``split_from`` with ``dev_fraction``/``test_fraction`` carves them
out of an existing split by a seeded hash of each row's text (:func:`~statprune.data.tasks.hash_split`);
otherwise asking for a missing split is an error naming the files found.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statprune.data.local_files import DATA_SUFFIXES, Column, Layout, detect, label_ids, label_key, read_file
from statprune.data.tasks import SPLITS, LMTask, Row, Task, TextTask, hash_split
from statprune.errors import StatpruneError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

TASK_FILE_SUFFIX = ".toml"
SPLIT_STEMS = {
    "train": "train",
    "dev": "dev",
    "validation": "dev",
    "valid": "dev",
    "val": "dev",
    "test": "test",
}
KINDS = ("lm", "classification", "regression")
FORMS = (
    "a data file (.txt, .jsonl, .csv, .tsv, .parquet), a folder of train/dev/test files, "
    "or a task file (.toml); see the README section 'Your own data'"
)
LM_WINDOW = 512
CLASSIFICATION_MAX_LENGTH = 128


@dataclass(frozen=True)
class LocalOptions:
    """How to read user data (CLI flags or a task file); None means detect."""

    text_column: Column | None = None
    text_pair_column: Column | None = None
    label_column: Column | None = None
    kind: str | None = None
    labels: tuple[str, ...] | None = None  # label names in id order
    header: bool | None = None  # csv/tsv only
    metrics: tuple[str, ...] = ()
    max_length: int | None = None  # truncation, or the LM window
    split_from: str | None = None
    dev_fraction: float = 0.0
    test_fraction: float = 0.0
    seed: int = 0
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise StatpruneError(f"task kind {self.kind!r} is not one of {', '.join(KINDS)}")
        for name in ("dev_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise StatpruneError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.dev_fraction + self.test_fraction >= 1.0:
            raise StatpruneError("dev_fraction + test_fraction must be below 1")
        carving = self.dev_fraction > 0 or self.test_fraction > 0
        if carving != (self.split_from is not None):
            raise StatpruneError(
                "creating splits needs both a source split and a fraction: "
                "--split-from SPLIT with --dev-fraction and/or --test-fraction (task file: split_from, ...)"
            )
        if self.split_from is not None and SPLIT_STEMS.get(self.split_from) is None:
            raise StatpruneError(f"split_from {self.split_from!r} is not one of {', '.join(SPLITS)}")
        if self.max_length is not None and self.max_length < 2:
            raise StatpruneError(f"max_length must be ≥ 2, got {self.max_length}")


# ---- the task types ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _StoredRows:
    """The loader of a local task: its rows, already read (picklable)."""

    rows: tuple[tuple[str, tuple[Row, ...]], ...]

    def __call__(self, split: str) -> list[Row]:
        return [dict(r) for r in dict(self.rows)[split]]


class _Local:
    """What local tasks add: provenance, and errors on missing splits that name the files."""

    info: dict[str, Any]

    def provenance(self) -> dict[str, Any]:
        """Where the rows came from: path, content hash of the files read, columns and label ids."""
        return copy.deepcopy(self.info)

    def canonical_split(self, split: str) -> str:
        try:
            return super().canonical_split(split)  # type: ignore[misc]
        except StatpruneError as e:
            files = ", ".join(f"{s}: {', '.join(f)}" for s, f in self.info["splits"].items())
            want = SPLIT_STEMS.get(split, split)
            source = "train" if "train" in self.info["splits"] else next(iter(self.info["splits"]))
            carve = (
                f", or create it from another split: --split-from {source} --{want}-fraction 0.1 "
                f"(task file: split_from, {want}_fraction)"
                if want in ("dev", "test")
                else ""
            )
            raise StatpruneError(
                f"{e}. Files found in {self.info['path']}: {files}. Add a {want} file{carve}"
            ) from None


@dataclass(frozen=True)
class LocalTextTask(_Local, TextTask):
    info: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class LocalLMTask(_Local, LMTask):
    info: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


# ---- resolving a spec -------------------------------------------------------------------------------

_CONFIGURED: dict[str, Task] = {}


def is_local_spec(spec: str) -> bool:
    """Whether ``spec`` names local data (an existing path, or a data/task file name)."""
    p = Path(spec).expanduser()
    return p.suffix in (*DATA_SUFFIXES, TASK_FILE_SUFFIX) or p.exists()


def local_task(spec: str, options: LocalOptions | Mapping[str, Any] | None = None) -> Task:
    """The task over the data ``spec`` names, read with ``options`` over a task file's own.

    ``options`` as a mapping gives only some fields (checked once merged with the task file's).
    Tasks built with options by :func:`configure` are returned for the same ``spec`` afterwards.
    """
    if options is None and spec in _CONFIGURED:
        return _CONFIGURED[spec]
    path = Path(spec).expanduser()
    if not path.exists():
        raise StatpruneError(f"no such data file or folder: {spec} (a task is a registered name or {FORMS})")
    root, files, file_options, task_file = _resolve(path)
    if isinstance(options, LocalOptions):
        options = {k: v for k, v in dataclasses.asdict(options).items() if v != _DEFAULTS[k]}
    try:
        opts = LocalOptions(**{**file_options, **(options or {})})
    except (TypeError, StatpruneError) as e:
        raise StatpruneError(f"{task_file or spec}: {e}") from None
    return _build(spec, root, _files_key(files), opts, task_file, _stamp(files, task_file))


def configure(spec: str, options: LocalOptions | Mapping[str, Any]) -> Task:
    """Build ``spec`` with ``options`` and make later ``get_task(spec)`` calls in this process return it.

    This is how CLI flags (``--label-column``) reach the library code that looks tasks up by name.
    """
    task = local_task(spec, options)
    _CONFIGURED[spec] = task
    return task


_DEFAULTS = dataclasses.asdict(LocalOptions())


def _resolve(path: Path) -> tuple[Path, dict[str, list[Path]], dict[str, Any], Path | None]:
    """(data root, split → files, options of the task file, task file) of a path."""
    if path.is_file() and path.suffix == TASK_FILE_SUFFIX:
        return _read_task_file(path)
    return path.resolve(), discover(path), {}, None


def discover(path: Path) -> dict[str, list[Path]]:
    """Split → data files of a file or a folder (see the module doc); errors name what was found."""
    path = path.resolve()
    if path.is_file():
        _check_suffix(path)
        return {SPLIT_STEMS.get(path.stem.lower(), "train"): [path]}
    found: dict[str, list[Path]] = {}
    others: list[str] = []
    for p in sorted(path.iterdir()):
        split = SPLIT_STEMS.get((p.stem if p.is_file() else p.name).lower())
        if p.is_file() and split and p.suffix in DATA_SUFFIXES:
            files = [p]
        elif p.is_dir() and split:
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in DATA_SUFFIXES)
            if not files:
                raise StatpruneError(f"{p} has no data files ({', '.join(DATA_SUFFIXES)})")
        else:
            if not p.name.startswith("."):
                others.append(p.name + ("/" if p.is_dir() else ""))
            continue
        if split in found:
            clash = ", ".join(f.name for f in found[split] + files)
            raise StatpruneError(f"{path}: more than one source for split {split!r} ({clash}); keep one")
        found[split] = files
    if not found:
        raise StatpruneError(
            f"{path} has no split files: name them train, dev (or validation) and test with an extension "
            f"of {', '.join(DATA_SUFFIXES)}, or make folders of those names; found: {', '.join(others) or 'nothing'}"
        )
    return found


def _check_suffix(path: Path) -> None:
    if path.suffix not in DATA_SUFFIXES:
        raise StatpruneError(f"{path}: unknown data file type; use one of {', '.join(DATA_SUFFIXES)}")


TASK_FILE_KEYS = {"data", "splits", *(f.name for f in dataclasses.fields(LocalOptions))}


def _read_task_file(path: Path) -> tuple[Path, dict[str, list[Path]], dict[str, Any], Path]:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise StatpruneError(f"cannot read task file {path}: {e}") from None
    unknown = sorted(set(raw) - TASK_FILE_KEYS)
    if unknown:
        raise StatpruneError(
            f"{path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(TASK_FILE_KEYS))}"
        )
    base = path.resolve().parent
    if ("data" in raw) == ("splits" in raw):
        raise StatpruneError(f'{path}: give either data = "file or folder" or a [splits] table')
    if "data" in raw:
        root = (base / str(raw["data"])).resolve()
        if not root.exists():
            raise StatpruneError(f"{path}: data {raw['data']!r} does not exist ({root})")
        files = discover(root)
    else:
        root, files = base, {}
        for split, value in dict(raw["splits"]).items():
            canon = SPLIT_STEMS.get(split)
            if canon is None:
                raise StatpruneError(f"{path}: split {split!r} is not one of {', '.join(SPLIT_STEMS)}")
            paths = [(base / str(v)).resolve() for v in (value if isinstance(value, list) else [value])]
            for p in paths:
                if not p.is_file():
                    raise StatpruneError(f"{path}: splits.{split}: no such file {p}")
                _check_suffix(p)
            files[canon] = paths
    values = {k: v for k, v in raw.items() if k not in ("data", "splits")}
    for key in ("labels", "metrics"):
        if key in values:
            values[key] = tuple(str(x) for x in values[key])
    return root, files, values, path.resolve()


def _files_key(files: dict[str, list[Path]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((s, tuple(str(p) for p in files[s])) for s in SPLITS if s in files)


def _stamp(files: dict[str, list[Path]], task_file: Path | None) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime, size) of every file: the cache of built tasks is keyed by it."""
    paths = sorted({str(p) for ps in files.values() for p in ps} | ({str(task_file)} if task_file else set()))
    return tuple((p, Path(p).stat().st_mtime_ns, Path(p).stat().st_size) for p in paths)


# ---- building the task ------------------------------------------------------------------------------


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=16)
def _build(
    spec: str,
    root: Path,
    files: tuple[tuple[str, tuple[str, ...]], ...],
    opts: LocalOptions,
    task_file: Path | None,
    stamp: tuple[tuple[str, int, int], ...],
) -> Task:
    raw: dict[str, list[Row]] = {}
    header: bool | None = None
    for split, paths in files:
        raw[split] = []
        for p in paths:
            rows, h = read_file(Path(p), opts.header)
            header = h if header is None else header
            raw[split] += rows
    everything = [r for rows in raw.values() for r in rows]
    if not everything:
        raise StatpruneError(f"{spec}: the data files hold no rows")
    layout = detect(
        everything, text=opts.text_column, pair=opts.text_pair_column, label=opts.label_column, kind=opts.kind
    )
    ids = None
    if layout.kind == "classification":
        ids = label_ids([r.get(layout.label) for r in everything], opts.labels)
    rows = {split: [_row(r, layout, ids, spec) for r in raw_rows] for split, raw_rows in raw.items()}
    created = _carve(rows, opts, spec) if opts.split_from else None
    order = tuple(s for s in SPLITS if s in rows)
    digests = {p: _sha256(p) for p, _, _ in stamp}  # sorted by path
    info = {
        "source": "local",
        "path": str(task_file or root),
        "content_sha256": hashlib.sha256("".join(digests.values()).encode()).hexdigest(),
        "files": digests,
        "splits": {s: [_shown(p, root) for p in dict(files)[s]] for s in dict(files)},
        "kind": layout.kind,
        "columns": {"text": layout.text, "text_pair": layout.pair, "label": layout.label},
        "header": header,
        "labels": ids,
        "created_splits": created,
    }
    log.info(
        "%s: %s task, text column %r%s%s; splits %s",
        spec, layout.kind, layout.text, f", pair {layout.pair!r}" if layout.pair else "",
        f", label {layout.label!r}" + (f" ({', '.join(f'{k}→{v}' for k, v in ids.items())})" if ids else "")
        if layout.label else "",
        ", ".join(f"{s} {len(rows[s])}" for s in order),
    )  # fmt: skip
    common = {
        "name": spec,
        "kind": layout.kind,
        "loader": _StoredRows(tuple((s, tuple(rows[s])) for s in order)),
        "splits": order,
        "description": opts.description or f"local data {info['path']}",
        "info": info,
    }
    if layout.kind == "lm":
        window = opts.max_length or LM_WINDOW
        return LocalLMTask(
            num_labels=0, metric_names=opts.metrics or ("perplexity",), flops_seq_len=float(window),
            max_length=window, separator="\n\n", **common,
        )  # fmt: skip
    length = opts.max_length or CLASSIFICATION_MAX_LENGTH
    metrics = opts.metrics or (
        ("accuracy", "f1") if layout.kind == "classification" else ("pearson", "spearman")
    )
    _check_metrics(layout.kind, metrics)
    return LocalTextTask(
        num_labels=len(ids) if ids else 1, metric_names=metrics,
        flops_seq_len=_estimate_tokens(rows.get("dev") or next(iter(rows.values())), length),
        max_length=length, **common,
    )  # fmt: skip


def _shown(path: str, root: Path) -> str:
    """A file as the user would name it: relative to the folder (or task file's folder) given."""
    p = Path(path)
    return str(p.relative_to(root)) if root.is_dir() and p.is_relative_to(root) else p.name


def _row(raw: Row, layout: Layout, ids: dict[str, int] | None, spec: str) -> Row:
    text = raw.get(layout.text)
    row: Row = {"text": "" if text is None else str(text)}
    if layout.pair:
        row["text_pair"] = str(raw.get(layout.pair) or "")
    if layout.label:
        value = raw.get(layout.label)
        if value in (None, ""):
            raise StatpruneError(f"{spec}: a row has no label in column {layout.label!r}: {raw}")
        if ids is not None:
            row["label"] = ids[label_key(value)]
        else:
            try:
                row["label"] = float(value)
            except (TypeError, ValueError):
                raise StatpruneError(f"{spec}: regression label {value!r} is not a number") from None
    return row


def _carve(rows: dict[str, list[Row]], opts: LocalOptions, spec: str) -> dict[str, Any]:
    """Move rows of ``split_from`` into new dev/test splits by a seeded hash of their text."""
    source = SPLIT_STEMS[opts.split_from or ""]
    targets = [s for s, f in (("dev", opts.dev_fraction), ("test", opts.test_fraction)) if f > 0]
    if source not in rows:
        raise StatpruneError(
            f"{spec}: cannot create splits from {source!r}: there is no such split ({', '.join(rows)})"
        )
    for t in targets:
        if t == source or t in rows:
            raise StatpruneError(f"{spec}: split {t!r} already exists; drop --{t}-fraction")
    out: dict[str, list[Row]] = {source: [], **{t: [] for t in targets}}
    for r in rows[source]:
        key = r["text"] + "\x1f" + r.get("text_pair", "")
        s = hash_split(key, seed=opts.seed, dev=opts.dev_fraction, test=opts.test_fraction)
        out[source if s == "train" else s].append(r)
    for s, part in out.items():
        if not part:
            raise StatpruneError(
                f"{spec}: creating splits left {s!r} empty ({len(rows[source])} rows in {source!r})"
            )
    rows.update(out)
    return {"from": source, "dev_fraction": opts.dev_fraction, "test_fraction": opts.test_fraction, "seed": opts.seed,
            "rows": {s: len(p) for s, p in out.items()}}  # fmt: skip


def _estimate_tokens(rows: list[Row], cap: int) -> float:
    """Mean tokens per example for the FLOPs model (≈1.3 tokens a word plus 3 specials; --seq-len overrides)."""
    words = [len(r["text"].split()) + len(r.get("text_pair", "").split()) for r in rows]
    return float(min(cap, round(1.3 * sum(words) / max(len(words), 1) + 3, 2)))


def _check_metrics(kind: str, metrics: tuple[str, ...]) -> None:
    from statprune.evaluation.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS

    table = CLASSIFICATION_METRICS if kind == "classification" else REGRESSION_METRICS
    bad = [m for m in metrics if m not in table]
    if bad:
        raise StatpruneError(f"unknown {kind} metric(s) {', '.join(bad)}; known: {', '.join(sorted(table))}")


def data_identity(task: Task) -> dict[str, Any] | None:
    """What cache keys (fine-tunes, dense metrics) must add for local data (content, columns, labels)."""
    if not isinstance(task, _Local):
        return None
    return {k: v for k, v in task.provenance().items() if k not in ("path", "files", "splits")}


def label_names(task: Task) -> tuple[str, ...] | None:
    """A local classification task's label names in id order (None for other tasks)."""
    ids = task.info.get("labels") if isinstance(task, _Local) else None
    return tuple(sorted(ids, key=ids.get)) if ids else None


def check_label_names(config: Any, task: Task) -> None:
    """A checkpoint trained with other label ids than the task's would be scored against wrong labels.

    ``config.id2label`` names the labels a fine-tune was trained on (default ``LABEL_i`` names say nothing).
    """
    names = label_names(task)
    saved = getattr(config, "id2label", None) or {}
    saved = {int(k): str(v) for k, v in saved.items()}
    if not names or not saved or all(v == f"LABEL_{k}" for k, v in saved.items()):
        return
    if [saved.get(i) for i in range(len(names))] != list(names):
        theirs = ", ".join(f"{v}→{k}" for k, v in sorted(saved.items()))
        ours = ", ".join(f"{n}→{i}" for i, n in enumerate(names))
        raise StatpruneError(
            f"the model was trained with labels {theirs}, but task {task.name!r} maps {ours}; give the task "
            "the model's label order (task file: labels = [...])"
        )
