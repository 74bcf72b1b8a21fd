"""Attention heads: two-level selection and block least-squares correction into W_O.

Level 1 ranks heads (or GQA groups) by pivoted QR with one column per unit: rows are (token,
within-head dim) pairs, whose Gram is the block-trace of the head-output Gram. Level 2 fits every
dimension of every removed head on all kept dimensions (block-ordered pivoted Cholesky, so
numerically dependent kept dimensions are skipped) and folds the fit into W_O. Q/K and softmax are
not corrected; only the value path into W_O is (METHODS.md §1.2).

GQA (query heads share K/V): the layer must stay a stock grouped-query layer, so units are either
whole KV groups (``gqa="group"``, default: it also shrinks K/V and the KV cache; for multi-head
attention a group is one head, which is exactly the paper's head selection), or one query head from
every group (``gqa="uniform"``, same count per group, K/V kept).
"""

from __future__ import annotations

import itertools

import torch

from statprune.adapters import Adapter, LayerShape, head_dims
from statprune.stat.dense import ridge_correction
from statprune.stat.holdout import Holdout
from statprune.stat.id import interpolation_matrix, pivoted_cholesky


def _order(G: torch.Tensor, rel_tol: float) -> torch.Tensor:
    """All indices of a small Gram in pivot order (dependent ones appended by index)."""
    chol = pivoted_cholesky(G, rel_tol=rel_tol)
    seen = torch.zeros(G.shape[0], dtype=torch.bool)
    perm = chol.perm.cpu()
    seen[perm] = True
    return torch.cat([perm, torch.nonzero(~seen).flatten()])


