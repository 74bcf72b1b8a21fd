"""Extractive QA: SQuAD v1.1 (``squad``) and v2.0 (``squad_v2``) as windows with answer positions.

Rows (hub schema of ``rajpurkar/squad`` / ``rajpurkar/squad_v2``): ``id, title, context, question,
answers = {text: [...], answer_start: [...]}``; v2's unanswerable questions have empty answers. Local
files may also be the official nested JSON (``train-v1.1.json``, ``dev-v2.0.json``: data → paragraphs
→ qas), which is flattened to the same rows (see :mod:`statprune.data.hub` for where files go).

A question and its context become one or more windows of at most ``max_length`` tokens (384):
``[CLS] question [SEP] context-part [SEP]``; consecutive windows share ``stride`` context tokens (128;
transformers' convention, the overlap). Each window knows the character span in the context of every
context token (``offsets``, None for question/special tokens), so predicted token spans map back to
text. Training/calibration labels: the first gold answer's first and last token when the window
contains the whole answer; otherwise — and for unanswerable questions — both point at [CLS], the
no-answer position. Evaluation (:mod:`statprune.evaluation.squad`) needs :meth:`QATask.features`;
:meth:`QATask.encode` gives the tensors for batches (``start_positions``/``end_positions`` are the
labels Kwon's Fisher needs, stacked by :func:`statprune.data.collate.collate`).

``flops_seq_len`` is Kwon et al.'s SQuAD average (170 tokens), not the window length.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from statprune.data.hub import HubSource, first_column, load_split, source_provenance
from statprune.data.tasks import TASKS, Row, Task
from statprune.errors import StatpruneError

if TYPE_CHECKING:
    import torch

MAX_LENGTH = 384
STRIDE = 128
FLOPS_SEQ_LEN = 170.0  # Kwon et al.'s average SQuAD length
CHUNK = 1024  # examples tokenized per call (bounds the memory of the tokenizer's output)
COLUMNS = ("id", "context", "question", "answers")  # or SQuAD's official nested JSON

SOURCES = {
    "squad": HubSource(
        "rajpurkar/squad",
        None,
        {"train": ("train", "train-v1.1"), "dev": ("validation", "dev", "dev-v1.1")},
        COLUMNS,
    ),
    "squad_v2": HubSource(
        "rajpurkar/squad_v2",
        None,
        {"train": ("train", "train-v2.0"), "dev": ("validation", "dev", "dev-v2.0")},
        COLUMNS,
    ),
}


def flatten_official(articles: list[Row]) -> list[Row]:
    """The official nested SQuAD JSON (articles → paragraphs → qas) as flat hub-schema rows."""
    rows = []
    for article in articles:
        title = article.get("title", "")
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                rows.append(
                    {
                        "id": qa["id"],
                        "title": title,
                        "context": para["context"],
                        "question": qa["question"],
                        "answers": answers,
                    }
                )
    return rows


def _answers(value: Any, task_name: str) -> dict[str, list]:
    """``{text: [...], answer_start: [...]}`` from the hub dict, a list of answer dicts, or JSON text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise StatpruneError(f"task {task_name!r}: answers {value[:80]!r} is not JSON") from None
    if isinstance(value, list):  # official style: [{"text": ..., "answer_start": ...}, ...]
        value = {"text": [a["text"] for a in value], "answer_start": [a["answer_start"] for a in value]}
    if not isinstance(value, dict) or "text" not in value or "answer_start" not in value:
        raise StatpruneError(
            f"task {task_name!r}: answers must have 'text' and 'answer_start', got {value!r}"
        )
    texts, starts = list(value["text"]), [int(s) for s in value["answer_start"]]
    if len(texts) != len(starts):
        raise StatpruneError(f"task {task_name!r}: answers have {len(texts)} texts but {len(starts)} starts")
    return {"text": [str(t) for t in texts], "answer_start": starts}


