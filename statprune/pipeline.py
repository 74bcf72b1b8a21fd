"""Load → calibrate → prune: the composition shared by ``statprune prune`` and sweep runs.

Everything cheap is validated before anything expensive happens (sparsity, method, options, task,
output folder), so bad input fails in a second with one clear message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from statprune.calibration import Calibration, make_calibration
from statprune.errors import StatpruneError
from statprune.pruner import PruneResult, Target, method_options, prune

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str | None) -> torch.device:
    """``auto`` → CUDA when visible (e.g. inside a GPU SLURM job), else CPU."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise StatpruneError(f"device {name!r} requested but CUDA is not available")
    return dev


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise StatpruneError(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)}") from None


@dataclass(frozen=True)
class PruneJob:
    """One pruning of one model: everything ``statprune prune`` takes."""

    model: str
    method: str
    sparsity: float
    calib_task: str
    calib_size: int
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    calib_split: str = "train"
    max_length: int | None = None
    batch_size: int = 32
    device: str = "auto"
    dtype: str = "float32"
    seq_len: float | None = None  # FLOPs-model sequence length; default: the task's

    def validate(self) -> None:
        Target(self.sparsity, 1.0)
        method_options(self.method, self.options)
        if self.calib_size <= 0:
            raise StatpruneError(f"calibration size must be positive, got {self.calib_size}")
        if self.batch_size <= 0:
            raise StatpruneError(f"batch size must be positive, got {self.batch_size}")
        resolve_dtype(self.dtype)


def calibration_for(
    task: Any,
    tokenizer: Any,
    n: int,
    seed: int,
    *,
    split: str = "train",
    max_length: int | None = None,
    batch_size: int = 32,
) -> Calibration:
    """Draw ``n`` examples of ``task``'s split without replacement (nested across sizes)."""
    examples = task.encode(tokenizer, split, max_length or task.max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return make_calibration(examples, n, seed, batch_size=batch_size, pad_token_id=pad)


def run_prune(
    job: PruneJob, *, model: torch.nn.Module | None = None, tokenizer: Any = None, eval_task: Any = None
) -> tuple[torch.nn.Module, Any, PruneResult]:
    """Prune per ``job``; pass ``model``/``tokenizer`` to reuse an already loaded model."""
    from statprune.data import get_task
    from statprune.models.load import load_model

    job.validate()
    task = get_task(job.calib_task)
    if model is None:
        model, tokenizer = load_model(
            job.model,
            task=eval_task or task,
            dtype=resolve_dtype(job.dtype),
            device=str(resolve_device(job.device)),
        )
    calib = calibration_for(
        task,
        tokenizer,
        job.calib_size,
        job.seed,
        split=job.calib_split,
        max_length=job.max_length,
        batch_size=job.batch_size,
    )
    seq_len = job.seq_len or task.flops_seq_len
    result = prune(
        model,
        calib,
        Target(job.sparsity, seq_len),
        method=job.method,
        seed=job.seed,
        options=dict(job.options),
    )
    return model, tokenizer, result
