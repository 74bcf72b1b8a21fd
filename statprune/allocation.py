"""Allocation under one FLOPs budget, shared by every method (STAT and the baselines).

A method describes each prunable block (a layer's heads or its neurons) by a :class:`BlockCurve`:
the error of keeping c units and the FLOPs one unit costs. The rules here turn curves and a FLOPs
amount to remove into kept counts per block; each stops as soon as the removed FLOPs reach the
target, so the target is met within one unit (:func:`round_neurons`: within one group).
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


def threshold_fill(
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


def round_neurons(kept: dict, curves: list[BlockCurve], multiple: int, to_remove: float) -> dict:
    """Kept neuron counts as multiples of ``multiple`` with the FLOPs target still met.

    Every pruned FFN goes down to a multiple (a layer keeping fewer than ``multiple`` stays as is);
    then groups of ``multiple`` neurons are given back, largest error reduction first, while the
    removed FLOPs stay at or above ``to_remove``. So the target is met within one group, and the
    error stays close to the unrounded allocation's (not a blanket round-down).
    """
    if multiple <= 1:
        return kept
    by_key = {(c.layer, c.kind): c for c in curves}
    out = dict(kept)
    removed = sum((c.n_units - kept[k]) * c.unit_flops for k, c in by_key.items())
    rounded = []
    for k, c in by_key.items():
        n = kept[k]
        if c.kind == "neurons" and multiple <= n < c.n_units and n % multiple:
            out[k] = n // multiple * multiple
            removed += (n - out[k]) * c.unit_flops
            rounded.append(k)

    def gain(k: tuple[int, str]) -> float:
        c = by_key[k]
        return float(c.errors[out[k]] - c.errors[min(out[k] + multiple, c.n_units)]) / c.unit_flops

    for k in sorted(rounded, key=lambda k: (-gain(k), k)):
        c = by_key[k]
        up = min(out[k] + multiple, c.n_units)
        if removed - (up - out[k]) * c.unit_flops >= to_remove:
            removed -= (up - out[k]) * c.unit_flops
            out[k] = up
    return out


def _fill_fraction(weights: list[float], caps: list[float], amount: float) -> float:
    """Smallest f with sum_b min(f·w_b, cap_b) = amount (inf when every block saturates first)."""
    order = sorted((b for b in range(len(weights)) if weights[b] > 0), key=lambda b: caps[b] / weights[b])
    fixed, free_w = 0.0, sum(weights[b] for b in order)
    for b in order:
        f = (amount - fixed) / free_w
        if f * weights[b] <= caps[b]:
            return f
        fixed += caps[b]
        free_w -= weights[b]
    return float("inf")


def uniform_allocation(
    curves: list[BlockCurve], flops_to_remove: float, head_share: float | None = None
) -> dict[tuple[int, str], int]:
    """Every block loses the same fraction of its FLOPs (the per-layer rule of magnitude/FLAP baselines).

    With ``head_share`` h, heads blocks together give h of ``flops_to_remove`` and neuron blocks the
    rest, each kind uniform across layers. A block that reaches ``min_units`` stops and the others
    share its deficit (water-filling). Each block then removes the floor or the ceiling of its
    fractional share: blocks are rounded up, smallest error increase per FLOP first (ties: largest
    remainder, then block order), until the target is met — so it is met within one unit, and which
    layers give the extra (coarse) KV group is decided by the method's scores, not by layer order.
    """
    kept = {(c.layer, c.kind): c.n_units for c in curves}
    if flops_to_remove <= 0 or not curves:
        return kept
    flops = [c.n_units * c.unit_flops for c in curves]
    caps = [max(c.n_units - c.min_units, 0) * c.unit_flops for c in curves]
    weights = list(flops)
    if head_share is not None:
        total = sum(flops)
        by_kind = {k: sum(f for f, c in zip(flops, curves) if c.kind == k) for k in ("heads", "neurons")}
        share = {"heads": head_share, "neurons": 1.0 - head_share}
        weights = [f * share[c.kind] * total / max(by_kind[c.kind], 1e-300) for f, c in zip(flops, curves)]
    f = _fill_fraction(weights, caps, flops_to_remove)
    units = [min(f * w, cap) / c.unit_flops if w > 0 else 0.0 for w, cap, c in zip(weights, caps, curves)]
    removed_units = [int(u + 1e-9) for u in units]
    removed = sum(r * c.unit_flops for r, c in zip(removed_units, curves))

    def next_cost(b: int) -> float:
        c, k = curves[b], curves[b].n_units - removed_units[b]
        return float(c.errors[k - 1] - c.errors[k]) / c.unit_flops if k > c.min_units else float("inf")

    fractional = [units[b] - removed_units[b] > 1e-9 for b in range(len(curves))]
    # floor → ceiling first; a further unit anywhere only if rounding error left the target short
    rounding = sorted(
        range(len(curves)), key=lambda b: (not fractional[b], next_cost(b), removed_units[b] - units[b], b)
    )
    for b in rounding:
        if removed >= flops_to_remove:
            break
        if (removed_units[b] + 1) * curves[b].unit_flops <= caps[b] + 1e-9 * curves[b].unit_flops:
            removed_units[b] += 1
            removed += curves[b].unit_flops
    for b, c in enumerate(curves):
        kept[(c.layer, c.kind)] = c.n_units - removed_units[b]
    return kept