def squad_rows(
    split: str, *, data_name: str, version_2: bool, data_dir: str | Path | None = None
) -> list[Row]:
    """Flat rows ``id, title, context, question, answers`` of one canonical split."""
    raw = load_split(data_name, SOURCES["squad_v2" if version_2 else "squad"], split, directory=data_dir)
    if raw and "paragraphs" in raw[0]:
        raw = flatten_official(raw)
    rows = []
    for i, r in enumerate(raw):
        row = {
            "id": str(r.get("id", i)),
            "title": str(r.get("title", "")),
            "context": str(first_column(r, ("context",), task_name=data_name, what="context")),
            "question": str(first_column(r, ("question",), task_name=data_name, what="question")),
            "answers": _answers(
                first_column(r, ("answers",), task_name=data_name, what="answers"), data_name
            ),
        }
        if not row["answers"]["text"] and not version_2:
            raise StatpruneError(
                f"task {data_name!r}: question {row['id']} has no answer; SQuAD v1.1 questions are all "
                "answerable (use squad_v2 for unanswerable ones)"
            )
        rows.append(row)
    return rows


def answer_positions(
    offsets: list[tuple[int, int] | None], answers: dict[str, list], cls_index: int
) -> tuple[int, int]:
    """First and last token of the first gold answer in one window, or (cls, cls) when it is not inside.

    ``offsets`` are context character spans per token (None outside the context). The start token is
    the last context token starting at or before the answer's first character, the end token the first
    one ending at or after its last character.
    """
    if not answers["text"]:
        return cls_index, cls_index
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    ctx = [j for j, o in enumerate(offsets) if o is not None]
    if not ctx or offsets[ctx[0]][0] > start_char or offsets[ctx[-1]][1] < end_char:  # type: ignore[index]
        return cls_index, cls_index
    start = max(j for j in ctx if offsets[j][0] <= start_char)  # type: ignore[index]
    end = min(j for j in ctx if offsets[j][1] >= end_char)  # type: ignore[index]
    return start, end


@dataclass(frozen=True)
class QAFeature:
    """One window of one example."""

    example_index: int  # row index in QAFeatures.examples
    input_ids: list[int]
    token_type_ids: list[int] | None
    offsets: list[tuple[int, int] | None]  # character span in the context; None outside it ([] if dropped)
    cls_index: int
    start_position: int
    end_position: int


@dataclass(frozen=True)
class QAFeatures:
    """The rows of a split and their windows, what evaluation post-processing needs."""

    examples: list[Row]
    features: list[QAFeature] = field(repr=False)

    def tensors(self) -> list[dict[str, torch.Tensor]]:
        import torch

        out = []
        for f in self.features:
            item = {"input_ids": torch.tensor(f.input_ids, dtype=torch.long)}
            if f.token_type_ids is not None:
                item["token_type_ids"] = torch.tensor(f.token_type_ids, dtype=torch.long)
            item["start_positions"] = torch.tensor(f.start_position, dtype=torch.long)
            item["end_positions"] = torch.tensor(f.end_position, dtype=torch.long)
            out.append(item)
        return out


