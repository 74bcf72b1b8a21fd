"""GLUE tasks of the STAT / Kwon et al. tables: SST-2, MNLI, QQP, QNLI, STS-B, MRPC.

Rows come from the hub dataset ``nyu-mll/glue`` or from local files with its columns (see
:mod:`statprune.data.hub`); the original GLUE TSV columns (``sentence1``/``gold_label``, ``#1 String``,
``is_duplicate``, ``score``, …) are accepted too, and string labels (``entailment``) map to the hub ids.
Splits: ``train`` and ``dev`` (the hub's ``validation``; GLUE test labels are hidden, so papers report
dev). MNLI's ``dev`` is the matched set; ``dev_mismatched`` is the mismatched one.

Label ids are the hub's (MNLI: 0 entailment, 1 neutral, 2 contradiction). A checkpoint trained with
another order needs the task's labels in *its* order: ``glue/mnli-textattack`` gives MNLI in the order
of ``textattack/*-MNLI`` checkpoints (0 contradiction, 1 entailment, 2 neutral — transformers' legacy
GLUE processor order; QData/TextAttack#684), and ``glue/stsb-textattack`` STS-B with scores divided
by 5 (textattack trained STS-B on 0…1 targets; correlations are unchanged, but Kwon's Fisher uses the
loss, which is not).

``flops_seq_len`` is Kwon et al.'s average dev length per task (BERT-uncased tokens, special tokens
included), so FLOPs targets match the paper's.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from statprune.data.hub import HubSource, first_column, load_split, source_provenance
from statprune.data.tasks import TASKS, Row, TaskKind, TextTask
from statprune.errors import StatpruneError

HUB_PATH = "nyu-mll/glue"
MAX_LENGTH = 128  # Kwon et al.'s (and run_glue's) max_seq_length for GLUE
TRAIN_DEV = {"train": ("train",), "dev": ("validation", "dev")}


@dataclass(frozen=True)
class GlueSpec:
    """What one GLUE task's rows look like: candidate columns (hub name first), labels, metrics."""

    config: str  # hub configuration name, e.g. "sst2"
    text: tuple[str, ...]
    pair: tuple[str, ...] | None
    label: tuple[str, ...]
    label_names: tuple[str, ...] | None  # None for regression
    metrics: tuple[str, ...]
    flops_seq_len: float
    splits: tuple[tuple[str, tuple[str, ...]], ...] = tuple(TRAIN_DEV.items())
    description: str = ""

    @property
    def kind(self) -> TaskKind:
        return "regression" if self.label_names is None else "classification"

    @property
    def source(self) -> HubSource:
        columns = (self.text[0], *(self.pair[:1] if self.pair else ()), self.label[0])
        return HubSource(HUB_PATH, self.config, dict(self.splits), columns)


GLUE: dict[str, GlueSpec] = {
    s.config: s
    for s in (
        GlueSpec(
            "sst2", ("sentence",), None, ("label",), ("negative", "positive"), ("accuracy",), 25.16,
            description="SST-2: binary sentiment of movie-review sentences",
        ),
        GlueSpec(
            "mnli", ("premise", "sentence1"), ("hypothesis", "sentence2"), ("label", "gold_label"),
            ("entailment", "neutral", "contradiction"), ("accuracy",), 39.05,
            splits=(
                ("train", ("train",)),
                ("dev", ("validation_matched", "dev_matched", "validation", "dev")),
                ("dev_mismatched", ("validation_mismatched", "dev_mismatched")),
            ),
            description="MNLI: premise/hypothesis entailment, 3 classes; dev = matched, dev_mismatched",
        ),
        GlueSpec(
            "qqp", ("question1",), ("question2",), ("label", "is_duplicate"),
            ("not_duplicate", "duplicate"), ("accuracy", "f1"), 30.55,
            description="QQP: are two Quora questions duplicates (F1 of 'duplicate')",
        ),
        GlueSpec(
            "qnli", ("question",), ("sentence",), ("label",), ("entailment", "not_entailment"),
            ("accuracy",), 50.97,
            description="QNLI: does the sentence answer the question",
        ),
        GlueSpec(
            "stsb", ("sentence1",), ("sentence2",), ("label", "score"), None, ("pearson", "spearman"),
            31.47,
            description="STS-B: sentence similarity 0…5 (regression)",
        ),
        GlueSpec(
            "mrpc", ("sentence1", "#1 String"), ("sentence2", "#2 String"), ("label", "Quality"),
            ("not_equivalent", "equivalent"), ("accuracy", "f1"), 53.24,
            description="MRPC: are two news sentences paraphrases (F1 of 'equivalent')",
        ),
    )
}  # fmt: skip

