"""Mask gradients and the diagonal empirical Fisher (Kwon et al. §4.1).

Per mini-batch, the task loss is differentiated w.r.t. all-ones head and neuron masks; the per-batch
gradients are kept (the rearrangement step needs their block-diagonal outer products) and the Fisher
importance of a unit is Σ over mini-batches of grad². The official run sums 64 such terms (2048
samples, batch 32); :func:`auto_batch_size` keeps ≥ 64 terms (or one per example) on smaller
calibration sets, since a sum of 1–4 squared mini-batch gradients (32–128 examples in batches of
32) scores how the examples' gradients cancel rather than importance. Encoders use the task loss of their head
(labels from the calibration batches); causal LMs use the next-token loss on the real tokens.
Model weights do not get gradients (only the masks do), so memory is one forward/backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from statprune.adapters import Adapter
from statprune.baselines.kwon.masks import MaskHooks, Masks
from statprune.calibration import Calibration, model_inputs
from statprune.errors import StatpruneError

IGNORE_INDEX = -100


@dataclass
class MaskGrads:
    """Per layer: (num_batches × units) gradients of the loss w.r.t. the head / neuron masks."""

    head: list[torch.Tensor]
    neuron: list[torch.Tensor]

    def head_fisher(self) -> list[torch.Tensor]:
        return [g.pow(2).sum(0) for g in self.head]

    def neuron_fisher(self) -> list[torch.Tensor]:
        return [g.pow(2).sum(0) for g in self.neuron]


def _rows(calib: Calibration, n: int) -> list[dict[str, torch.Tensor]]:
    """The first ``n`` examples, each trimmed to its real tokens."""
    rows = []
    for b in calib.batches:
        for r in range(b["input_ids"].shape[0]):
            keep = b["attention_mask"][r].bool()
            row = {}
            for key, val in b.items():
                v = val[r]
                row[key] = v[keep] if v.dim() == 1 and v.shape[0] == keep.shape[0] else v
            rows.append(row)
            if len(rows) == n:
                return rows
    return rows


OFFICIAL_BATCH = 32  # the released code's mini-batch (12 for SQuAD) ...
OFFICIAL_TERMS = 64  # ... over its 2048 samples: 64 squared gradients in the Fisher sum


def auto_batch_size(n: int) -> int:
    """Mini-batch size giving the Fisher ≥ 64 squared-gradient terms (the official 2048 / 32), or one
    per example when there are fewer than 64 examples; never above the official 32."""
    return max(1, min(OFFICIAL_BATCH, n // OFFICIAL_TERMS))


def rebatch(calib: Calibration, num_samples: int, batch_size: int | None) -> Calibration:
    """Kwon's sample count and mini-batch size from any calibration draw (a prefix; no new randomness).

    The Fisher is a sum over mini-batches of squared mean-gradients, so the mini-batch size is part
    of the method; the pipeline's calibration batching is not. ``batch_size=None``:
    :func:`auto_batch_size` (2048 samples → 32, as the official run; 512 → 8; 128 → 2; ≤ 127 → 1).
    """
    from statprune.data.collate import collate

    n = min(num_samples, calib.num_examples)
    if batch_size is None:
        batch_size = auto_batch_size(n)
    rows = _rows(calib, n)
    batches = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s : s + batch_size]
        batch = collate([{k: v for k, v in r.items() if k != "attention_mask"} for r in chunk], 0)
        batches.append(batch)
    return Calibration(batches=batches, num_examples=len(rows), indices=list(calib.indices[: len(rows)]))


def is_causal_lm(model: torch.nn.Module) -> bool:
    can = getattr(model, "can_generate", None)
    return bool(can()) if callable(can) else False


def _lm_labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    labels = batch.get("labels")
    if labels is None or labels.shape != batch["input_ids"].shape:
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = IGNORE_INDEX
    return labels


def task_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device, *, method: str = "kwon"
) -> torch.Tensor:
    """The loss Kwon et al. differentiate: the task loss, or the LM loss for causal decoders (the mean
    over :func:`loss_terms`); ``method`` names the caller in errors (STAT's ``error_norm=loss`` too)."""
    inputs = model_inputs(batch, device)
    if is_causal_lm(model):
        out = model(**inputs, labels=_lm_labels(batch).to(device), use_cache=False)
    else:  # class/regression labels, or a QA head's start/end positions
        targets = {
            k: batch[k].to(device) for k in ("labels", "start_positions", "end_positions") if k in batch
        }
        if not targets:
            raise StatpruneError(
                f"{method} needs labelled calibration data for an encoder (its gradient is taken of the "
                "task loss); use a classification/regression/QA task"
            )
        out = model(**inputs, **targets)
    if getattr(out, "loss", None) is None:
        raise StatpruneError(f"{method}: the model returned no loss for the calibration labels")
    return out.loss


def loss_terms(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """How many terms :func:`task_loss` averages: predicted tokens (labels shifted by one) for causal
    LMs, examples otherwise."""
    if is_causal_lm(model):
        return float((_lm_labels(batch)[:, 1:] != IGNORE_INDEX).sum())
    return float(batch["input_ids"].shape[0])


def _micro_batches(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], max_tokens: int
) -> list[tuple[dict[str, torch.Tensor], float]]:
    """Split a mini-batch into pieces of ≤ ``max_tokens`` tokens, each with its weight in the
    mini-batch's mean loss (its share of the loss terms), so Σ weight·∇loss(piece) = ∇loss(batch)
    exactly: memory is bounded without changing the per-mini-batch gradient the Fisher squares."""
    rows, seq = batch["input_ids"].shape
    per = max(1, max_tokens // max(seq, 1))
    if per >= rows:
        return [(batch, 1.0)]
    pieces = [{k: v[s : s + per] for k, v in batch.items()} for s in range(0, rows, per)]
    counts = [loss_terms(model, p) for p in pieces]
    total = sum(counts)
    return [(p, c / total) for p, c in zip(pieces, counts) if c > 0]


def collect_mask_grads(
    model: torch.nn.Module,
    adapter: Adapter,
    calib: Calibration,
    *,
    progress: bool = True,
    max_tokens: int = 4096,
) -> MaskGrads:
    """Gradients of the per-mini-batch loss w.r.t. all-ones masks (float32, on the model's device);
    each mini-batch is differentiated in pieces of ≤ ``max_tokens`` tokens (see :func:`_micro_batches`)."""
    device = adapter.device
    masks = Masks.ones(adapter, requires_grad=True, device=device)
    head_g: list[list[torch.Tensor]] = [[] for _ in masks.head]
    neuron_g: list[list[torch.Tensor]] = [[] for _ in masks.neuron]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.enable_grad(), MaskHooks(adapter, masks).attached():
            for batch in tqdm(calib.batches, desc="kwon: fisher", disable=not progress):
                grads: list[torch.Tensor | None] = [None] * (len(masks.head) + len(masks.neuron))
                for piece, weight in _micro_batches(model, batch, max_tokens):
                    loss = task_loss(model, piece, device)
                    if not torch.isfinite(loss):
                        raise StatpruneError(
                            "kwon: the calibration loss is NaN/inf; check the model dtype and data"
                        )
                    part = torch.autograd.grad(loss * weight, [*masks.head, *masks.neuron], allow_unused=True)
                    grads = [a if b is None else (b if a is None else a + b) for a, b in zip(grads, part)]
                L = len(masks.head)
                for i in range(L):
                    for store, g, m in (
                        (head_g, grads[i], masks.head[i]),
                        (neuron_g, grads[L + i], masks.neuron[i]),
                    ):
                        store[i].append((torch.zeros_like(m) if g is None else g).detach().float())
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return MaskGrads(head=[torch.stack(g) for g in head_g], neuron=[torch.stack(g) for g in neuron_g])
