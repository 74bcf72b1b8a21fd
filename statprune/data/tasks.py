"""Task types and the task registry.

A task is a named data source plus what a model needs to know about it (kind, labels, metrics, the
sequence length of the FLOPs model). Rows come from a loader function, so a new task — packaged asset,
hub dataset or user file — is a loader plus one of the task types below, not a new class:

* :class:`TextTask` — single sentences or sentence pairs (``text`` / ``text_pair``) with a class label
  (classification) or a real-valued target (regression): movie sentiment, GLUE, STS-B.
* :class:`LMTask` — documents joined and cut into non-overlapping token windows: SOTU, WikiText-2.

Extractive QA (SQuAD) needs offsets and start/end labels; it subclasses :class:`Task` and implements
``encode`` (the collate function already stacks any per-example scalar such as ``start_positions``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from statprune.errors import StatpruneError
from statprune.registry import Registry

if TYPE_CHECKING:
    import datasets
    import torch

TaskKind = Literal["classification", "regression", "lm", "qa"]
Row = dict[str, Any]
Loader = Callable[[str], list[Row]]  # canonical split name -> raw rows

SPLITS: tuple[str, ...] = ("train", "dev", "test")
SPLIT_ALIASES: dict[str, str] = {"validation": "dev", "valid": "dev", "val": "dev"}


@dataclass(frozen=True)
class Task:
    """A named task: metadata plus a loader of raw rows per split; subclasses say how to tokenize."""

    name: str
    kind: TaskKind
    num_labels: int  # 0 for lm, 1 for regression
    metric_names: tuple[str, ...]
    flops_seq_len: float  # tokens per example in the FLOPs model: mean dev length, or the LM window
    max_length: int  # default truncation / window length for encode()
    loader: Loader = field(repr=False, compare=False)
    splits: tuple[str, ...] = SPLITS
    description: str = ""
    # () -> the provenance dict of the data the loader reads (see provenance()); None: unknown
    origin: Callable[[], dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    def provenance(self) -> dict[str, Any]:
        """Which data this task reads, for records and cache keys (see :mod:`statprune.data.origin`).

        Always has ``source`` (``asset`` | ``hub`` | ``local`` | ``unknown``) and ``content_sha256``
        (hash of the files read, None where unknown), plus ``id``/``version`` (asset), ``id``/
        ``config``/``revision`` (hub) or ``path`` (local). Resolved at call time, so a data folder
        named by an environment variable is the one a run reads. A new task type passes an
        ``origin`` callable (e.g. ``functools.partial(local_provenance, path)``) or overrides this.
        """
        if self.origin is None:
            return {"source": "unknown", "content_sha256": None}
        return self.origin()

    def canonical_split(self, split: str) -> str:
        name = SPLIT_ALIASES.get(split, split)
        if name not in self.splits:
            aliases = [a for a, s in SPLIT_ALIASES.items() if s in self.splits]
            raise StatpruneError(
                f"task {self.name!r} has no split {split!r}; valid splits: {', '.join(self.splits)}"
                + (f" (aliases: {', '.join(aliases)})" if aliases else "")
            )
        return name

    def examples(self, split: str) -> list[Row]:
        """Raw rows of a split: ``text`` (and ``text_pair``), ``label``, plus task-specific fields."""
        return [dict(row) for row in self.loader(self.canonical_split(split))]

    def encode(
        self, tokenizer: Any, split: str, max_length: int | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """One dict of unpadded 1-D tensors (and scalar ``labels``) per example; see :mod:`.collate`."""
        raise NotImplementedError

    def to_dataset(self, split: str) -> datasets.Dataset:
        """The raw rows as a ``datasets.Dataset`` (imports ``datasets`` only here)."""
        import datasets

        return datasets.Dataset.from_list(self.examples(split))

    def measure_seq_len(self, tokenizer: Any, split: str = "dev", max_length: int | None = None) -> float:
        """Mean encoded length of a split with a given tokenizer (what ``flops_seq_len`` records)."""
        encoded = self.encode(tokenizer, split, max_length)
        return sum(len(e["input_ids"]) for e in encoded) / max(len(encoded), 1)


@dataclass(frozen=True)
class TextTask(Task):
    """Sentence or sentence-pair classification/regression; labels are long (classes) or float."""

    def encode(
        self, tokenizer: Any, split: str, max_length: int | None = None
    ) -> list[dict[str, torch.Tensor]]:
        import torch

        rows = self.examples(split)
        if not rows:
            return []
        texts = [r["text"] for r in rows]
        pairs = [r["text_pair"] for r in rows] if "text_pair" in rows[0] else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length or self.max_length)
        label_dtype = torch.float32 if self.kind == "regression" else torch.long
        out = []
        for i, row in enumerate(rows):
            item = {"input_ids": torch.tensor(enc["input_ids"][i], dtype=torch.long)}
            if "token_type_ids" in enc:
                item["token_type_ids"] = torch.tensor(enc["token_type_ids"][i], dtype=torch.long)
            item["labels"] = torch.tensor(row["label"], dtype=label_dtype)
            out.append(item)
        return out


@dataclass(frozen=True)
class LMTask(Task):
    """Language modelling: a split's documents joined by ``separator``, tokenized, cut into windows.

    Windows do not overlap and the tail shorter than a window is dropped, so every window has exactly
    ``max_length`` tokens and perplexities are comparable across models with the same tokenizer.
    """

    separator: str = "\n\n"

    @classmethod
    def windowed(cls, window: int, **fields: Any) -> LMTask:
        """An LM task scored by perplexity over windows of ``window`` tokens, which is also the
        sequence length of its FLOPs model."""
        fields.setdefault("metric_names", ("perplexity",))
        return cls(kind="lm", num_labels=0, flops_seq_len=float(window), max_length=window, **fields)

    def text(self, split: str) -> str:
        return self.separator.join(r["text"] for r in self.examples(split))

    def token_ids(self, tokenizer: Any, split: str) -> torch.Tensor:
        """All tokens of the split's joined text (no special tokens), as one 1-D long tensor.

        Fast tokenizers are called through their backend: same ids, without transformers' warning
        that the text is longer than the model (it is cut into windows next).
        """
        import torch

        text = self.text(split)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            ids = backend.encode(text, add_special_tokens=False).ids
        else:
            ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)

    def encode(
        self, tokenizer: Any, split: str, max_length: int | None = None
    ) -> list[dict[str, torch.Tensor]]:
        window = max_length or self.max_length
        ids = self.token_ids(tokenizer, split)
        n = ids.numel() // window
        windows = ids[: n * window].view(n, window)
        return [{"input_ids": w, "labels": w} for w in windows]

    def measure_seq_len(self, tokenizer: Any, split: str = "dev", max_length: int | None = None) -> float:
        return float(max_length or self.max_length)


def hash_split(key: str, *, seed: int = 0, dev: float = 0.1, test: float = 0.1) -> str:
    """Assign a row to train/dev/test from a hash of its id: stable across runs, file order and machines.

    The seed salts the hash, so another seed gives another (equally stable) partition.
    """
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < dev:
        return "dev"
    return "test" if u < dev + test else "train"


TASKS: Registry[Task] = Registry("task")


def get_task(name: str) -> Task:
    """A registered task by name, else local data at that path (:mod:`statprune.data.local`).

    Unknown names list the registered ones with a did-you-mean, and the local forms.
    """
    import statprune.data  # noqa: F401  (registers the built-in tasks)
    from statprune.data.local import FORMS, is_local_spec, local_task

    if name in TASKS:
        return TASKS.get(name)
    if is_local_spec(name):
        return local_task(name)
    raise StatpruneError(f"{TASKS.unknown_message(name)}; or {FORMS}")
