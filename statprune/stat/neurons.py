"""FFN neurons: ID of the post-activation intermediate Z, folded into the down projection.

Columns are scaled by ‖W2[:, j]‖ before pivoting, so a neuron's importance reflects its contribution
to the FFN output (METHODS.md §1.1); the interpolation is un-scaled before it is folded into W2.
SwiGLU gate and up rows are pruned together because the adapter's ``keep_neurons`` does so.
"""

from __future__ import annotations

import torch

from statprune.adapters import Adapter
from statprune.stat.dense import ridge_correction
from statprune.stat.holdout import Holdout
from statprune.stat.id import PivotedCholesky, interpolation_matrix, pivoted_cholesky
from statprune.stat.obs import obs_curve, obs_elimination


def _scaled(G: torch.Tensor, W2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    D = W2.double().norm(dim=0)
    return G * D[:, None] * D[None, :], D


def _unit_columns(W2: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    inv = torch.where(D > 0, 1.0 / D.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(D))
    return W2.double() * inv[None, :]


def neuron_curve(
    G: torch.Tensor,
    W2: torch.Tensor,
    *,
    rel_tol: float,
    out_weight: torch.Tensor | None = None,
    selection: str = "qr",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(errors, pivot_values, id_residual) when keeping the first k pivots of the scaled ID.

    errors[k] = ‖(Z − Ẑ_k) W2ᵀ‖_F², exact for the pivot order chosen (trace of W2 S_k W2ᵀ with S_k
    the Schur complement), so attention and FFN errors are in the same units for allocation.
    pivot_values[j] = |R_jj| and id_residual[k] = ‖R[k:, k:]‖_F = ‖ZD − (ZD)_k‖_F of the scaled
    problem (what the released code reads); zero beyond the numerical rank. ``out_weight`` (√g over
    W2's rows, ``error_norm=loss``): same pivot order; errors with W2 replaced by diag(√g)·W2 and
    |R_jj| by |R_jj|·D_g[p_j]/D[p_j] (derivation in stat/loss_weights.py); id_residual unweighted.
    ``selection=obs``: the greedy backward elimination's curve and √ of its error increments in
    place of |R_jj| (:func:`statprune.stat.obs.obs_curve`); no id_residual (None).
    """
    if selection == "obs":
        return (*obs_curve(G, W2, out_weight=out_weight), None)
    G = G.double()
    Gs, D = _scaled(G, W2)
    chol = pivoted_cholesky(Gs, rel_tol=rel_tol)
    W2d = W2.double().to(G.device)
    if out_weight is not None:
        W2d = W2d * out_weight.double().to(G.device)[:, None]
    total = float((W2d @ G * W2d).sum())
    gain = (_unit_columns(W2d, D.to(G.device)) @ chol.L).pow(2).sum(0)
    n = G.shape[0]
    errors = torch.full((n + 1,), 0.0, dtype=torch.float64)
    cum = torch.cat([torch.zeros(1, dtype=torch.float64, device=gain.device), gain.cumsum(0)]).cpu()
    errors[: chol.rank + 1] = (total - cum).clamp_min(0.0)
    errors[chol.rank + 1 :] = errors[chol.rank]
    pivots = torch.zeros(n, dtype=torch.float64)
    pivots[: chol.rank] = chol.pivot_values.cpu()
    if out_weight is not None:  # scaling ZD's columns by D_g/D scales R's columns alike
        Dc = D.cpu()
        ratio = torch.where(
            Dc > 0, W2d.norm(dim=0).cpu() / Dc.clamp_min(torch.finfo(torch.float64).tiny), 0.0
        )
        pivots[: chol.rank] *= ratio[chol.perm[: chol.rank].cpu()]
    id_residual = torch.zeros(n + 1, dtype=torch.float64)
    id_residual[: chol.rank + 1] = chol.residual.clamp_min(0.0).sqrt()
    return errors, pivots, id_residual


def _kept_set(chol: PivotedCholesky, k: int, G: torch.Tensor) -> torch.Tensor:
    """First k pivots; if the numerical rank is below k, fill with the largest remaining diagonals."""
    kept = chol.perm[:k]
    if len(kept) < k:
        rest = torch.ones(G.shape[0], dtype=torch.bool, device=G.device)
        rest[kept] = False
        idx = torch.nonzero(rest).flatten()
        extra = idx[torch.argsort(torch.diagonal(G)[idx], descending=True, stable=True)][: k - len(kept)]
        kept = torch.cat([kept, extra])
    return kept


def _qr_selection(
    G: torch.Tensor,
    W2: torch.Tensor,
    k: int,
    correction: bool,
    rel_tol: float,
    cross: torch.Tensor | None,
    damping: float,
    holdout: Holdout | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_new, kept) of the scaled pivoted QR (the paper's selection)."""
    n = G.shape[0]
    Gs, D = _scaled(G, W2)
    chol = pivoted_cholesky(Gs, max_steps=k, rel_tol=rel_tol)
    kept = _kept_set(chol, k, Gs).sort().values
    if correction and holdout is not None:
        damping = holdout.select(W2, kept)
    if correction and (cross is not None or damping > 0):
        return ridge_correction(W2, G, cross, kept, damping), kept
    if correction:
        T = interpolation_matrix(chol, chol.rank, kept, n)  # scaled space: Z D ≈ (Z D)[:, kept] T
        return (_unit_columns(W2, D) @ T.T) * D[kept][None, :], kept
    return W2[:, kept], kept


@torch.no_grad()
def prune_neurons(
    adapter: Adapter,
    i: int,
    G: torch.Tensor,
    k: int,
    *,
    correction: bool,
    rel_tol: float,
    cross: torch.Tensor | None = None,
    damping: float = 0.0,
    holdout: Holdout | None = None,
    selection: str = "qr",
    out_weight: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Keep ``k`` neurons of layer ``i`` chosen by the scaled ID; fold the interpolation into W2.

    ``cross``/``damping``: the dense-target, damped fit of :mod:`statprune.stat.dense`; ``holdout``:
    λ chosen on held-out examples instead of ``damping`` (:mod:`statprune.stat.holdout`).
    ``selection=obs``: the survivors of the greedy backward elimination down to k (on diag(√g)·W2
    with ``out_weight``), refit by least squares (``ridge_correction``; the fit is per output row,
    so the weighting does not change it). Returns the kept neurons (sorted, on the CPU), or None
    when all are kept.
    """
    down = adapter.down_proj(i)
    n = down.in_features
    if k >= n:
        return None
    W2 = down.weight.detach().double().to(G.device)
    G = G.double()
    if selection == "obs":
        kept = obs_elimination(G, W2, stop=k, out_weight=out_weight).kept(n).to(G.device)
        if correction and holdout is not None:
            damping = holdout.select(W2, kept)
        W_new = ridge_correction(W2, G, cross, kept, damping) if correction else W2[:, kept]
    else:
        W_new, kept = _qr_selection(G, W2, k, correction, rel_tol, cross, damping, holdout)
    kept = kept.cpu()
    adapter.keep_neurons(i, kept)
    adapter.replace_down_proj(i, W_new)
    return kept
