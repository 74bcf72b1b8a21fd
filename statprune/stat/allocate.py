"""Global allocation of heads and neurons across layers under one FLOPs budget.

Two rules:

* ``greedy`` (the predecessor paper's rule): remove the unit with the smallest increase of
  output error per FLOP saved, across all layers and both block types. Error curves are replaced by
  their convex minorant so that the greedy order is a single global sort of marginal ratios.
* ``paper`` (default: faithful to the STAT code, and measured better on SmolLM2, see the README): the removal budget is split between heads and neurons by a
  fixed share; within each type one global threshold on depth-weighted errors (weight √(L−l+1)+1,
  l = 1…L) picks per-layer counts — neurons by their pivot magnitudes |R_jj|, heads by the error of
  keeping c heads. ``head_share=None`` uses attention's share of the dense FLOPs (0.34 for BERT-base at
  short sequences, the code's hand-set 0.338).

Both stop as soon as the removed FLOPs reach the target, so the target is met within one unit.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch


@dataclass
class BlockCurve:
    """errors[c] = error of keeping c units (c = 0…n_units); unit_flops saved per removed unit."""

    layer: int
    kind: str  # "heads" | "neurons"
    errors: torch.Tensor
    unit_flops: float
    pivots: torch.Tensor | None = None  # neurons: |R_jj| in pivot order (paper rule)
    min_units: int = 1

    @property
    def n_units(self) -> int:
        return len(self.errors) - 1


def _convex_increments(errors: torch.Tensor, min_units: int) -> torch.Tensor:
    """Marginal error of removing units 1, 2, … (from n down to min_units), made nondecreasing."""
    n = len(errors) - 1
    ys = [float(errors[n - r]) for r in range(n - min_units + 1)]  # error after removing r units
    hull: list[int] = []
    for r in range(len(ys)):
        while len(hull) >= 2:
            r0, r1 = hull[-2], hull[-1]
            if (ys[r1] - ys[r0]) * (r - r0) >= (ys[r] - ys[r0]) * (r1 - r0):
                hull.pop()
            else:
                break
        hull.append(r)
    inc = torch.zeros(len(ys) - 1, dtype=torch.float64)
    for a, b in itertools.pairwise(hull):
        inc[a:b] = (ys[b] - ys[a]) / (b - a)
    return inc


def greedy_allocation(curves: list[BlockCurve], flops_to_remove: float) -> dict[tuple[int, str], int]:
    kept = {(c.layer, c.kind): c.n_units for c in curves}
    ratios, owners, costs = [], [], []
    for ci, c in enumerate(curves):
        inc = _convex_increments(c.errors, c.min_units)
        ratios.append(inc / c.unit_flops)
        owners.append(torch.full((len(inc),), ci, dtype=torch.long))
        costs.append(torch.full((len(inc),), c.unit_flops, dtype=torch.float64))
    if not ratios or flops_to_remove <= 0:
        return kept
    ratio, owner, cost = torch.cat(ratios), torch.cat(owners), torch.cat(costs)
    # Stable sort: ties keep per-block order, so each block's increments are taken front to back.
    order = torch.argsort(ratio, stable=True)
    saved = torch.cumsum(cost[order], 0)
    n_take = int(torch.searchsorted(saved, torch.tensor(flops_to_remove, dtype=torch.float64))) + 1
    n_take = min(n_take, len(order))
    removed = torch.bincount(owner[order[:n_take]], minlength=len(curves))
    for ci, c in enumerate(curves):
        kept[(c.layer, c.kind)] = c.n_units - int(removed[ci])
    return kept


def _depth_weight(layer: int, num_layers: int) -> float:
    return (num_layers - layer) ** 0.5 + 1.0  # l = layer + 1: √(L − l + 1) + 1


def _threshold_fill(
    scores: list[torch.Tensor], unit_flops: list[float], mins: list[int], budget: float
) -> list[int]:
    """Per block, remove units in ascending score order, globally, until ``budget`` FLOPs are removed.

    ``scores[b][r]`` is the score of the r-th unit removed from block b (nondecreasing in r).
    """
    vals, owner, cost = [], [], []
    for b, s in enumerate(scores):
        s = s[: max(len(s) - mins[b], 0)]
        vals.append(s)
        owner.append(torch.full((len(s),), b, dtype=torch.long))
        cost.append(torch.full((len(s),), unit_flops[b], dtype=torch.float64))
    removed = [0] * len(scores)
    if budget <= 0 or not vals:
        return removed
    v, o, c = torch.cat(vals), torch.cat(owner), torch.cat(cost)
    order = torch.argsort(v, stable=True)
    saved = torch.cumsum(c[order], 0)
    n_take = min(int(torch.searchsorted(saved, torch.tensor(budget, dtype=torch.float64))) + 1, len(order))
    counts = torch.bincount(o[order[:n_take]], minlength=len(scores))
    return [int(x) for x in counts]


def paper_allocation(
    curves: list[BlockCurve], flops_to_remove: float, *, num_layers: int, head_share: float
) -> dict[tuple[int, str], int]:
    heads = [c for c in curves if c.kind == "heads"]
    neurons = [c for c in curves if c.kind == "neurons"]

    def head_scores(c: BlockCurve) -> torch.Tensor:
        # removing the r-th unit leaves n − r: score = weighted error of that count (nondecreasing in r)
        w = _depth_weight(c.layer, num_layers)
        errs = torch.stack([c.errors[c.n_units - r] for r in range(1, c.n_units + 1)]) * w
        return torch.cummax(errs, 0).values

    def neuron_scores(c: BlockCurve) -> torch.Tensor:
        w = _depth_weight(c.layer, num_layers)
        assert c.pivots is not None
        return torch.cummax(c.pivots.flip(0) * w, 0).values  # smallest |R_jj| removed first

    head_budget = head_share * flops_to_remove
    h_removed = _threshold_fill(
        [head_scores(c) for c in heads],
        [c.unit_flops for c in heads],
        [c.min_units for c in heads],
        head_budget,
    )
    saved = sum(r * c.unit_flops for r, c in zip(h_removed, heads))
    n_removed = _threshold_fill(
        [neuron_scores(c) for c in neurons],
        [c.unit_flops for c in neurons],
        [c.min_units for c in neurons],
        flops_to_remove - saved,
    )
    kept = {}
    for r, c in zip(h_removed, heads):
        kept[(c.layer, c.kind)] = c.n_units - r
    for r, c in zip(n_removed, neurons):
        kept[(c.layer, c.kind)] = c.n_units - r
    return kept
