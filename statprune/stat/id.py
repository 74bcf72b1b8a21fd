"""Interpolative decomposition from streamed statistics: greedy pivoted Cholesky of a Gram matrix.

Column-pivoted QR of activations A (N × n) and greedy diagonal-pivoted Cholesky of G = AᵀA pick the
same pivots with R = Lᵀ (both are determined by G), so the token dimension never has to be held.
The factorization is blocked like LAPACK's ``pstrf``: pivots are chosen one at a time from the
up-to-date diagonal, while the trailing matrix is updated once per block with one matrix product,
so the cost is BLAS-3 and runs on the GPU as well as the CPU. Only triangular solves are used.

Rank deficiency (dead neurons, duplicated heads): a pivot whose residual falls below
``rel_tol · max diag(G)`` stops the factorization (or, with ``blocks``, ends that block), so every
factor stays finite and interpolation coefficients are supported on numerically independent columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class PivotedCholesky:
    """G[p, q] ≈ Σ_c L[p, c] L[q, c]; ``perm[c]`` is the column pivoted at step c.

    ``residual[c]`` is trace of the Schur complement after c steps (‖A − A_I T‖_F² for the first
    c pivots); ``block_ends[b]`` is the step count at which block b was finished (block mode).
    """

    L: torch.Tensor  # (n, rank), rows in original column order
    perm: torch.Tensor  # (rank,) long
    residual: torch.Tensor  # (rank + 1,) float64
    block_ends: list[int]

    @property
    def rank(self) -> int:
        return int(self.perm.numel())

    @property
    def pivot_values(self) -> torch.Tensor:
        """|R_cc| = L[perm[c], c]: the magnitude of each pivot (the paper's per-unit error)."""
        return self.L[self.perm, torch.arange(self.rank, device=self.L.device)]


def pivoted_cholesky(
    G: torch.Tensor,
    *,
    max_steps: int | None = None,
    blocks: Sequence[torch.Tensor] | None = None,
    rel_tol: float = 1e-12,
    block_size: int = 64,
) -> PivotedCholesky:
    """Greedy diagonal-pivoted Cholesky of a PSD matrix (computed in float64).

    ``blocks``: optional ordered groups of column indices; pivots are taken inside the current group
    until it is exhausted (or numerically dependent), then the next group starts. This gives a
    rank-revealing factorization that respects a prescribed unit order (used for attention heads).
    """
    G = G.to(torch.float64)
    n = G.shape[0]
    dev = G.device
    steps_cap = n if max_steps is None else min(max_steps, n)
    if blocks is None:
        blocks = [torch.arange(n, device=dev)]
    block_masks = []
    for blk in blocks:
        m = torch.zeros(n, dtype=torch.bool, device=dev)
        m[torch.as_tensor(blk, device=dev, dtype=torch.long)] = True
        block_masks.append(m)

    A = G.clone()
    d = torch.diagonal(G).clone().clamp_min_(0.0)
    tol = rel_tol * float(d.max()) if n else 0.0
    L = torch.zeros(n, steps_cap, dtype=torch.float64, device=dev)
    active = torch.ones(n, dtype=torch.bool, device=dev)
    perm: list[int] = []
    residual = [float(d.sum())]
    block_ends: list[int] = []
    j = 0
    j0 = 0  # first step whose column is not yet folded into A
    neg_inf = torch.tensor(float("-inf"), dtype=torch.float64, device=dev)
    for bmask in block_masks:
        while j < steps_cap:
            cand = torch.where(active & bmask, d, neg_inf)
            p = int(torch.argmax(cand))
            piv = float(cand[p])
            if not piv > tol:
                break
            col = A[:, p] - L[:, j0:j] @ L[p, j0:j]
            col = col / piv**0.5
            col[~active] = 0.0
            col[p] = piv**0.5
            L[:, j] = col
            active[p] = False
            d -= col * col
            d[p] = 0.0
            d.clamp_min_(0.0)
            perm.append(p)
            residual.append(float(d[active].sum()))
            j += 1
            if j - j0 == block_size:
                A -= L[:, j0:j] @ L[:, j0:j].T
                j0 = j
        block_ends.append(j)
    return PivotedCholesky(
        L=L[:, :j],
        perm=torch.tensor(perm, dtype=torch.long, device=dev),
        residual=torch.tensor(residual, dtype=torch.float64),
        block_ends=block_ends,
    )


def interpolation_matrix(chol: PivotedCholesky, steps: int, kept: torch.Tensor, n: int) -> torch.Tensor:
    """T (len(kept) × n) with A ≈ A[:, kept] T: identity on ``kept``, least squares elsewhere.

    The least-squares fit uses the first ``steps`` pivots (all of which must be in ``kept``):
    T[pivots, j] = L11⁻ᵀ L[j, :steps]ᵀ, a triangular solve. Kept columns that are not pivots
    (numerically dependent ones) get zero coefficients, so T stays finite.
    """
    dev = chol.L.device
    kept = torch.as_tensor(kept, dtype=torch.long, device=dev)
    T = torch.zeros(len(kept), n, dtype=torch.float64, device=dev)
    T[torch.arange(len(kept), device=dev), kept] = 1.0
    if steps == 0:
        return T
    piv = chol.perm[:steps]
    pos = torch.full((n,), -1, dtype=torch.long, device=dev)
    pos[kept] = torch.arange(len(kept), device=dev)
    if bool((pos[piv] < 0).any()):
        raise ValueError("every pivot used for the fit must be kept")
    is_kept = pos >= 0
    rest = torch.nonzero(~is_kept).flatten()
    if len(rest):
        L11 = chol.L[piv, :steps]  # lower triangular in pivot order
        coef = torch.linalg.solve_triangular(L11.T, chol.L[rest, :steps].T, upper=True)
        T[pos[piv][:, None], rest[None, :]] = coef
    return T
