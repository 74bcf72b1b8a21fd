"""Mask rearrangement (Kwon et al. §4.2): per layer, re-choose *which* units to prune, counts fixed.

The diagonal Fisher ignores interactions; within a layer the block-diagonal Fisher Σ_b g_b g_bᵀ
(g_b = the mini-batch gradient of the layer's masks) estimates the loss increase of pruning a set S as
½ Σ_b (Σ_{i∈S} g_{b,i})², the squared norm of the summed gradients of the pruned set. Greedy swaps
lower it: start from the given pruned set, walk the kept units in ascending Fisher order, tentatively
add each to the pruned set and drop the member whose removal leaves the smallest objective (possibly
the candidate itself, so the objective never increases).
"""

from __future__ import annotations

import torch


def objective(grads: torch.Tensor, pruned: torch.Tensor) -> float:
    """Σ_b (Σ_{i pruned} g_{b,i})² for a boolean ``pruned`` mask; ``grads`` is (batches × units)."""
    return float(grads.double()[:, pruned.to(grads.device)].sum(1).pow(2).sum())


@torch.no_grad()
def rearrange(grads: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """New boolean kept-mask with the same count, by greedy swaps on the block-diagonal Fisher."""
    n = kept.numel()
    n_pruned = n - int(kept.sum())
    if n_pruned == 0 or n_pruned == n:
        return kept.clone()
    g = grads.double().T.contiguous()  # units × batches
    fisher = g.pow(2).sum(1).cpu()
    kept_cpu = kept.cpu()
    pruned = torch.nonzero(~kept_cpu).flatten().to(g.device)
    candidates = torch.nonzero(kept_cpu).flatten()
    candidates = candidates[torch.argsort(fisher[candidates], stable=True)].to(g.device)
    s = g[pruned].sum(0)
    for c in candidates:
        members = torch.cat([pruned, c.view(1)])
        s_plus = s + g[c]
        J = (s_plus[None, :] - g[members]).pow(2).sum(1)
        # ties: drop the candidate (keeps the current set)
        drop = len(members) - 1 - int(torch.argmin(J.flip(0)))
        s = s_plus - g[members[drop]]
        pruned = torch.cat([members[:drop], members[drop + 1 :]])
    out = torch.ones(n, dtype=torch.bool)
    out[pruned.cpu()] = False
    return out
