"""Mask search under the FLOPs budget (Kwon et al. §4.1, Algorithm 1).

Heads and neurons are ranked globally by Fisher importance. For every possible number of kept heads,
the rest of the budget is filled with the most important neurons; the pair with the largest total
importance wins. Costs come from the shared FLOPs model (:func:`statprune.flops.unit_costs`) per
layer, so layers of different shapes are handled; with equal neuron costs the fill leaves less than one
neuron of the budget unused, so the target is met within one unit.

Head units are KV groups (a head under multi-head attention): a physically smaller stock GQA layer
needs whole groups. Differences from the released ``search_mac``: every layer keeps its most
important head unit, because a stock attention layer cannot have zero heads (the released masks
allow it and its loop starts at one head in the whole model); a head count whose heads alone exceed
the budget is infeasible here (the released loop does not check and could pick it); ties go to more
heads (released: fewer — only exact ties differ). :func:`round_selection` then rounds FFN widths to
multiples of ``neuron_multiple`` (the released code does not; 8 makes kept widths tensor-core
friendly, as STAT's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from statprune.allocation import BlockCurve, round_neurons
from statprune.errors import StatpruneError


@dataclass
class Selection:
    """Kept head units and neurons per layer (boolean masks)."""

    heads: list[torch.Tensor]
    neurons: list[torch.Tensor]

    def counts(self) -> dict[str, int]:
        out = {}
        for i, (h, n) in enumerate(zip(self.heads, self.neurons)):
            out[f"{i}.heads"] = int(h.sum())
            out[f"{i}.neurons"] = int(n.sum())
        return out


def search(
    head_imp: list[torch.Tensor],
    head_cost: list[float],
    neuron_imp: list[torch.Tensor],
    neuron_cost: list[float],
    budget: float,
) -> Selection:
    """Masks that maximise total importance with kept FLOPs ≤ ``budget``."""
    L = len(head_imp)
    # mandatory: the best head unit of every layer
    mandatory = [int(torch.argmax(h)) for h in head_imp]
    fixed_cost = sum(head_cost)
    if fixed_cost > budget:
        raise StatpruneError(
            "kwon: the FLOPs target is too small to keep one attention head per layer; lower the sparsity"
        )
    h_val, h_cost, h_owner, h_idx = [], [], [], []
    for i, h in enumerate(head_imp):
        rest = torch.ones(len(h), dtype=torch.bool)
        rest[mandatory[i]] = False
        idx = torch.nonzero(rest).flatten()
        h_val.append(h.double().cpu()[idx])
        h_cost.append(torch.full((len(idx),), head_cost[i], dtype=torch.float64))
        h_owner.append(torch.full((len(idx),), i, dtype=torch.long))
        h_idx.append(idx)
    n_val = [n.double().cpu() for n in neuron_imp]
    n_cost = [torch.full((len(n),), neuron_cost[i], dtype=torch.float64) for i, n in enumerate(neuron_imp)]
    n_owner = [torch.full((len(n),), i, dtype=torch.long) for i, n in enumerate(neuron_imp)]
    n_idx = [torch.arange(len(n)) for n in neuron_imp]

    hv, hc, ho, hi = map(torch.cat, (h_val, h_cost, h_owner, h_idx))
    nv, nc, no, ni = map(torch.cat, (n_val, n_cost, n_owner, n_idx))
    h_order = torch.argsort(hv, descending=True, stable=True)
    n_order = torch.argsort(nv, descending=True, stable=True)
    zero = torch.zeros(1, dtype=torch.float64)
    h_cum_cost = torch.cat([zero, hc[h_order].cumsum(0)])
    h_cum_imp = torch.cat([zero, hv[h_order].cumsum(0)])
    n_cum_cost = torch.cat([zero, nc[n_order].cumsum(0)])
    n_cum_imp = torch.cat([zero, nv[n_order].cumsum(0)])

    remaining = budget - fixed_cost - h_cum_cost  # per number of extra heads
    feasible = remaining >= 0
    n_take = torch.searchsorted(n_cum_cost, remaining.clamp_min(0.0), right=True) - 1
    total = h_cum_imp + n_cum_imp[n_take]
    total[~feasible] = -torch.inf
    # largest total; ties go to more heads, so a budget that fits one more unit is never left unused
    best = int(len(total) - 1 - torch.argmax(total.flip(0)))
    k, m = best, int(n_take[best])

    h_sel, n_sel = h_order[:k], n_order[:m]
    heads, neurons = [], []
    for i in range(L):
        h = torch.zeros(len(head_imp[i]), dtype=torch.bool)
        h[mandatory[i]] = True
        h[hi[h_sel][ho[h_sel] == i]] = True
        n = torch.zeros(len(neuron_imp[i]), dtype=torch.bool)
        n[ni[n_sel][no[n_sel] == i]] = True
        heads.append(h)
        neurons.append(n)
    return Selection(heads=heads, neurons=neurons)


def round_selection(
    sel: Selection,
    head_cost: list[float],
    neuron_imp: list[torch.Tensor],
    neuron_cost: list[float],
    budget: float,
    multiple: int,
) -> Selection:
    """Kept FFN widths as multiples of ``multiple`` with kept FLOPs still ≤ ``budget``.

    The shared rule (:func:`statprune.allocation.round_neurons`) on Kwon's own objective: the loss of
    keeping c neurons of a layer is the Fisher mass of the units outside its top c, so a width rounds
    down by dropping its least important kept neurons and groups are given back (most Fisher per
    FLOP first) while the budget allows: the target is met within one group. Which units: a layer's
    top-importance neurons, as the search keeps them (head selections are unchanged).
    """
    if multiple <= 1:
        return sel
    curves, kept = [], {}
    for i, (h, n) in enumerate(zip(sel.heads, sel.neurons)):
        imp = neuron_imp[i].double().cpu().sort(descending=True).values
        errors = imp.sum() - torch.cat([imp.new_zeros(1), imp.cumsum(0)])
        curves.append(BlockCurve(i, "neurons", errors, neuron_cost[i], min_units=0))
        curves.append(BlockCurve(i, "heads", torch.zeros(len(h) + 1, dtype=torch.float64), head_cost[i]))
        kept[(i, "neurons")], kept[(i, "heads")] = int(n.sum()), int(h.sum())
    total = sum(c.n_units * c.unit_flops for c in curves)
    out = round_neurons(kept, curves, multiple, total - budget)
    neurons = []
    for i, n in enumerate(sel.neurons):
        want, have = out[(i, "neurons")], int(n.sum())
        imp = neuron_imp[i].double().cpu()
        new = n.clone()
        if want < have:  # drop the least important kept neurons
            idx = torch.nonzero(n).flatten()
            new[idx[torch.argsort(imp[idx], stable=True)[: have - want]]] = False
        elif want > have:  # add the most important pruned ones
            idx = torch.nonzero(~n).flatten()
            new[idx[torch.argsort(imp[idx], descending=True, stable=True)[: want - have]]] = True
        neurons.append(new)
    return Selection(heads=[h.clone() for h in sel.heads], neurons=neurons)
