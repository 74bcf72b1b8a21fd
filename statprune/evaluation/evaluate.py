"""Evaluate an in-memory model on a task split: classification/regression metrics or LM perplexity.

The model is any transformers model whose output has ``logits``: (examples × classes) for
classification, (examples × 1) for regression, (examples × tokens × vocab) for language modelling.
Pruned models are ordinary transformers models, so the same function scores dense and pruned ones.

Classification/regression examples are sorted by length (longest first, so an out-of-memory shows at
once) to cut padding; padded positions are masked, so the order does not change the predictions.
Perplexity is exp of the token-weighted mean NLL over non-overlapping windows of ``max_length``
tokens; within a window every token but the first is predicted from its prefix in that window.
Extractive QA (start/end logits, span post-processing) is delegated to :mod:`.squad`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from statprune.errors import StatpruneError
from statprune.evaluation.metrics import (
    classification_metrics,
    metric_names_for,
    perplexity,
    regression_metrics,
)
from statprune.runtime import MODEL_INPUTS, check_positions, pad_token_id

if TYPE_CHECKING:
    from statprune.data.tasks import Task

SUPPORTED_KINDS = ("classification", "regression", "lm", "qa")


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    task: Task | str,
    split: str = "test",
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    limit: int | None = None,
) -> dict[str, float]:
    """Score ``model`` on ``split`` of ``task``; returns metrics plus ``num_examples`` and ``num_tokens``.

    ``limit`` scores only the first N examples of the split, or for language modelling the first N
    windows (``num_examples`` is then at most N).

    ``max_length`` is the truncation length (classification/regression) or the window length (LM;
    reported as ``window``); ``None`` takes the task's default. ``device=None`` evaluates where the
    model is; otherwise the model is moved there. ``num_tokens`` counts the real (unpadded) input
    tokens, and for LM the scored (predicted) tokens that the perplexity averages over.
    """
    from statprune.data import get_task

    if isinstance(task, str):
        task = get_task(task)
    if task.kind not in SUPPORTED_KINDS:
        raise StatpruneError(
            f"evaluation supports {', '.join(SUPPORTED_KINDS)} tasks; {task.name!r} is {task.kind!r}"
        )
    if batch_size < 1:
        raise StatpruneError(f"batch_size must be ≥ 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise StatpruneError(f"limit must be ≥ 1, got {limit}")
    if limit is not None and task.kind != "lm":  # rows = examples: skip tokenizing the rest
        task = first_rows(task, task.canonical_split(split), limit)
    length = int(max_length if max_length is not None else task.max_length)
    if length < 2:
        raise StatpruneError(f"max_length must be ≥ 2, got {length}")
    check_positions(getattr(model, "config", None), length, "max_length")
    if device is not None:
        model.to(device)
    dev = model_device(model)
    if task.kind == "qa":  # windows, offsets and span post-processing: statprune.evaluation.squad
        from statprune.evaluation.squad import evaluate_qa

        return evaluate_qa(
            model, tokenizer, task, split, batch_size=batch_size, max_length=length, progress=progress
        )
    examples = task.encode(tokenizer, split, length)[:limit]
    if not examples:
        raise StatpruneError(f"split {split!r} of task {task.name!r} has no examples")
    pad_id = pad_token_id(tokenizer)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if task.kind == "lm":
                return _perplexity(
                    model, examples, batch_size, pad_id, dev, length, progress, task.name, split
                )
            return _predict_and_score(model, task, examples, batch_size, pad_id, dev, progress, split)
    finally:
        model.train(was_training)


def _predict_and_score(
    model: torch.nn.Module,
    task: Task,
    examples: list[dict[str, torch.Tensor]],
    batch_size: int,
    pad_id: int,
    dev: torch.device,
    progress: bool,
    split: str,
) -> dict[str, float]:
    from statprune.data.collate import collate
    from statprune.data.local import check_label_names

    check_label_names(getattr(model, "config", None), task)
    expected = 1 if task.kind == "regression" else task.num_labels
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    outputs = np.empty((len(examples), expected), dtype=np.float64)
    labels = np.empty(len(examples), dtype=np.float64)
    num_tokens = 0
    with progress_bar(len(examples), f"eval {task.name}/{split}", progress) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = collate([examples[i] for i in idx], pad_id)
            logits = _logits(model, batch, dev)
            if logits.dim() != 2 or logits.shape[-1] != expected:
                raise StatpruneError(
                    f"model outputs logits of shape {tuple(logits.shape)}, but {task.kind} task "
                    f"{task.name!r} needs (batch, {expected}); load the model with task={task.name!r}"
                )
            outputs[idx] = logits.float().cpu().numpy()
            labels[idx] = batch["labels"].cpu().numpy()
            num_tokens += int(batch["attention_mask"].sum())
            bar.update(len(idx))
    names = metric_names_for(task.kind, task.metric_names)
    if task.kind == "regression":
        result = regression_metrics(outputs[:, 0], labels, names)
    else:
        result = classification_metrics(outputs, labels.astype(np.int64), names)
    return {**result, "num_examples": float(len(examples)), "num_tokens": float(num_tokens)}


def _perplexity(
    model: torch.nn.Module,
    examples: list[dict[str, torch.Tensor]],
    batch_size: int,
    pad_id: int,
    dev: torch.device,
    window: int,
    progress: bool,
    task_name: str,
    split: str,
) -> dict[str, float]:
    from statprune.data.collate import IGNORE_INDEX, collate

    total_nll, scored = 0.0, 0
    with progress_bar(len(examples), f"eval {task_name}/{split}", progress) as bar:
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], pad_id)
            logits = _logits(model, batch, dev)
            if logits.dim() != 3 or logits.shape[:2] != batch["input_ids"].shape:
                raise StatpruneError(
                    f"model outputs logits of shape {tuple(logits.shape)}; perplexity needs a causal LM "
                    "with (batch, tokens, vocab) logits"
                )
            targets = batch.get("labels", batch["input_ids"]).to(dev)
            targets = targets.masked_fill(batch["attention_mask"].to(dev) == 0, IGNORE_INDEX)[:, 1:]
            for row in range(logits.shape[0]):  # one row at a time: a float32 copy of all logits is large
                total_nll += F.cross_entropy(
                    logits[row, :-1].float(), targets[row], ignore_index=IGNORE_INDEX, reduction="sum"
                ).item()
            scored += int((targets != IGNORE_INDEX).sum())
            bar.update(logits.shape[0])
    return {
        "perplexity": perplexity(total_nll, scored),
        "nll": total_nll / scored,
        "num_examples": float(len(examples)),
        "num_tokens": float(scored),
        "window": float(window),
    }


@dataclass(frozen=True)
class _Head:
    """A loader that keeps the first ``n`` rows of one split (picklable, unlike a lambda)."""

    loader: Any
    split: str
    n: int

    def __call__(self, split: str) -> list[dict[str, Any]]:
        rows = self.loader(split)
        return rows[: self.n] if split == self.split else rows


def first_rows(task: Task, split: str, n: int) -> Task:
    """``task`` with only the first ``n`` rows of its canonical ``split``."""
    return dataclasses.replace(task, loader=_Head(task.loader, split, n))


def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor], dev: torch.device) -> torch.Tensor:
    inputs = {k: v.to(dev) for k, v in batch.items() if k in MODEL_INPUTS}
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out[0]


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's parameters are (CPU for a model without any)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def progress_bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", disable=not progress, leave=False)
