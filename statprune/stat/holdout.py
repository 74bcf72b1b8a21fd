"""The correction's ridge λ chosen on held-out calibration data (issue 15, item 3; option
``damping_select=holdout``).

Split: the calibration *examples* (sequences) alternate between two parts, example j going to part
j mod 2 in calibration order. Examples are drawn by a seeded permutation, so this is a random,
deterministic, balanced split at any batch size (alternating batches would leave one part empty
with a single batch); splitting tokens instead would put neighbouring tokens of one sequence,
which share their context, on both sides, and the held-out error would under-read over-fitting.

Choice: per sub-block (W_O, W_down) and kept set K (chosen on the full Gram, as without the
option), for every λ in :data:`GRID` (a fraction of the fitting part's mean Gram diagonal, as
``damping``) the fit X_a(λ) made on one part is scored on the other, both ways (two-fold), from
Grams only:

    e_b(X) = ‖C_d,b Wᵀ − C_p,b[:, K] X‖² = E_b − 2 tr(Xᵀ M_b[K, :] Wᵀ) + tr(Xᵀ G_b[K, K] X),

G_b = C_p,bᵀC_p,b, M_b = C_p,bᵀC_d,b (M = G and E_b = tr(W G_b Wᵀ) for ``correction_target=self``),
E_b = ‖C_d,b Wᵀ‖². The λ with the least e_a + e_b wins (the smallest on ties) and the layer is
refitted on all tokens (G = G_0 + G_1) with it. Cost: two Grams instead of one (the same
products), 2·|GRID| extra |K|×|K| Cholesky solves per sub-block, and with the dense target the
energies E_b (one product of the dense activations with Wᵀ per batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from statprune.calibration import Gram
from statprune.stat.dense import ridge_correction

GRID = (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # × the mean Gram diagonal; 1.0 is close to no correction


def part_masks(mask: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real-token masks of the even- and odd-numbered examples among a batch's rows (``mask``:
    (batch, seq)), ``offset`` calibration examples having come before the batch."""
    odd = (torch.arange(mask.shape[0], device=mask.device) + offset) % 2 == 1
    return mask & ~odd[:, None], mask & odd[:, None]


class SplitGram:
    """A Gram hook ``(x, mask)`` accumulating the even and odd calibration examples apart; it must see
    every batch once, in order (one walk over a module)."""

    def __init__(self, dim: int, device: torch.device, precision: str) -> None:
        self.parts = (Gram(dim, device, precision=precision), Gram(dim, device, precision=precision))
        self.seen = 0

    def __call__(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        for gram, m in zip(self.parts, part_masks(mask, self.seen)):
            gram(x, m)
        self.seen += mask.shape[0]

    @property
    def G(self) -> torch.Tensor:
        return self.parts[0].G + self.parts[1].G

    def holdout(self) -> Holdout:
        return Holdout(G=(self.parts[0].G, self.parts[1].G))


@dataclass
class Holdout:
    """One projection's input statistics on the two parts; :meth:`select` records its choice."""

    G: tuple[torch.Tensor, torch.Tensor]
    M: tuple[torch.Tensor, torch.Tensor] | None = None  # cross-Grams (dense target); None: self
    E: tuple[float, float] | None = None  # ‖C_d,b Wᵀ‖² (dense target); None: from G
    chosen: float | None = None
    errors: torch.Tensor | None = None  # two-fold held-out error per GRID value

    def heldout_errors(self, W: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """e_0 + e_1 of the module docstring for every λ of :data:`GRID` (float64, on the CPU)."""
        G = tuple(g.double() for g in self.G)
        M = G if self.M is None else tuple(m.double() for m in self.M)
        W = W.detach().double().to(G[0].device)
        kept = torch.as_tensor(kept, dtype=torch.long, device=G[0].device)
        E = [float((W @ g * W).sum()) for g in G] if self.E is None else list(self.E)
        out = torch.zeros(len(GRID), dtype=torch.float64)
        for a, b in ((0, 1), (1, 0)):
            MbW = M[b][kept] @ W.T  # |K| × out
            Gb = G[b][kept][:, kept]
            for j, lam in enumerate(GRID):
                W_new = ridge_correction(W, G[a], None if self.M is None else M[a], kept, lam)  # out × |K|
                out[j] += E[b] - 2 * float((W_new.T * MbW).sum()) + float((W_new @ Gb * W_new).sum())
        return out

    def select(self, W: torch.Tensor, kept: torch.Tensor) -> float:
        """The GRID value with the least held-out error (the first on ties)."""
        self.errors = self.heldout_errors(W, kept)
        self.chosen = GRID[int(torch.argmin(self.errors))]
        return self.chosen

    def report(self) -> dict[str, float]:
        """λ chosen, and its held-out error relative to the undamped fit's (≤ 1 as 0 ∈ GRID)."""
        assert self.errors is not None and self.chosen is not None
        e0 = float(self.errors[0])
        return {"damping": self.chosen, "heldout_ratio": float(self.errors.min()) / e0 if e0 > 0 else 1.0}