@dataclass(frozen=True)
class QATask(Task):
    """Extractive QA over windows; ``max_length`` is the window length, ``stride`` the overlap."""

    stride: int = STRIDE
    version_2: bool = False

    def features(
        self, tokenizer: Any, split: str, max_length: int | None = None, stride: int | None = None
    ) -> QAFeatures:
        """Windows with offsets and answer positions for every question of ``split``.

        ``stride`` (context tokens shared by consecutive windows) defaults to the task's, capped at a
        third of the window, so a shorter ``max_length`` still gives valid windows.
        """
        rows = self.examples(split)
        feats = [f for chunk in self._chunks(tokenizer, rows, max_length, stride, True) for f in chunk]
        return QAFeatures(examples=rows, features=feats)

    def encode(
        self, tokenizer: Any, split: str, max_length: int | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """One dict per window: ``input_ids``, ``token_type_ids`` (if the tokenizer has them),
        scalar ``start_positions`` and ``end_positions``.

        Offsets are dropped chunk by chunk: for SQuAD's 88k training questions they would take GBs.
        """
        rows = self.examples(split)
        out: list[dict[str, torch.Tensor]] = []
        for chunk in self._chunks(tokenizer, rows, max_length, None, False):
            out.extend(QAFeatures(examples=rows, features=chunk).tensors())
        return out

    def _chunks(
        self, tokenizer: Any, rows: list[Row], max_length: int | None, stride: int | None, offsets: bool
    ) -> Iterator[list[QAFeature]]:
        window = int(max_length or self.max_length)
        # default overlap: the task's (128), at most a third of a shorter window
        overlap = int(min(self.stride, window // 3) if stride is None else stride)
        if not getattr(tokenizer, "is_fast", False):
            raise StatpruneError("QA tasks need a fast tokenizer (character offsets); this one is not fast")
        if not 0 <= overlap < window // 2:
            raise StatpruneError(f"stride {overlap} must be ≥ 0 and below half the window ({window})")
        for lo in range(0, len(rows), CHUNK):
            yield _windows(tokenizer, rows, lo, min(lo + CHUNK, len(rows)), window, overlap, offsets)


def _windows(
    tokenizer: Any, rows: list[Row], lo: int, hi: int, window: int, overlap: int, keep_offsets: bool = True
) -> list[QAFeature]:
    # Leading spaces of questions only waste window room (some SQuAD questions have many).
    questions = [r["question"].lstrip() for r in rows[lo:hi]]
    contexts = [r["context"] for r in rows[lo:hi]]
    try:
        enc = tokenizer(
            questions,
            contexts,
            truncation="only_second",
            max_length=window,
            stride=overlap,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
    except Exception as e:  # tokenizers raises plain exceptions when the question leaves no room
        raise StatpruneError(
            f"cannot cut questions {lo}…{hi - 1} into windows of {window} tokens with stride {overlap}: {e}"
        ) from None
    cls_id = getattr(tokenizer, "cls_token_id", None)
    out = []
    for i, ids in enumerate(enc["input_ids"]):
        example_index = lo + enc["overflow_to_sample_mapping"][i]
        seq = enc.sequence_ids(i)
        offsets = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][i], seq)]
        cls_index = ids.index(cls_id) if cls_id is not None and cls_id in ids else 0
        start, end = answer_positions(offsets, rows[example_index]["answers"], cls_index)
        out.append(
            QAFeature(
                example_index=example_index,
                input_ids=list(ids),
                token_type_ids=list(enc["token_type_ids"][i]) if "token_type_ids" in enc else None,
                offsets=offsets if keep_offsets else [],
                cls_index=cls_index,
                start_position=start,
                end_position=end,
            )
        )
    return out


def squad_task(
    version_2: bool = False, *, name: str | None = None, data_dir: str | Path | None = None
) -> QATask:
    """SQuAD v1.1 (or v2.0) over the hub (or ``$STATPRUNE_DATA_*``), or over ``data_dir`` when given."""
    base = "squad_v2" if version_2 else "squad"
    metrics = ("exact_match", "f1") + (("has_ans_f1", "no_ans_exact_match", "best_f1") if version_2 else ())
    return QATask(
        name=name or base,
        kind="qa",
        num_labels=2,  # start and end logits per token
        metric_names=metrics,
        flops_seq_len=FLOPS_SEQ_LEN,
        max_length=MAX_LENGTH,
        loader=functools.partial(squad_rows, data_name=base, version_2=version_2, data_dir=data_dir),
        splits=("train", "dev"),
        description="SQuAD v2.0: extractive QA with unanswerable questions"
        if version_2
        else "SQuAD v1.1: extractive QA (answer spans in Wikipedia paragraphs)",
        version_2=version_2,
        origin=functools.partial(source_provenance, base, SOURCES[base], data_dir),
    )


TASKS.add("squad", squad_task())
TASKS.add("squad_v2", squad_task(version_2=True))
