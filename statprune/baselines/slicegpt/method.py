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

``slice_head`` (default False, the official ``do_slice_head=False``): the last layer's output, the
final norm and the LM head keep the full width d; the last layer's down projection then writes d
coordinates and its FFN shortcut is k × d, both counted in the FLOPs above. ``slice_head=True``
slices them too (the earlier behaviour, for ablation).

``neuron_multiple`` is accepted only so every method takes the same option (sweeps pass it to all);
SliceGPT removes no FFN neurons — it slices the hidden dimension, which is always a multiple of 8.

A sliced model stays a stock transformers model with ``config.hidden_size = k`` in memory, plus one
:class:`~statprune.baselines.slicegpt.shortcuts.Shortcut` per sub-block. Stock configs refuse a
hidden size that is not a multiple of the head count (Llama validates it at init and at save), so
the checkpoint's ``config.json`` keeps the dense hidden size and an explicit ``head_dim``
(``config.statprune_stored_config``); ``config.statprune_slicegpt`` records k and
``config.statprune_restore`` names :func:`restore_slicegpt`, which
:func:`statprune.models.checkpoint.load_pruned` calls to slice the freshly built dense-width model
to k and re-create the shortcuts before loading the weights. That the final config can be saved is
checked before any calibration work.

Remaining differences from the official code (microsoft/TransformerCompression,
``rotate_and_slice_sequential``): norms stay stock RMSNorm modules with √(d/k) folded into their
readers instead of a custom RMSNorm over d (ε then acts as ε·k/d); the residual shortcuts run
through hooks on the stock layer instead of replacement layer classes; the width comes from a FLOPs
target unless ``slicing`` is given; calibration masking uses the attention mask, as ``apply_mask``.
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
from statprune.models.checkpoint import check_saveable
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
    slice_head: bool = False  # official do_slice_head=False: last output and LM head stay d wide
    neuron_multiple: int = 8  # uniform interface only: SliceGPT removes no neurons (width is 8·n)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.neuron_multiple < 1:
            raise StatpruneError(f"neuron_multiple must be at least 1, got {self.neuron_multiple}")


def sliced_flops(adapter: Adapter, k: int, seq_len: float, *, slice_head: bool = False) -> float:
    """Prunable FLOPs of the dense model sliced to hidden size k, shortcuts included (same convention
    as :mod:`statprune.flops`: s·in·out per linear, its attention core per query head). With ``slice_head=False``
    the last layer's down projection and FFN shortcut write the full width d."""
    s, d = float(seq_len), adapter.hidden_size
    total = 0.0
    for i in range(adapter.num_layers):
        shape = adapter.layer_shape(i)
        out = d if (not slice_head and i == adapter.num_layers - 1) else k
        width_out = sum(lin.out_features for lin in [*adapter.qkv(i), *adapter.ffn_in(i)])
        total += s * k * (width_out + adapter.out_proj(i).in_features)
        total += s * out * adapter.down_proj(i).in_features
        total += shape.num_heads * attention_core_macs(adapter, shape.head_dim, s)
        total += s * k * k + s * k * out  # attention and FFN shortcuts
    return total


def hidden_for_target(adapter: Adapter, target: Target, *, slice_head: bool = False) -> int:
    """Largest multiple of 8 whose sliced FLOPs do not exceed the target's kept FLOPs (bisection)."""
    keep = target.flops_to_keep
    lo, hi = 1, adapter.hidden_size // WIDTH  # in units of 8

    def flops(k: int) -> float:
        return sliced_flops(adapter, k, target.seq_len, slice_head=slice_head)

    if flops(WIDTH * lo) > keep:
        raise StatpruneError(
            f"slicegpt cannot reach sparsity {target.sparsity}: even hidden size {WIDTH} is larger"
        )
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if flops(WIDTH * mid) <= keep:
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
        else hidden_for_target(adapter, target, slice_head=options.slice_head)
    )
    predicted = sliced_flops(adapter, k, target.seq_len, slice_head=options.slice_head)
    info = {
        "hidden_size": k,
        "hidden_size_dense": d,
        "slicing": 1.0 - k / d,
        "slice_head": options.slice_head,
    }
    check_saveable(model.config, _config_changes(model.config, adapter, info))  # fail before the work
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
        slice_model(adapter, k, slice_head=options.slice_head)
        timings["slice"] = time.perf_counter() - t
    finally:
        if run_dtype != dtype:
            model.to(dtype)
    for key, value in _config_changes(model.config, adapter, info).items():
        setattr(model.config, key, value)
    return MethodOutput(
        timings=timings,
        diagnostics={
            **info,
            "untied_head": tied,
            "neuron_multiple": "not applicable (hidden width is a multiple of 8)",
            "predicted_flops": predicted,
            "energy_kept": report.energy_kept,
        },
    )


def _config_changes(config, adapter: Adapter, info: dict) -> dict:
    """Config attributes of the sliced model: in memory hidden_size = k; on disk the dense width."""
    restore = list(getattr(config, "statprune_restore", None) or [])
    if RESTORE_HOOK not in restore:
        restore.append(RESTORE_HOOK)
    stored = dict(getattr(config, "statprune_stored_config", None) or {})
    stored.setdefault("hidden_size", info["hidden_size_dense"])
    return {
        "hidden_size": info["hidden_size"],
        "head_dim": adapter.head_dim,
        "statprune_slicegpt": info,
        "statprune_restore": restore,
        "statprune_stored_config": stored,
    }


@torch.no_grad()
def restore_slicegpt(model: torch.nn.Module, config) -> None:
    """Slice a model freshly built from a SliceGPT checkpoint's config (dense width on disk) to its
    recorded width and re-create the shortcuts; the checkpoint's weights are loaded afterwards."""
    info = getattr(config, "statprune_slicegpt", None)
    if not info:
        return
    adapter = get_adapter(model)
    k, d = int(info["hidden_size"]), int(info["hidden_size_dense"])
    slice_head = bool(info.get("slice_head", True))  # checkpoints before the option sliced the head
    if adapter.hidden_size not in (d, k):
        raise StatpruneError(
            f"slicegpt checkpoint: config hidden size {adapter.hidden_size} is neither {d} nor {k}"
        )
    last = adapter.num_layers - 1
    for i in range(adapter.num_layers):  # final shapes: slice_model's cuts leave them as they are
        set_shortcut(adapter, i, "attention", torch.zeros(k, k))
        set_shortcut(adapter, i, "ffn", torch.zeros(k, d if (i == last and not slice_head) else k))
    if adapter.hidden_size == d:  # dense width on disk (any k); older checkpoints stored k itself
        slice_model(adapter, k, slice_head=slice_head)
