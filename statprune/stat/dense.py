"""Correction against the dense model, damped (issue 15, item 3; options ``correction_target``, ``damping``).

STAT's correction refits W_O / W_down of a pruned layer so that its kept activations reproduce the
layer's *own* sub-block output on the pruned model's inputs (``correction_target=self``). Errors
of earlier layers then pass through uncorrected. With ``correction_target=dense`` the fit targets
the *dense* model's sub-block output on the same tokens instead:

    min_X ‖C_p[:, K] X − C_d W_ᵀ‖² + λ‖X − W[:, K]ᵀ‖²,   X = W_newᵀ,
    X = (G_KK + λI)⁻¹ (M[K, :] Wᵀ + λ W[:, K]ᵀ),   G = C_pᵀ C_p,  M = C_pᵀ C_d (the cross-Gram),

C_p the pruned model's activations at the projection's input, C_d the dense model's. λ (``damping``)
is a fraction of the mean diagonal of G (as SparseGPT / SliceGPT damp); the ridge pulls towards the
uncorrected kept columns, so λ → ∞ is ``correction=false`` and the correction's norm shrinks
monotonically with λ. With ``self`` M = G; ``self`` with λ = 0 is today's path, untouched.

Where C_d comes from: a second walk of *dense* hidden states (:func:`dense_walk`, advanced by the
original layer), because the dense model's activations at layer i depend on every dense layer
before it, not only on layer i's original weights. Running the original layer on the pruned walk's
inputs would give layer i's dense function of pruned inputs — for attention that is exactly the
``self`` target. Memory: one more copy of the calibration hidden states (the same placement and
dtype as the walk's) and one layer's original weights (a copy taken before the layer is pruned);
the Grams are d × d as before; activations are never stored, because both walks run batch by batch
in lockstep and M is accumulated per batch.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from statprune.calibration import LayerWalk, _first

if TYPE_CHECKING:
    from statprune.stat.holdout import Holdout


def ridge_correction(
    W: torch.Tensor, G: torch.Tensor, M: torch.Tensor | None, kept: torch.Tensor, damping: float
) -> torch.Tensor:
    """W_new (out × |kept|) of the module docstring; ``M=None`` means ``self`` (M = G)."""
    G = G.double()
    M = G if M is None else M.double()
    W = W.detach().double().to(G.device)
    kept = torch.as_tensor(kept, dtype=torch.long, device=G.device)
    lam = damping * float(torch.diagonal(G).mean())
    A = G[kept][:, kept] + lam * torch.eye(len(kept), dtype=G.dtype, device=G.device)
    B = M[kept] @ W.T + lam * W[:, kept].T
    chol, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        X = torch.cholesky_solve(B, chol)
    else:  # singular (dependent kept columns, λ = 0): minimum-norm least squares
        X = torch.linalg.pinv(A, hermitian=True) @ B
    return X.T


def dense_walk(walk: LayerWalk) -> LayerWalk:
    """A second walk over the same calibration batches, to be advanced by the dense layers."""
    return LayerWalk(
        walk.adapter, walk.calib, device=walk.device, store_dtype=walk.store_dtype, offload=walk.offload
    )


def _name_in(layer: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in layer.named_modules() if m is module)


class PairedGrams:
    """G = C_pᵀC_p and M = C_pᵀC_d at one projection's input, both walks run batch by batch."""

    def __init__(self, walk: LayerWalk, dense: LayerWalk, i: int) -> None:
        self.walk, self.dense, self.i = walk, dense, i
        self.original = copy.deepcopy(walk.adapter.layers()[i])  # layer i before it is pruned

    @torch.no_grad()
    def __call__(
        self, module: nn.Module, *, keep_dense: bool = False, split: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, list, Holdout | None]:
        """(G, M, dense outputs if ``keep_dense``, the two parts' statistics if ``split``) for
        ``module`` of the live layer i; ``split``: :mod:`statprune.stat.holdout`'s even/odd examples."""
        from statprune.stat.holdout import Holdout, part_masks  # holdout imports this module

        walk, dense = self.walk, self.dense
        live = walk.adapter.layers()[self.i]
        twin = self.original.get_submodule(_name_in(live, module))
        rec: dict[str, torch.Tensor] = {}
        hs = [
            module.register_forward_pre_hook(lambda _m, a: rec.__setitem__("p", a[0])),
            twin.register_forward_pre_hook(lambda _m, a: rec.__setitem__("d", a[0])),
        ]
        dim = module.in_features
        n = 2 if split else 1
        G = [torch.zeros(dim, dim, dtype=torch.float64, device=walk.device) for _ in range(n)]
        M = [torch.zeros_like(G[0]) for _ in range(n)]
        E = [0.0] * n  # split: ‖C_d Wᵀ‖² per part
        W = module.weight.detach().double() if split else None
        outs = []
        dtype = walk.adapter.dtype
        seen = 0
        try:
            for b in range(len(walk.hidden)):
                args, kwargs, mask = walk.args[b], walk.kwargs[b], walk.masks[b]
                live(walk._load(walk.hidden[b]).to(dtype), *args, **kwargs)
                out = _first(self.original(dense._load(dense.hidden[b]).to(dtype), *args, **kwargs))
                if keep_dense:
                    outs.append(dense._store(out))
                masks = part_masks(mask, seen) if split else (mask,)
                seen += mask.shape[0]
                for p, m in enumerate(masks):
                    xp, xd = rec["p"][m].double(), rec["d"][m].double()
                    G[p].addmm_(xp.T, xp)
                    M[p].addmm_(xp.T, xd)
                    if W is not None:
                        E[p] += float((xd @ W.T).pow(2).sum())
        finally:
            for h in hs:
                h.remove()
        if not split:
            return G[0], M[0], outs, None
        return G[0] + G[1], M[0] + M[1], outs, Holdout(G=(G[0], G[1]), M=(M[0], M[1]), E=(E[0], E[1]))
