"""Allocation under one FLOPs budget, shared by every method (STAT and the baselines).

A method describes each prunable block (a layer's heads or its neurons) by a :class:`BlockCurve`:
the error of keeping c units and the FLOPs one unit costs. The rules here turn curves and a FLOPs
amount to remove into kept counts per block; each stops as soon as the removed FLOPs reach the
target, so the target is met within one unit (:func:`round_neurons`: within one group).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

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
    max_units: int | None = None  # at most this many kept (a forced removal); None = n_units

    @property
    def max_kept(self) -> int:
        return self.n_units if self.max_units is None else self.max_units

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
        down_ok = n // multiple * multiple >= c.min_units  # a bound (min_units) is never crossed
        if c.kind == "neurons" and multiple <= n < c.n_units and n % multiple and down_ok:
            out[k] = n // multiple * multiple
            removed += (n - out[k]) * c.unit_flops
            rounded.append(k)

    def gain(k: tuple[int, str]) -> float:
        c = by_key[k]
        return float(c.errors[out[k]] - c.errors[min(out[k] + multiple, c.n_units)]) / c.unit_flops

    for k in sorted(rounded, key=lambda k: (-gain(k), k)):
        c = by_key[k]
        up = min(out[k] + multiple, c.n_units)
        if up <= c.max_kept and removed - (up - out[k]) * c.unit_flops >= to_remove:
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


# --- bounds (OWL-style ±δ per layer, protected layers) -------------------------------------------


def parse_protect(spec: str | int | None, num_layers: int) -> set[int]:
    """Layers left untouched: an int N (the first and last N) or ``"first:a,last:b"``."""
    if spec is None or spec == "" or spec == 0:
        return set()
    if isinstance(spec, int) or str(spec).isdigit():
        first = last = int(spec)
    else:
        parts = dict(p.split(":") for p in str(spec).split(","))
        if not set(parts) <= {"first", "last"}:
            raise ValueError(f"protect_layers: expected an int or 'first:a,last:b', got {spec!r}")
        first, last = int(parts.get("first", 0)), int(parts.get("last", 0))
    return set(range(min(first, num_layers))) | set(range(max(num_layers - last, 0), num_layers))


def bound_curves(
    curves: list[BlockCurve], flops_to_remove: float, *, delta: float | None, protect: set[int]
) -> list[BlockCurve]:
    """Copies of ``curves`` with kept-count bounds (``min_units``/``max_units``) the rules then honour.

    Protected layers keep every unit. With δ, every other block (a layer's attention, its FFN) removes
    a fraction of its own FLOPs within [t − δ, t + δ], t = ``flops_to_remove`` over the unprotected
    blocks' FLOPs (what an average layer must give). Bounding each block bounds the layer. A coarse
    block with no count inside the band (3 KV groups, small δ) gets the counts just either side of
    t·n: its band is widened to the granularity, never more.
    """
    free = sum(c.n_units * c.unit_flops for c in curves if c.layer not in protect)
    t = flops_to_remove / free if free > 0 else 0.0
    out = []
    for c in curves:
        n = c.n_units
        if c.layer in protect:
            out.append(replace(c, min_units=n, max_units=n))
            continue
        if delta is None:
            out.append(c)
            continue
        eps = 1e-9
        lo_r = math.ceil(n * max(t - delta, 0.0) - eps)  # fewest units removed
        hi_r = math.floor(n * min(t + delta, 1.0) + eps)  # most units removed
        if lo_r > hi_r:
            lo_r, hi_r = math.floor(n * t + eps), math.ceil(n * t - eps)
        min_units = max(c.min_units, n - hi_r)
        out.append(replace(c, min_units=min(min_units, n), max_units=max(n - lo_r, min(min_units, n))))
    return out


def _removed(kept: dict, curves: list[BlockCurve]) -> float:
    return sum((c.n_units - kept[(c.layer, c.kind)]) * c.unit_flops for c in curves)


def enforce_bounds(kept: dict, curves: list[BlockCurve], flops_to_remove: float) -> dict:
    """Clamp each block to [min_units, max_kept], then restore the FLOPs target within one unit.

    Short of the target: remove more, least error increase per FLOP first (each block's marginal
    errors made nondecreasing), inside the bounds. Over it: give units back, largest error decrease
    per FLOP first, while the target still holds. The fill reads ``errors`` (greedy's criterion)
    whatever rule made ``kept``.
    """
    out = {}
    for c in curves:
        k = (c.layer, c.kind)
        out[k] = min(max(kept[k], c.min_units), c.max_kept)
    short = flops_to_remove - _removed(out, curves)
    if short > 0:
        scores = []
        for c in curves:
            k = out[(c.layer, c.kind)]
            # removing the r-th more unit: kept k − r + 1 → k − r
            inc = (c.errors[c.min_units : k].flip(0) - c.errors[c.min_units + 1 : k + 1].flip(0)).double()
            scores.append(torch.cummax(inc / c.unit_flops, 0).values if len(inc) else inc)
        removed = threshold_fill(scores, [c.unit_flops for c in curves], [0] * len(curves), short)
        for r, c in zip(removed, curves):
            out[(c.layer, c.kind)] -= r
    surplus = _removed(out, curves) - flops_to_remove
    while surplus > 0:  # one unit at a time: blocks are few, and a block's units come back in order
        best, best_gain = None, -math.inf
        for c in curves:
            j = out[(c.layer, c.kind)]
            if j < c.max_kept and c.unit_flops <= surplus * (1 + 1e-9):
                gain = float(c.errors[j] - c.errors[j + 1]) / c.unit_flops
                if gain > best_gain:
                    best, best_gain = c, gain
        if best is None:
            break
        out[(best.layer, best.kind)] += 1
        surplus -= best.unit_flops
    return out
