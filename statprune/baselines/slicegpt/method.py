"""SliceGPT (Ashkboos et al. 2024, arXiv 2401.15024) as a registered method, and its checkpoint restore.

Pre-norm decoders only (Llama, Mistral, Qwen2, SmolLM2); post-LN encoders break computational
invariance and are refused. Steps: untie the head and fold the norms (:mod:`.fuse`), per-block PCA
rotations on already-sliced signals with residual shortcuts (:mod:`.rotate`, :mod:`.shortcuts`),
then slicing the hidden dimension to k, a multiple of 8.

Budget: SliceGPT's own knob is the fraction of the hidden dimension removed (``slicing``); the
statprune target is a fraction of prunable FLOPs. Unless ``slicing`` is given, k is the largest
multiple of 8 whose sliced model — shortcut linears (2·s·k² per layer) included — has prunable FLOPs
≤ (1 − sparsity)·dense, found by bisection on the same FLOPs model every method is measured with, so
the achieved FLOPs are within one 8-wide slice of the target. Both numbers are reported
(``slicing`` = 1 − k/d, and the achieved FLOPs sparsity in the prune result). Because of the
shortcuts even k = d costs more than the dense model, so a FLOPs target slices more hidden width than
the same nominal "slicing %" of the paper.

A sliced model stays a stock transformers model with ``config.hidden_size = k``, plus one k × k
:class:`~statprune.baselines.slicegpt.shortcuts.Shortcut` per sub-block. ``config.statprune_slicegpt``
records what was done and ``config.statprune_restore`` names :func:`restore_slicegpt`, which
:func:`statprune.models.checkpoint.load_pruned` calls to re-create the shortcuts before loading
the weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch

from statprune.adapters import Adapter, get_adapter
from statprune.baselines.slicegpt.fuse import check_applicable, fuse_norms, untie_head
from statprune.baselines.slicegpt.rotate import rotate_and_slice_padded, slice_model
from statprune.baselines.slicegpt.shortcuts import set_shortcut
from statprune.calibration import Calibration
from statprune.errors import StatpruneError
from statprune.flops import attention_core_macs
from statprune.pruner import MethodOutput, Target, register_method
from statprune.runtime import DTYPES

RESTORE_HOOK = "statprune.baselines.slicegpt.method:restore_slicegpt"
WIDTH = 8  # hidden sizes are kept to multiples of 8 (tensor-core friendly, as the paper)


@dataclass(frozen=True)
class SliceGPTOptions:
    slicing: float | None = None  # fraction of the hidden dim to remove; None: from the FLOPs target
    damping: float = 0.01  # of the mean diagonal of each covariance
    pca_dtype: Literal["float64", "float32"] = "float64"
    calib_dtype: Literal["model", "float32", "bfloat16", "float16"] = "model"
    progress: bool = True


def sliced_flops(adapter: Adapter, k: int, seq_len: float) -> float:
    """Prunable FLOPs of the model sliced to hidden size k, shortcuts included (same convention as
    :mod:`statprune.flops`: s·in·out per linear, its attention core per query head)."""
    s = float(seq_len)
    total = 0.0
    for i in range(adapter.num_layers):
        shape = adapter.layer_shape(i)
        width_out = sum(lin.out_features for lin in [*adapter.qkv(i), *adapter.ffn_in(i)])
        width_in = adapter.out_proj(i).in_features + adapter.down_proj(i).in_features
        total += s * k * (width_out + width_in) + shape.num_heads * attention_core_macs(
            adapter, shape.head_dim, s
        )
        total += 2.0 * s * k * k  # attention and FFN shortcuts
    return total


def hidden_for_target(adapter: Adapter, target: Target) -> int:
    """Largest multiple of 8 whose sliced FLOPs do not exceed the target's kept FLOPs (bisection)."""
    keep = target.flops_to_keep
    lo, hi = 1, adapter.hidden_size // WIDTH  # in units of 8
    if sliced_flops(adapter, WIDTH * lo, target.seq_len) > keep:
        raise StatpruneError(
            f"slicegpt cannot reach sparsity {target.sparsity}: even hidden size {WIDTH} is larger"
        )
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sliced_flops(adapter, WIDTH * mid, target.seq_len) <= keep:
            lo = mid
        else:
            hi = mid - 1
    return WIDTH * lo


def hidden_for_slicing(d: int, slicing: float) -> int:
    if not 0.0 <= slicing < 1.0:
        raise StatpruneError(f"slicegpt: slicing must be in [0, 1), got {slicing}")
    k = int((1.0 - slicing) * d) // WIDTH * WIDTH
    if k < WIDTH:
        raise StatpruneError(f"slicegpt: slicing {slicing} leaves less than {WIDTH} hidden dimensions")
    return k


@register_method("slicegpt", SliceGPTOptions)
@torch.no_grad()
def slicegpt_prune(
    model, adapter: Adapter, calib: Calibration, target: Target, *, seed: int, options: SliceGPTOptions
) -> MethodOutput:
    """Rotate and slice ``model`` in place (deterministic given the calibration draw)."""
    check_applicable(adapter)
    d = adapter.hidden_size
    k = (
        hidden_for_slicing(d, options.slicing)
        if options.slicing is not None
        else hidden_for_target(adapter, target)
    )
    predicted = sliced_flops(adapter, k, target.seq_len)
    timings: dict[str, float] = {}
    dtype = adapter.dtype
    run_dtype = dtype if options.calib_dtype == "model" else DTYPES[options.calib_dtype]
    if run_dtype != dtype:
        model.to(run_dtype)
    try:
        t = time.perf_counter()
        tied = untie_head(adapter)
        fuse_norms(adapter)
        timings["fuse"] = time.perf_counter() - t
        t = time.perf_counter()
        pca_dtype = torch.float64 if options.pca_dtype == "float64" else torch.float32
        report = rotate_and_slice_padded(
            adapter, calib, k, damping=options.damping, pca_dtype=pca_dtype, progress=options.progress
        )
        timings["rotate"] = time.perf_counter() - t
        t = time.perf_counter()
        slice_model(adapter, k)
        timings["slice"] = time.perf_counter() - t
    finally:
        if run_dtype != dtype:
            model.to(dtype)
    info = {"hidden_size": k, "hidden_size_dense": d, "slicing": 1.0 - k / d}
    model.config.statprune_slicegpt = info
    restore = list(getattr(model.config, "statprune_restore", None) or [])
    if RESTORE_HOOK not in restore:
        restore.append(RESTORE_HOOK)
    model.config.statprune_restore = restore
    return MethodOutput(
        timings=timings,
        diagnostics={
            **info,
            "untied_head": tied,
            "predicted_flops": predicted,
            "energy_kept": report.energy_kept,
        },
    )


@torch.no_grad()
def restore_slicegpt(model: torch.nn.Module, config) -> None:
    """Re-create the k × k residual shortcuts of a sliced model built from its config (weights follow)."""
    info = getattr(config, "statprune_slicegpt", None)
    if not info:
        return
    adapter = get_adapter(model)
    k = int(info["hidden_size"])
    if adapter.hidden_size != k:
        raise StatpruneError(f"slicegpt checkpoint: config hidden size {adapter.hidden_size} != sliced {k}")
    zeros = torch.zeros(k, k)
    for i in range(adapter.num_layers):
        for kind in ("attention", "ffn"):
            set_shortcut(adapter, i, kind, zeros)
