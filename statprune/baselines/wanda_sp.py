"""Wanda-sp: structured Wanda, the baseline released with FLAP (An et al., AAAI 2024).

Per layer, for each input channel j of W_O (head-output hook point) and W_down (neuron hook point),
score_j = mean_i |W_ij| · ‖X_j‖, ‖X_j‖ the L2 norm of the input feature over the real calibration
tokens (Wanda's |W|·‖X‖, averaged over the output rows). A head unit scores the sum over its
channels (a KV group under GQA: over its query heads' channels), a neuron its own score. Every layer
loses the same share: ⌊p · head units⌋ head units (p = the FLOPs sparsity), and its FFN the same
number of neurons as every other FFN (± one ``neuron_multiple`` group) such that the FLOPs target is
met. The lowest-scoring units go; no compensation. The walk is sequential as released: layer l's
statistics come from the model whose layers < l are already pruned (attention and FFN statistics of
layer l from one forward of the still-dense layer l), and the pruned layer's output feeds layer l+1.

Differences from the official code (github.com/CASIA-IVA-Lab/FLAP, ``prune_wanda_sp``), deliberate:

1. ‖X_j‖ over all real (non-padding) tokens of the run's calibration draw, in float64 (released:
   √(mean over samples of per-sample Σx²) — the same up to a constant factor — on C4 samples of
   128 tokens).
2. Budget: the shared FLOPs model. Head units per layer ⌊p · units⌋ as released; the FFNs take what
   is left of the FLOPs target, uniformly (released: ⌊p · d_ff⌋ neurons per layer, a parameter
   ratio), so the target is met within one group even where the floored head count is 0 (GQA models
   with few KV groups). Layers that get one extra group are spread evenly over depth.
3. GQA: whole KV groups are the head units (released: multi-head Llama, head_dim 128 fixed).
4. Every layer keeps at least one head unit and ``neuron_multiple`` neurons; kept neuron counts are
   multiples of ``neuron_multiple`` (default 8; released: no rounding).
5. Ties: stable order (released: ``metric >= threshold`` keeps every unit tied at the threshold).
6. Families: every adapter family, encoders included (no labels needed; released: Llama only).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from statprune.adapters import Adapter
from statprune.baselines.flap import (
    ChannelStats,
    allocate,
    apply_units,
    collect_stats,
    head_unit_channels,
    make_blocks,
)
from statprune.calibration import Calibration, LayerWalk
from statprune.errors import StatpruneError
from statprune.pruner import MethodOutput, Target, register_method


@dataclass(frozen=True)
class WandaSpOptions:
    neuron_multiple: int = 8
    progress: bool = True

    def __post_init__(self) -> None:
        if self.neuron_multiple < 1:
            raise StatpruneError(f"neuron_multiple must be at least 1, got {self.neuron_multiple}")


def wanda_channel_scores(stats: ChannelStats, weight: torch.Tensor) -> torch.Tensor:
    """mean_i |W_ij| · ‖X_j‖ per input channel j of the consumer ``weight`` (out × in), float64 CPU."""
    return (weight.detach().double().abs().mean(0) * stats.sumsq.sqrt()).cpu()


def wanda_layer_scores(adapter: Adapter, i: int, h: ChannelStats, n: ChannelStats) -> dict:
    att = wanda_channel_scores(h, adapter.out_proj(i).weight)
    return {
        "heads": att.reshape(-1, head_unit_channels(adapter, i)).sum(1),
        "neurons": wanda_channel_scores(n, adapter.down_proj(i).weight),
    }


@register_method("wanda-sp", WandaSpOptions)
@torch.no_grad()
def wanda_sp_prune(
    model, adapter: Adapter, calib: Calibration, target: Target, *, seed: int, options: WandaSpOptions
) -> MethodOutput:
    """Uniform per-layer removal of the lowest |W|·‖X‖ head units and neurons, layer by layer."""
    t0 = time.perf_counter()
    m = options.neuron_multiple
    blocks = make_blocks(adapter, target, m)  # counts are data-free: fix them before the walk
    kept = allocate(adapter, blocks, target, "UL-UM", -1, m)
    walk = LayerWalk(adapter, calib)
    t_score = t_update = 0.0
    for i in tqdm(range(adapter.num_layers), desc="wanda-sp", disable=not options.progress):
        h, n, _ = collect_stats(walk, adapter, i, keep_outputs=False)
        t = time.perf_counter()
        scores = wanda_layer_scores(adapter, i, h, n)
        t_score += time.perf_counter() - t
        t = time.perf_counter()
        for kind, s in scores.items():
            k = kept[(i, kind)]
            if k < len(s):
                apply_units(adapter, i, kind, torch.argsort(s, stable=True)[len(s) - k :].sort().values)
        t_update += time.perf_counter() - t
        walk.advance(walk.run(i))  # the pruned layer's outputs feed the next layer
    total = time.perf_counter() - t0
    return MethodOutput(
        timings={
            "calibration_forward": total - t_score - t_update,
            "scoring": t_score,
            "weight_update": t_update,
        },
        diagnostics={"kept_units": {f"{layer}.{kind}": c for (layer, kind), c in sorted(kept.items())}},
    )