def head_units(G: torch.Tensor, shape: LayerShape, mode: str, *, rel_tol: float) -> list[torch.Tensor]:
    """Units of query heads, most important first (each a tensor of head indices)."""
    H, hd, g = shape.num_heads, shape.head_dim, shape.group_size
    Gh = G.double().reshape(H, hd, H, hd).diagonal(dim1=1, dim2=3).sum(-1)  # (H, H) block traces
    if mode == "group" or g == 1:
        Gg = Gh.reshape(H // g, g, H // g, g).diagonal(dim1=1, dim2=3).sum(-1)
        return [torch.arange(g) + grp * g for grp in _order(Gg, rel_tol).tolist()]
    if mode != "uniform":
        raise ValueError(f"unknown gqa mode {mode!r}")
    order = _order(Gh, rel_tol)
    per_group: list[list[int]] = [[] for _ in range(H // g)]
    for h in order.tolist():
        per_group[h // g].append(h)
    return [torch.tensor([grp[u] for grp in per_group]) for u in range(g)]


EXACT_MAX_UNITS = 8  # C(8, 4) = 70 subsets: enumeration stays cheap


def subset_error(G: torch.Tensor, W: torch.Tensor, dims: torch.Tensor, total: float) -> float:
    """‖(C − Ĉ_S) W_Oᵀ‖_F² of keeping dims S with the least-squares correction, from the Gram."""
    if len(dims) == 0:
        return total
    B = W @ G[:, dims]  # out × |S|
    A = G[dims][:, dims]
    chol, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        explained = float((B * torch.cholesky_solve(B.T, chol).T).sum())
    else:
        explained = float((B @ torch.linalg.pinv(A, hermitian=True) * B).sum())
    return max(total - explained, 0.0)


def exact_units(
    G: torch.Tensor,
    W_O: torch.Tensor,
    units: list[torch.Tensor],
    hd: int,
    out_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[list[int]]]:
    """(errors[k], best[k]): for every k, the k-subset of ``units`` with the least output-space
    error (every subset enumerated; ``head_selection=exact``) and that error. ``out_weight`` (√g over
    W_O's rows, ``error_norm=loss``): the subsets are still chosen by the unweighted error; the
    errors returned are theirs with W_O's rows scaled by it (stat/loss_weights.py)."""
    G = G.double()
    W = W_O.detach().double().to(G.device)
    total = float((W @ G * W).sum())
    if out_weight is not None:
        errors, best = exact_units(G, W_O, units, hd)
        Wg = W * out_weight.double().to(G.device)[:, None]
        total_g = float((Wg @ G * Wg).sum())
        for k, S in enumerate(best):
            dims = torch.cat([head_dims(units[u], hd) for u in S]) if S else torch.zeros(0, dtype=torch.long)
            errors[k] = subset_error(G, Wg, dims.to(G.device), total_g)
        return errors, best
    n = len(units)
    errors = torch.zeros(n + 1, dtype=torch.float64)
    best: list[list[int]] = []
    for k in range(n + 1):
        scored = []
        for S in itertools.combinations(range(n), k):
            dims = (
                torch.cat([head_dims(units[u], hd) for u in S]).to(G.device)
                if S
                else torch.zeros(0, dtype=torch.long)
            )
            scored.append((subset_error(G, W, dims, total), S))
        err, S = min(scored, key=lambda x: x[0])  # first on ties: the lexicographically smallest set
        errors[k], best = err, [*best, list(S)]
    return errors, best


def select_units(
    G: torch.Tensor,
    W_O: torch.Tensor,
    shape: LayerShape,
    mode: str,
    k: int,
    *,
    selection: str,
    rel_tol: float,
) -> list[torch.Tensor]:
    """Units in pivoted-QR order, or (``selection=exact``, at most EXACT_MAX_UNITS units) with the
    best k-subset moved to the front, so that keeping the first k keeps it."""
    units = head_units(G, shape, mode, rel_tol=rel_tol)
    if selection == "qr" or len(units) > EXACT_MAX_UNITS or k >= len(units):
        return units
    if selection != "exact":
        raise ValueError(f"unknown head_selection {selection!r}")
    chosen = exact_units(G, W_O, units, shape.head_dim)[1][k]
    return [units[u] for u in chosen] + [u for j, u in enumerate(units) if j not in chosen]


def _blocks(units: list[torch.Tensor], hd: int, device: torch.device) -> list[torch.Tensor]:
    return [head_dims(u, hd).to(device) for u in units]


def head_curve(
    G: torch.Tensor, W_O: torch.Tensor, units: list[torch.Tensor], hd: int, *, rel_tol: float
) -> torch.Tensor:
    """errors[k] = ‖(C − Ĉ_k) W_Oᵀ‖_F² when keeping the first k units with the block correction."""
    G = G.double()
    W = W_O.detach().double().to(G.device)
    chol = pivoted_cholesky(G, blocks=_blocks(units, hd, G.device), rel_tol=rel_tol)
    total = float((W @ G * W).sum())
    gain = (W @ chol.L).pow(2).sum(0).cpu()
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), gain.cumsum(0)])
    ends = torch.tensor([0, *chol.block_ends])
    return (total - cum[ends]).clamp_min(0.0)


@torch.no_grad()
def prune_heads(
    adapter: Adapter,
    i: int,
    G: torch.Tensor,
    k_units: int,
    *,
    mode: str,
    correction: bool,
    rel_tol: float,
    cross: torch.Tensor | None = None,
    damping: float = 0.0,
    selection: str = "qr",
    holdout: Holdout | None = None,
) -> torch.Tensor | None:
    """Keep the first ``k_units`` units of layer ``i``; fold the least-squares fit into W_O.

    ``cross``/``damping``: the dense-target, damped fit of :mod:`statprune.stat.dense`;
    ``selection``: ``qr`` (the paper's pivoted-QR order) or ``exact`` (:func:`select_units`);
    ``holdout``: λ chosen on held-out examples instead of ``damping`` (:mod:`statprune.stat.holdout`).
    Returns W_O's kept input dimensions (sorted), or None when all are kept.
    """
    shape = adapter.layer_shape(i)
    W_O = adapter.out_proj(i).weight
    units = select_units(G, W_O, shape, mode, k_units, selection=selection, rel_tol=rel_tol)
    if k_units >= len(units):
        return None
    hd = shape.head_dim
    kept_heads = torch.cat(units[:k_units]).sort().values
    kept_dims = head_dims(kept_heads, hd).to(G.device)
    W = adapter.out_proj(i).weight.detach().double().to(G.device)
    if correction and holdout is not None:
        damping = holdout.select(W, kept_dims)
    if correction and (cross is not None or damping > 0):
        W_new = ridge_correction(W, G, cross, kept_dims, damping)
    elif correction:
        chol = pivoted_cholesky(G.double(), blocks=_blocks(units[:k_units], hd, G.device), rel_tol=rel_tol)
        T = interpolation_matrix(chol, chol.rank, kept_dims, G.shape[0])
        W_new = W @ T.T
    else:
        W_new = W[:, kept_dims]
    adapter.keep_heads(i, kept_heads)
    adapter.replace_out_proj(i, W_new)
    return kept_dims
