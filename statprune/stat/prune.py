"""STAT: structured pruning by interpolative decomposition, with correction, no fine-tuning.

Two walks over the layers:

1. *Measure* (original model): per layer, stream the head-output and neuron Gram matrices, compute
   the error of every possible head/neuron count, then allocate counts globally under the FLOPs target.
2. *Apply*: walk again; per layer, prune heads (selection + W_O correction), then neurons (selection +
   W2 correction). With ``repropagate=true`` (default) every statistic comes from the model pruned so
   far: the FFN Gram is taken after the layer's attention was pruned, and the next layer sees the
   pruned layer's output. With ``repropagate=false`` all statistics come from the original model (the
   released OPT code's single pass).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from statprune.adapters import Adapter
from statprune.calibration import Calibration, Gram, LayerWalk
from statprune.flops import layer_flops, unit_costs
from statprune.pruner import MethodOutput, Target, register_method
from statprune.stat.allocate import BlockCurve, greedy_allocation, paper_allocation
from statprune.stat.heads import head_curve, head_units, prune_heads
from statprune.stat.neurons import neuron_curve, prune_neurons


@dataclass(frozen=True)
class StatOptions:
    allocation: Literal["greedy", "paper"] = "greedy"
    correction: bool = True
    repropagate: bool = True
    gqa: Literal["group", "uniform"] = "group"
    error_norm: Literal["residual", "none"] = "residual"
    head_share: float | None = None
    rel_tol: float = 1e-12
    device: str | None = None
    store_dtype: Literal["model", "bfloat16", "float32"] = "model"
    progress: bool = True


def _store_dtype(name: str) -> torch.dtype | None:
    return {"model": None, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


class _Timer:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = {}

    def __call__(self, stage: str) -> _Stage:
        return _Stage(self, stage)


class _Stage:
    def __init__(self, timer: _Timer, stage: str) -> None:
        self.timer, self.stage = timer, stage

    def __enter__(self) -> None:
        if self.timer.device.type == "cuda":
            torch.cuda.synchronize(self.timer.device)
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        if self.timer.device.type == "cuda":
            torch.cuda.synchronize(self.timer.device)
        self.timer.totals[self.stage] = self.timer.totals.get(self.stage, 0.0) + time.perf_counter() - self.t0


def _grams(adapter: Adapter, i: int, device: torch.device, heads: bool, neurons: bool) -> dict:
    out = {}
    if heads:
        out["heads"] = (adapter.out_proj(i), Gram(adapter.out_proj(i).in_features, device))
    if neurons:
        out["neurons"] = (adapter.down_proj(i), Gram(adapter.down_proj(i).in_features, device))
    return out


def _hooks(grams: dict) -> dict:
    return {mod: acc for mod, acc in grams.values()}


def measure_curves(
    adapter: Adapter, walk: LayerWalk, target: Target, opts: StatOptions, timer: _Timer, progress: bool
) -> list[BlockCurve]:
    curves: list[BlockCurve] = []
    for i in tqdm(range(adapter.num_layers), desc="stat: measure", disable=not progress):
        scale = walk.energy() if opts.error_norm == "residual" else 1.0
        grams = _grams(adapter, i, walk.device, True, True)
        with timer("calibration_forward"):
            outs = walk.run(i, _hooks(grams))
        shape = adapter.layer_shape(i)
        costs = unit_costs(adapter, i, target.seq_len)
        with timer("factorization"):
            G_att = grams["heads"][1].G
            units = head_units(G_att, shape, opts.gqa, rel_tol=opts.rel_tol)
            h_err = head_curve(G_att, adapter.out_proj(i).weight, units, shape.head_dim, rel_tol=opts.rel_tol)
            n_err, piv = neuron_curve(
                grams["neurons"][1].G, adapter.down_proj(i).weight, rel_tol=opts.rel_tol
            )
        unit_size = len(units[0])
        head_unit_flops = (
            costs.group(shape.group_size)
            if opts.gqa == "group" or shape.group_size == 1
            else unit_size * costs.q_head
        )
        curves.append(BlockCurve(i, "heads", h_err / scale, head_unit_flops))
        curves.append(BlockCurve(i, "neurons", n_err / scale, costs.neuron, pivots=piv / scale**0.5))
        walk.advance(outs)
    return curves


def allocate(adapter: Adapter, curves: list[BlockCurve], target: Target, opts: StatOptions) -> dict:
    per_layer = [layer_flops(adapter, i, target.seq_len) for i in range(adapter.num_layers)]
    dense = sum(a + f for a, f in per_layer)
    to_remove = target.sparsity * dense
    if opts.allocation == "greedy":
        return greedy_allocation(curves, to_remove)
    share = opts.head_share
    if share is None:
        share = sum(a for a, _ in per_layer) / dense
    return paper_allocation(curves, to_remove, num_layers=adapter.num_layers, head_share=share)


def apply_pruning(
    adapter: Adapter, walk: LayerWalk, kept: dict, opts: StatOptions, timer: _Timer, progress: bool
) -> None:
    for i in tqdm(range(adapter.num_layers), desc="stat: prune", disable=not progress):
        k_heads, k_neurons = kept[(i, "heads")], kept[(i, "neurons")]
        grams = _grams(adapter, i, walk.device, True, not opts.repropagate)
        with timer("calibration_forward"):
            outs = walk.run(i, _hooks(grams), keep_outputs=not opts.repropagate)
        with timer("weight_update"):
            prune_heads(
                adapter,
                i,
                grams["heads"][1].G,
                k_heads,
                mode=opts.gqa,
                correction=opts.correction,
                rel_tol=opts.rel_tol,
            )
        if opts.repropagate:
            grams = _grams(adapter, i, walk.device, False, True)
            with timer("calibration_forward"):
                walk.run(i, _hooks(grams), keep_outputs=False)
        with timer("weight_update"):
            prune_neurons(
                adapter, i, grams["neurons"][1].G, k_neurons, correction=opts.correction, rel_tol=opts.rel_tol
            )
        if opts.repropagate:
            with timer("calibration_forward"):
                outs = walk.run(i)
        walk.advance(outs)


@register_method("stat", StatOptions)
@torch.no_grad()
def stat_prune(
    model, adapter: Adapter, calib: Calibration, target: Target, *, seed: int, options: StatOptions
) -> MethodOutput:
    """Prune ``model`` in place with STAT (deterministic given the calibration draw)."""
    device = torch.device(options.device) if options.device else adapter.device
    if device != adapter.device:
        model.to(device)
    timer = _Timer(device)
    with timer("calibration_forward"):
        walk = LayerWalk(adapter, calib, device=device, store_dtype=_store_dtype(options.store_dtype))
    curves = measure_curves(adapter, walk, target, options, timer, options.progress)
    with timer("allocation"):
        kept = allocate(adapter, curves, target, options)
    with timer("calibration_forward"):
        walk.capture()
    apply_pruning(adapter, walk, kept, options, timer, options.progress)
    del walk
    return MethodOutput(
        timings=timer.totals,
        diagnostics={
            "kept_units": {f"{layer}.{kind}": n for (layer, kind), n in sorted(kept.items())},
            "predicted_error": float(sum(float(c.errors[kept[(c.layer, c.kind)]]) for c in curves)),
        },
    )
