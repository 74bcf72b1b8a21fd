"""Structured magnitude pruning (METHODS.md §5): the floor every data-aware method must beat.

Scores, from weights only (biases ignored):

* **heads** — ``in`` = norm of the unit's Q/K/V rows, ``out`` = norm of its W_O columns. With GQA and
  ``gqa="group"`` (default, as STAT) a unit is a KV group: its query heads' Q rows plus the group's
  K/V rows, and its query heads' W_O columns; for multi-head attention a group is one head. With
  ``gqa="uniform"`` a unit is one query head from every group (K/V stay), the u-th weakest of each
  group; its score is the sum of its heads' scores (``in`` = Q rows only).
* **neurons** — ``in`` = ‖W1 row‖; SwiGLU: ‖W_gate row‖·‖W_up row‖ (the neuron is the product of the
  two projections, so its scale is the product of their scales); ``out`` = ‖W2 column‖.
* ``score="product"`` (default) = in·out, the first-order scale of the unit's contribution to the
  block output; ``"in"`` / ``"out"`` use one side only. ``norm="l2"`` is the Frobenius norm of the
  concatenated slices, ``"l1"`` the sum of absolute values.

Heads and neurons are in different units, so every score is divided by the mean score of its kind
(over the whole model, or per layer with ``normalize="layer"``): a unit is compared with its peers,
and "half as large as the average head" ranks like "half as large as the average neuron". Units are
then removed globally in ascending normalised score until the FLOPs target is met (within one unit),
by :func:`statprune.allocation.greedy_allocation` on per-block curves whose increments are
score × unit FLOPs — so the greedy ratio (increment per FLOP) is exactly the normalised score. Every
block keeps at least one unit (a stock attention layer needs a head). No correction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch

from statprune.adapters import Adapter, LayerShape
from statprune.allocation import BlockCurve, greedy_allocation
from statprune.calibration import Calibration
from statprune.flops import unit_costs
from statprune.pruner import MethodOutput, Target, register_method


@dataclass(frozen=True)
class MagnitudeOptions:
    score: Literal["product", "in", "out"] = "product"
    norm: Literal["l2", "l1"] = "l2"
    gqa: Literal["group", "uniform"] = "group"
    normalize: Literal["model", "layer"] = "model"
    progress: bool = True  # accepted for a uniform interface; scoring is instant


def _power(w: torch.Tensor, dim: int, norm: str) -> torch.Tensor:
    """Per-slice additive mass along ``dim`` (squares for l2, abs for l1), so slices can be concatenated."""
    w = w.detach().double()
    return (w.pow(2) if norm == "l2" else w.abs()).sum(dim)


def _finish(p: torch.Tensor, norm: str) -> torch.Tensor:
    return p.sqrt() if norm == "l2" else p


def _combine(inn: torch.Tensor, out: torch.Tensor, score: str) -> torch.Tensor:
    return {"product": inn * out, "in": inn, "out": out}[score]


def head_scores(adapter: Adapter, i: int, opts: MagnitudeOptions) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(units, scores): units as tensors of query-head indices, with one score per unit."""
    shape: LayerShape = adapter.layer_shape(i)
    H, hd, g = shape.num_heads, shape.head_dim, shape.group_size
    q, k, v = adapter.qkv(i)
    o = adapter.out_proj(i)
    q_in = _power(q.weight, 1, opts.norm).reshape(H, hd).sum(1)
    kv_in = (_power(k.weight, 1, opts.norm) + _power(v.weight, 1, opts.norm)).reshape(-1, hd).sum(1)
    o_out = _power(o.weight, 0, opts.norm).reshape(H, hd).sum(1)
    if opts.gqa == "group" or g == 1:
        n_groups = H // g
        inn = q_in.reshape(n_groups, g).sum(1) + kv_in
        out = o_out.reshape(n_groups, g).sum(1)
        scores = _combine(_finish(inn, opts.norm), _finish(out, opts.norm), opts.score)
        return [torch.arange(g) + grp * g for grp in range(n_groups)], scores.cpu()
    per_head = _combine(_finish(q_in, opts.norm), _finish(o_out, opts.norm), opts.score).cpu()
    # Within each group, rank its query heads; unit u = the u-th strongest head of every group.
    ranked = [
        torch.argsort(per_head[grp * g : (grp + 1) * g], descending=True, stable=True) + grp * g
        for grp in range(H // g)
    ]
    units = [torch.stack([r[u] for r in ranked]) for u in range(g)]
    return units, torch.stack([per_head[u].sum() for u in units])


def neuron_scores(adapter: Adapter, i: int, opts: MagnitudeOptions) -> torch.Tensor:
    inn = torch.ones(adapter.down_proj(i).in_features, dtype=torch.float64)
    for lin in adapter.ffn_in(i):  # [up] or [gate, up]: product of the producers' row norms
        inn = inn * _finish(_power(lin.weight, 1, opts.norm), opts.norm).cpu()
    out = _finish(_power(adapter.down_proj(i).weight, 0, opts.norm), opts.norm).cpu()
    return _combine(inn, out, opts.score)


def _normalise(scores: list[torch.Tensor], per_layer: bool) -> list[torch.Tensor]:
    tiny = torch.finfo(torch.float64).tiny
    if per_layer:
        return [s / max(float(s.mean()), tiny) for s in scores]
    mean = float(torch.cat(scores).mean())
    return [s / max(mean, tiny) for s in scores]


def _curve(layer: int, kind: str, scores: torch.Tensor, unit_flops: float) -> tuple[BlockCurve, torch.Tensor]:
    """Curve of removed normalised score × FLOPs when keeping c units (strongest first), and that order."""
    order = torch.argsort(scores, descending=True, stable=True)
    inc = scores[order] * unit_flops
    tail = torch.cat([inc.flip(0).cumsum(0).flip(0), torch.zeros(1, dtype=torch.float64)])
    return BlockCurve(layer, kind, tail, unit_flops), order


@register_method("magnitude", MagnitudeOptions)
@torch.no_grad()
def magnitude_prune(
    model, adapter: Adapter, calib: Calibration, target: Target, *, seed: int, options: MagnitudeOptions
) -> MethodOutput:
    """Remove the lowest-norm heads and neurons globally under the FLOPs target (no data used)."""
    t0 = time.perf_counter()
    L = adapter.num_layers
    heads = [head_scores(adapter, i, options) for i in range(L)]
    neurons = [neuron_scores(adapter, i, options) for i in range(L)]
    per_layer = options.normalize == "layer"
    h_norm = _normalise([s for _, s in heads], per_layer)
    n_norm = _normalise(neurons, per_layer)
    curves, orders = [], {}
    for i in range(L):
        shape = adapter.layer_shape(i)
        costs = unit_costs(adapter, i, target.seq_len)
        if options.gqa == "group" or shape.group_size == 1:
            head_flops = costs.group(shape.group_size)
        else:
            head_flops = shape.num_kv_heads * costs.q_head
        for kind, s, f in (("heads", h_norm[i], head_flops), ("neurons", n_norm[i], costs.neuron)):
            c, order = _curve(i, kind, s, f)
            curves.append(c)
            orders[(i, kind)] = order
    kept = greedy_allocation(curves, target.flops_to_remove)
    t1 = time.perf_counter()
    for i in range(L):
        units = heads[i][0]
        k_units = kept[(i, "heads")]
        if k_units < len(units):
            keep = orders[(i, "heads")][:k_units]
            adapter.keep_heads(i, torch.cat([units[int(u)] for u in keep]).sort().values)
        k_neurons = kept[(i, "neurons")]
        if k_neurons < len(neurons[i]):
            adapter.keep_neurons(i, orders[(i, "neurons")][:k_neurons].sort().values)
    t2 = time.perf_counter()
    return MethodOutput(
        timings={"scoring": t1 - t0, "weight_update": t2 - t1},
        diagnostics={"kept_units": {f"{layer}.{kind}": n for (layer, kind), n in sorted(kept.items())}},
    )
