"""Where and in what precision a run computes: the one device, dtype and pad-id rule of every entry point."""

from __future__ import annotations

from typing import Any

import torch

from statprune.errors import StatpruneError

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # the batch keys a model is called with

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``None``/``auto`` → the current CUDA device when one is visible (a GPU SLURM job), else CPU.

    CUDA devices always carry an index, so a resolved device compares equal to a tensor's device.
    """
    if name is None or str(name) == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise StatpruneError(f"unknown device {name!r} (use cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise StatpruneError(f"device {str(name)!r} requested but no CUDA device is visible")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise StatpruneError(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)}") from None


def pad_token_id(tokenizer: Any) -> int:
    """The id that fills padded positions: pad, else eos (decoders such as Llama), else 0.

    Attention masks make the value irrelevant to results; it only has to be a valid id.
    """
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


def check_positions(config: Any, length: int, what: str) -> None:
    """``length`` tokens within the model's ``max_position_embeddings``, else a one-line error naming
    ``what`` (a BERT-type model otherwise fails deep inside its position embeddings)."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and length > limit:
        raise StatpruneError(f"{what} {length} exceeds the model's {limit} positions")