# label order of textattack/*-MNLI checkpoints (model output i means this label)
TEXTATTACK_MNLI_ORDER = ("contradiction", "entailment", "neutral")


def parse_label(value: Any, names: tuple[str, ...], *, task_name: str) -> int:
    """A class id (int, integral float, digit string or label name) checked against the label names."""
    idx: int | None = None
    if isinstance(value, bool):
        idx = int(value)
    elif isinstance(value, int):
        idx = value
    elif isinstance(value, float) and value.is_integer():
        idx = int(value)
    elif isinstance(value, str):
        v = value.strip()
        if v in names:
            idx = names.index(v)
        elif re.fullmatch(r"-?\d+", v):
            idx = int(v)
    if idx is None:
        raise StatpruneError(
            f"task {task_name!r}: label {value!r} is not one of {', '.join(names)} or 0…{len(names) - 1}"
        )
    if not 0 <= idx < len(names):
        hint = " (GLUE test splits are unlabelled: -1)" if idx == -1 else ""
        raise StatpruneError(f"task {task_name!r}: label {value!r} outside 0…{len(names) - 1}{hint}")
    return idx


def _score(value: Any, task_name: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x) or x < 0:  # -1 marks the hidden test labels
        raise StatpruneError(f"task {task_name!r}: regression label {value!r} is not a score ≥ 0")
    return x


def glue_rows(
    spec: GlueSpec,
    split: str,
    *,
    data_name: str,
    data_dir: str | Path | None = None,
    label_order: tuple[str, ...] | None = None,
    label_scale: float = 1.0,
) -> list[Row]:
    """Rows ``id, text[, text_pair], label`` of one canonical split, labels in the task's order."""
    remap = None
    if label_order is not None and spec.label_names is not None:  # checked by glue_task
        remap = [label_order.index(n) for n in spec.label_names]
    out = []
    for i, raw in enumerate(load_split(data_name, spec.source, split, directory=data_dir)):
        row: Row = {"id": raw.get("idx", raw.get("id", i))}
        row["text"] = str(first_column(raw, spec.text, task_name=data_name, what="sentence"))
        if spec.pair is not None:
            row["text_pair"] = str(first_column(raw, spec.pair, task_name=data_name, what="second sentence"))
        value = first_column(raw, spec.label, task_name=data_name, what="label")
        if spec.label_names is None:
            row["label"] = _score(value, data_name) * label_scale
        else:
            idx = parse_label(value, spec.label_names, task_name=data_name)
            row["label"] = remap[idx] if remap is not None else idx
        out.append(row)
    return out


def glue_task(
    config: str,
    *,
    name: str | None = None,
    data_dir: str | Path | None = None,
    label_order: tuple[str, ...] | None = None,
    label_scale: float = 1.0,
    description: str | None = None,
) -> TextTask:
    """A GLUE task over the hub (or ``$STATPRUNE_DATA_*``), or over ``data_dir`` when given.

    ``label_order`` lists the label names in a checkpoint's output order; ``label_scale`` multiplies
    regression targets. ``name`` defaults to ``glue/<config>``; data is looked up under that base name.
    """
    try:
        spec = GLUE[config]
    except KeyError:
        raise StatpruneError(f"unknown GLUE task {config!r}; known: {', '.join(GLUE)}") from None
    if label_order is not None and (
        spec.label_names is None or sorted(label_order) != sorted(spec.label_names)
    ):
        raise StatpruneError(f"label_order {label_order} is not a permutation of {spec.label_names}")
    base = f"glue/{config}"
    loader = functools.partial(
        glue_rows, spec, data_name=base, data_dir=data_dir, label_order=label_order, label_scale=label_scale
    )
    return TextTask(
        name=name or base,
        kind=spec.kind,
        num_labels=1 if spec.label_names is None else len(spec.label_names),
        metric_names=spec.metrics,
        flops_seq_len=spec.flops_seq_len,
        max_length=MAX_LENGTH,
        loader=loader,
        splits=tuple(s for s, _ in spec.splits),
        description=description or spec.description,
        origin=functools.partial(source_provenance, base, spec.source, data_dir),
    )


for _config in GLUE:
    TASKS.add(f"glue/{_config}", glue_task(_config))
TASKS.add(
    "glue/mnli-textattack",
    glue_task(
        "mnli",
        name="glue/mnli-textattack",
        label_order=TEXTATTACK_MNLI_ORDER,
        description="MNLI with labels in textattack/*-MNLI order (0 contradiction, 1 entailment, 2 neutral)",
    ),
)
TASKS.add(
    "glue/stsb-textattack",
    glue_task(
        "stsb",
        name="glue/stsb-textattack",
        label_scale=0.2,
        description="STS-B with scores / 5 (0…1), the targets textattack/*-STS-B checkpoints were trained on",
    ),
)
