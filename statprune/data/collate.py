"""Batching of encoded examples: right padding, attention masks, and labels that ignore padding."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

IGNORE_INDEX = -100  # per-token labels at padded positions (the loss ignores them)


def collate(examples: Sequence[Mapping[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad every per-token field to the batch maximum and stack per-example scalars.

    ``input_ids`` pad with ``pad_token_id``, per-token ``labels`` with -100, other per-token fields
    (``token_type_ids``) with 0; ``attention_mask`` is 1 on real tokens and 0 on padding. Scalars
    (class labels, regression targets, QA start/end positions) are stacked.
    """
    if not examples:
        raise ValueError("collate() needs at least one example")
    lengths = [int(e["input_ids"].shape[0]) for e in examples]
    width = max(lengths)
    batch: dict[str, torch.Tensor] = {}
    for key in examples[0]:
        values = [e[key] for e in examples]
        if values[0].dim() == 0:
            batch[key] = torch.stack(values)
            continue
        pad = pad_token_id if key == "input_ids" else IGNORE_INDEX if key == "labels" else 0
        out = torch.full((len(values), width), pad, dtype=values[0].dtype)
        for i, v in enumerate(values):
            out[i, : v.shape[0]] = v
        batch[key] = out
    mask = torch.zeros(len(examples), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    batch["attention_mask"] = mask
    return batch


def batches(
    examples: Sequence[Mapping[str, torch.Tensor]], batch_size: int, *, pad_token_id: int = 0
) -> Iterator[dict[str, torch.Tensor]]:
    """Collated batches in order (the last may be smaller).

    The pad id only fills masked positions, so its value does not change a masked model's output.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    for start in range(0, len(examples), batch_size):
        yield collate(examples[start : start + batch_size], pad_token_id)
