"""FFN neurons selected by the exact output-space error: OBS-style greedy backward elimination
(issue 15, item 4; option ``neuron_selection=obs``).

With Z (tokens × n) the activations at W_down's input, G = ZᵀZ, W = W_down (d × n): keeping a set K
and refitting its weights optimally (least squares, the correction) gives X_K = W G_{:K} G_KK⁻¹ and
the error E(K) = ‖ZWᵀ − Z_K X_Kᵀ‖_F² = tr(W_R S W_Rᵀ), R the removed set, S = G_RR − G_RK G_KK⁻¹ G_KR
the Schur complement, i.e. S = ([G⁻¹]_RR)⁻¹: E(R) = tr(W_R [G⁻¹]_RR⁻¹ W_Rᵀ). From a kept set K with
H = G_KK⁻¹ and W' = X_K (the refit weights), removing one more neuron q and refitting the rest adds,
by Pythagoras (span Z_{K∖q} ⊂ span Z_K) and the one-column case of the formula,

    δ_q = ‖W'_{:,q}‖² / H_qq,   then  W' ← W' − W'_{:,q} H_{q,:} / H_qq,  H ← H − H_{:,q} H_{q,:} / H_qq

(rank-one downdates; row/column q of both become zero). Greedy elimination removes the q of least
δ_q at every step, from all n kept down to ``stop``, so one pass gives the nested kept sets and the
whole curve errors[k] = Σ of the δ's taken to get down to k — in the units of the pivoted-QR curve,
‖(Z − Ẑ)Wᵀ‖_F², so attention and FFN errors still compare. ``out_weight`` (√g over W's rows,
``error_norm=loss``) weights W's rows: the elimination runs on diag(√g)·W.

Singular G: neurons with zero energy (G_jj = 0, never active on the calibration tokens) are
removed first, at zero error (exact); the others are inverted with a ridge of 1e-10 × their mean
diagonal (dependent live neurons; fewer tokens than neurons), raised ×100 until the Cholesky
factorization succeeds where rounding left G indefinite (a Gram accumulated in float32). Drift of the downdates: H and W' are recomputed from G (Cholesky)
whenever a quarter of the active neurons has gone, which also shrinks the matrices geometrically.
Cost: O(n²(n + d)) per layer (two in-place rank-one updates per step; the column norms of W' are
updated alongside, a matrix-vector product). SmolLM2-135M's FFN (n = 1536, d = 576, 8192 tokens),
the full curve in float64 on one core of a loaded CPU: 4.5–5 s per layer (the QR curve: 0.5 s); the
apply pass stops at k. On a GPU each step is a handful of kernels and no host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

RIDGE = 1e-10  # × mean diagonal of the live neurons' Gram
REFRESH = 0.75  # recompute H and W' from G when the active set has shrunk to this fraction


@dataclass
class Elimination:
    """``removed``: neurons in removal order (n − stop of them); ``errors[k]`` for k ≥ stop (NaN below)."""

    removed: torch.Tensor
    errors: torch.Tensor

    def kept(self, n: int) -> torch.Tensor:
        mask = torch.ones(n, dtype=torch.bool)
        mask[self.removed] = False
        return torch.nonzero(mask).flatten()


def _ridged_inverse(A: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
    """(A + λI)⁻¹ by Cholesky, λ raised ×100 until it factors (a float32-accumulated Gram can have
    eigenvalues slightly below zero); the raised λ is kept for the rest of the elimination."""
    eye = torch.eye(len(A), dtype=A.dtype, device=A.device)
    while True:
        L, info = torch.linalg.cholesky_ex(A + lam * eye)
        if int(info) == 0:
            return torch.cholesky_inverse(L), lam
        lam = max(lam * 100.0, torch.finfo(A.dtype).tiny)


@torch.no_grad()
def obs_elimination(
    G: torch.Tensor, W: torch.Tensor, *, stop: int = 0, out_weight: torch.Tensor | None = None
) -> Elimination:
    """Greedy backward elimination from n kept neurons down to ``stop`` (module docstring)."""
    G = G.double()
    dev = G.device
    n = G.shape[0]
    W = W.detach().double().to(dev)
    if out_weight is not None:
        W = W * out_weight.double().to(dev)[:, None]
    diag = torch.diagonal(G)
    dead = torch.nonzero(diag <= 0).flatten()
    active = torch.nonzero(diag > 0).flatten()
    removed = [dead[: max(n - stop, 0)].cpu()]
    deltas = [torch.zeros(len(removed[0]), dtype=torch.float64)]
    lam = RIDGE * float(diag[active].mean()) if len(active) else 0.0
    todo = n - stop - len(removed[0])
    while todo > 0:
        m = len(active)
        H, lam = _ridged_inverse(G[active][:, active], lam)
        Wp = (W @ G[:, active]) @ H  # the refit weights of the active set
        steps = min(todo, max(1, m - int(REFRESH * m)))
        alive = torch.ones(m, dtype=torch.bool, device=dev)
        picks = torch.empty(steps, dtype=torch.long, device=dev)
        gains = torch.empty(steps, dtype=torch.float64, device=dev)
        inf = torch.tensor(float("inf"), dtype=torch.float64, device=dev)
        norms = Wp.pow(2).sum(0)  # ‖W'_{:,j}‖², kept up to date by the rank-one updates
        for s in range(steps):  # no host syncs inside: the picks stay on the device
            h = torch.diagonal(H).clamp_min(torch.finfo(H.dtype).tiny)
            score = torch.where(alive, norms.clamp_min(0.0) / h, inf)
            q = torch.argmin(score)
            hq = H.index_select(1, q.view(1)).squeeze(1)
            r = hq / hq[q]
            wq = Wp.index_select(1, q.view(1)).squeeze(1)
            norms.add_(r * (r * wq.dot(wq) - 2.0 * (wq @ Wp)))
            Wp.addr_(wq, r, alpha=-1.0)
            H.addr_(hq, r, alpha=-1.0)
            alive[q] = False
            picks[s], gains[s] = q, score[q]
        removed.append(active[picks].cpu())
        deltas.append(gains.clamp_min(0.0).cpu())
        active = active[alive]
        todo -= steps
    order = torch.cat(removed)
    errors = torch.full((n + 1,), float("nan"), dtype=torch.float64)
    errors[n - len(order) :] = torch.cat(
        [torch.cat(deltas).cumsum(0).flip(0), torch.zeros(1, dtype=torch.float64)]
    )
    return Elimination(order, errors)


def obs_curve(
    G: torch.Tensor, W: torch.Tensor, *, out_weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(errors, pivots): errors[k] of keeping the k last-eliminated neurons, k = 0…n; pivots[j] =
    √(errors[j] − errors[j + 1]), the output-space norm the (j + 1)-th kept neuron adds — what the
    ``share`` rule reads in place of the pivoted QR's |R_jj| (smallest removed first)."""
    errors = obs_elimination(G, W, out_weight=out_weight).errors
    return errors, (errors[:-1] - errors[1:]).clamp_min(0.0).sqrt()
