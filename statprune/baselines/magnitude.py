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

Allocation (``allocation``):

* ``"uniform"`` (default) — every layer loses the same fraction of its prunable FLOPs, its heads and
  its neurons each the target fraction (so the split follows the layer's attention/FFN FLOPs
  shares; ``head_share=h`` takes h of the removed FLOPs from heads instead, uniform across layers
  within each kind), by :func:`statprune.allocation.uniform_allocation`: every block removes the
  floor or the ceiling of its share, the target met within one unit; which blocks round up (with
  SmolLM2's 3 KV groups per layer, which layers lose a group) follows the normalised scores, not
  the layer order. Within a layer the lowest-scoring units go. This is the rule of the magnitude baselines
  papers report (LLM-Pruner's, FLAP's); the global rule below collapsed on SmolLM2 (perplexity
  46,201 at 10% FLOPs removed, docs/BASELINES.md).
* ``"global"`` — units are removed globally in ascending normalised score until the target is met,
  by :func:`statprune.allocation.greedy_allocation` on per-block curves whose increments are
  score × unit FLOPs (the greedy ratio is then the normalised score). Heads and neurons are in
  different units, so every score is divided by the mean score of its kind (over the whole model, or
  per layer with ``normalize="layer"``).

Then ``neuron_multiple=m`` (default 8, as STAT) rounds kept FFN widths to multiples of m with
:func:`statprune.allocation.round_neurons` (groups given back where the normalised score removed is
largest), the target still met within one group of m: widths such as 5963 lose the tensor-core GEMM
kernels and make speed comparisons meaningless. Every block keeps at least one unit (a stock
attention layer needs a head). No correction.

Differences from the released magnitude baselines (LLM-Pruner ``hf_prune.py --pruner_type l2
--block_wise`` with ``MagnitudeImportance``; FLAP ``lib/prune.py:prune_magnitude_sp``):

* **Score.** LLM-Pruner: per channel, the sum of squared weights of every coupled slice, averaged
  over the coupled linears (``group_reduction="mean"``), summed over a head's ``head_dim`` channels:
  head (‖Q_h‖² + ‖K_h‖² + ‖V_h‖² + ‖O_h‖²)/4, neuron (‖gate_j‖² + ‖up_j‖² + ‖down_j‖²)/3 — additive,
  where ours multiplies the input-side and output-side norms (``score="product"``). FLAP: output
  side only — neuron ‖W2 column‖ (= ours with ``score="out"``), head the *sum of the L2 norms of its
  W_O columns* (ours: the norm of the whole slice).
* **Budget.** Both prune a fraction r of the units (channels) of every pruned layer, r chosen for a
  parameter ratio; ours is a FLOPs target, the same fraction of each block's FLOPs (for heads and
  neurons that is the same fraction of units, as theirs; the attention core's s-dependence does not
  change it).
* **Layers.** LLM-Pruner's defaults prune only layers 3…30 of LLaMA-7B's 32
  (``block_{attention,mlp}_layer_start=3``, ``_end=31``) and raise r to compensate; FLAP and ours
  prune every layer.
* **Rounding.** LLM-Pruner keeps ``int(n·(1−r))`` channels (heads: the channel count removed,
  floor-divided by ``head_dim``), FLAP removes ``int(r·n)`` units per block (both floor per layer,
  so the achieved ratio is below r); ours rounds each block to the floor or the ceiling of its
  share so that the FLOPs target is met within one unit, then rounds widths to multiples of
  ``neuron_multiple``. Neither aligns widths. (Flooring the heads and letting the FFNs absorb the
  rest was measured worse on SmolLM2/sotu: below.)
* **GQA.** Neither handles grouped-query attention (LLaMA-1 MHA; FLAP hard-codes head_dim 128);
  ours removes whole KV groups (``gqa="group"``) or one query head per group (``"uniform"``).
* **Global variant.** LLM-Pruner's ``--global_pruning`` thresholds raw (unnormalised) importances
  across layers; ours (``allocation="global"``) normalises by the mean score of each kind.
* Neither released baseline corrects the remaining weights (FLAP's bias compensation is off,
  ``bias=False``, for its magnitude baseline); nor does ours.

Measured (2026-12-01, ``python benchmarks/magnitude_rules.py uniform,global 0.1 0.3``: SmolLM2-135M,
sotu, FLOPs at s = 512, perplexity of the first 16 test windows of 512 tokens, dense 24.9): at 10%
uniform 8,474, global 16,671; at 20% uniform 148,867; at 30% uniform 1,439,663, global 299,677.
Both collapse; the uniform rule is the better one at 10% and the worse one at 30% on this model.
Variants of the uniform rounding measured the same way: extra KV groups by layer order 7,255 (10%)
and 870,439 (30%); heads floored with the FFNs absorbing the rest 30,873 / 1,493,105 / 1,506,805
(10 / 20 / 30%).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch

from statprune.adapters import Adapter, LayerShape
from statprune.allocation import BlockCurve, greedy_allocation, round_neurons, uniform_allocation
from statprune.calibration import Calibration
from statprune.errors import StatpruneError
from statprune.flops import unit_costs
from statprune.pruner import MethodOutput, Target, register_method


@dataclass(frozen=True)
class MagnitudeOptions:
    allocation: Literal["uniform", "global"] = "uniform"
    head_share: float | None = None  # uniform: fraction of the removed FLOPs from heads (None: per layer)
    score: Literal["product", "in", "out"] = "product"
    norm: Literal["l2", "l1"] = "l2"
    gqa: Literal["group", "uniform"] = "group"
    normalize: Literal["model", "layer"] = "model"
    neuron_multiple: int = 8
    progress: bool = True  # accepted for a uniform interface; scoring is instant

    def __post_init__(self) -> None:
        if self.neuron_multiple < 1:
            raise StatpruneError(f"neuron_multiple must be at least 1, got {self.neuron_multiple}")
        if self.head_share is not None and not 0.0 <= self.head_share <= 1.0:
            raise StatpruneError(f"head_share must be in [0, 1], got {self.head_share}")


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
    """Remove the lowest-norm heads and neurons under the FLOPs target (no data used)."""
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
    if options.allocation == "global":
        kept = greedy_allocation(curves, target.flops_to_remove)
    else:
        kept = uniform_allocation(curves, target.flops_to_remove, options.head_share)
    kept = round_neurons(kept, curves, options.neuron_multiple, target.flops_to_remove)
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
