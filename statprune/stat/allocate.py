"""STAT's paper-style allocation (per-type threshold on depth-weighted errors).

``paper``: the removal budget is split between heads and neurons by a fixed share; within each type
one global threshold on depth-weighted errors (weight √(L−l+1)+1, l = 1…L) picks per-layer counts —
neurons by their pivot magnitudes |R_jj|, heads by the error of keeping c heads. ``head_share=None``
uses attention's share of the dense FLOPs. The rules shared with the baselines (``greedy``, width
rounding) live in :mod:`statprune.allocation`.
"""

from __future__ import annotations

import torch

from statprune.allocation import BlockCurve, threshold_fill


def _depth_weight(layer: int, num_layers: int) -> float:
    return (num_layers - layer) ** 0.5 + 1.0  # l = layer + 1: √(L − l + 1) + 1


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
    h_removed = threshold_fill(
        [head_scores(c) for c in heads],
        [c.unit_flops for c in heads],
        [c.min_units for c in heads],
        head_budget,
    )
    saved = sum(r * c.unit_flops for r, c in zip(h_removed, heads))
    n_removed = threshold_fill(
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
