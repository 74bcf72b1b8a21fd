"""STAT's own allocation rules: ``reference`` (the released code's rule) and ``share``.

The rules shared with the baselines (``greedy``, width rounding) live in :mod:`statprune.allocation`.

**reference** — the rule of the released STAT code (``bert-pruning-ID/prune_bert.py``, encoder
variant; ``prune_opt.py``, decoder variant; METHODS.md §1 step 4), i.e. the paper's rule. Errors:
``err_head[l, i]`` = ‖residual of keeping i heads · W_Oᵀ‖_F (a norm), i = 0…H−1; ``errs[l, j]`` =
|R_jj| of layer l's scaled FFN factorization. Weighting — encoder: both arrays × (√(L−l+1)+1),
l = 0…L−1; decoder: each array ÷ exp(a·x+b), (a, b) the least-squares line through
(x, log array[:, 0]) with x = l+1, and head errors × 1.125^(H−i). For every average head count h
from ⌊μH⌋ to H: neuron budget N = ⌊(μ − w_h·h/H)/w_n·d_ff⌋, neuron cutoff = pooled weighted errors
sorted descending at index N·L, k_l = #{j: errs[l, j] > cutoff}; head cutoff — encoder: the
(h·L)-th largest pooled weighted head error, a layer keeps #{i: err ≥ cutoff}; decoder: the
(h·L+1)-th largest, keeps #{i: err > cutoff}; h = H has cutoff 0 (all heads). The h minimising
|cutoff_h − 2·mean_l ‖R_l[k_l:, k_l:]‖_F| wins (first one on ties; ‖R[k:, k:]‖_F of the scaled,
unweighted factorization); the final neuron counts re-cut at N' = ⌊mean_l k_l⌋ as the release does.

Where ours differs from the release, and why:

1. Shares: w_h = head FLOPs / unit FLOPs from our FLOPs model (the release hand-sets BERT
   0.33772/0.66228 and OPT 3/7, 4/7: the same model's values for BERT-base at s = 30.55, QQP's
   mean length, and for OPT-1.3B at s = d = 2048, so they hold for those settings only); μ is
   the fraction of the prunable units' FLOPs kept. GQA: a head is a unit of ``gqa`` (a KV group
   by default), H = units per layer.
2. FLOPs target: the release's counts meet μ only up to its shares, ⌊N⌋ and ties. Ours then takes
   neurons (heads only once no neuron can go) in ascending weighted error, or gives neurons back
   in descending weighted error, until the removed FLOPs meet the target within one unit, as every
   method must. ``neuron_multiple`` rounding comes after (:func:`statprune.allocation.round_neurons`).
3. Counts are clamped to [min_units, n]: the release can leave a layer with 0 heads or neurons.
4. The search starts at h = max(⌊μH⌋, 1): at h = 0 the encoder code reads e[−1] (the smallest
   pooled error) and keeps every head, an indexing accident. A neuron cutoff index past the pooled
   array (N ≥ d_ff) keeps every neuron (the release raises IndexError).
5. Head errors: before W_Oᵀ the release permutes the residual's head blocks by P instead of P⁻¹,
   which misaligns heads with W_O's columns unless P is an involution; ours are aligned
   (:func:`statprune.stat.heads.head_curve`). Its |R_jj| come from a pivoted QR of the activations
   (the OPT code of a 100-row Gaussian sketch per sequence); ours from the exact Gram (same pivots
   and |R_jj| in exact arithmetic) unless ``sketch`` is set.
6. Decoder fit: a non-positive first error is floored before the log; with L = 1 the fit is the
   value itself (polyfit would be underdetermined).
7. ``error_norm`` does not apply: the rule reads the raw statistics (its weighting is its own).

**share** — this project's earlier rule (formerly misnamed ``paper``): a fixed fraction of the
removed FLOPs (``head_share``, default attention's FLOPs share) comes from heads, the rest from
neurons; within each type one global threshold on depth-weighted errors (√(L−l)+1, l = 0…L−1,
one less under the root than the release) picks per-layer counts — neurons by |R_jj|, heads by the
squared error of keeping c heads, both normalised by ``error_norm``. It is in neither release.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch

from statprune.allocation import BlockCurve, threshold_fill
from statprune.errors import StatpruneError

Variant = Literal["encoder", "decoder"]
log = logging.getLogger(__name__)
_F64 = torch.float64
_TINY = torch.finfo(_F64).tiny


@dataclass
class StatCurve(BlockCurve):
    """A block's curve plus the raw ID statistics the reference rule reads (not ``error_norm``-ed).

    heads: ``raw[c]`` = ‖(C − Ĉ_c) W_Oᵀ‖_F for c = 0…n. neurons: ``raw[j]`` = |R_jj| of the scaled
    factorization in pivot order, ``id_residual[k]`` = ‖R[k:, k:]‖_F = ‖ZD − (ZD)_k‖_F, k = 0…n.
    """

    raw: torch.Tensor | None = None
    id_residual: torch.Tensor | None = None


# --- reference ----------------------------------------------------------------------------------


def encoder_depth_weight(num_layers: int) -> torch.Tensor:
    """√(L − l + 1) + 1 for l = 0…L−1 (BERT code: sqrt(arange(L, 0, −1) + 1) + 1)."""
    return torch.arange(num_layers, 0, -1, dtype=_F64).add(1.0).sqrt().add(1.0)


def exp_depth_fit(y: torch.Tensor) -> torch.Tensor:
    """exp(a·x + b), (a, b) the least-squares line through (x, log y), x = 1…L (OPT code's polyfit)."""
    y = y.double().clamp_min(_TINY)
    if len(y) == 1:
        return y
    x = torch.arange(1, len(y) + 1, dtype=_F64)
    ly = y.log()
    xc = x - x.mean()
    a = (xc * (ly - ly.mean())).sum() / xc.pow(2).sum()
    b = ly.mean() - a * x.mean()
    return torch.exp(a * x + b)


def weighted_errors(
    head_err: torch.Tensor, neuron_err: torch.Tensor, variant: Variant
) -> tuple[torch.Tensor, torch.Tensor]:
    """The release's depth weighting of (L × H) head and (L × d_ff) neuron errors."""
    head_err, neuron_err = head_err.double(), neuron_err.double()
    L, H = head_err.shape
    if variant == "encoder":
        w = encoder_depth_weight(L)[:, None]
        return head_err * w, neuron_err * w
    if variant != "decoder":
        raise ValueError(f"unknown variant {variant!r}")
    penalty = 1.125 ** torch.arange(H, 0, -1, dtype=_F64)  # 1.125^(H − i)
    head = head_err / exp_depth_fit(head_err[:, 0])[:, None] * penalty
    return head, neuron_err / exp_depth_fit(neuron_err[:, 0])[:, None]


def _descending(x: torch.Tensor) -> torch.Tensor:
    return torch.sort(x.flatten(), descending=True).values


def neuron_counts(neuron_w: torch.Tensor, budget: int) -> torch.Tensor:
    """k_l = #{j: errs[l, j] > cutoff}, cutoff = pooled errors sorted descending at index budget·L."""
    L, n = neuron_w.shape
    if budget < 0:
        return torch.zeros(L, dtype=torch.long)
    e = _descending(neuron_w)
    if budget * L >= len(e):
        return torch.full((L,), n, dtype=torch.long)
    return (neuron_w > e[budget * L]).sum(1)


def head_counts(head_w: torch.Tensor, h: int, variant: Variant) -> tuple[torch.Tensor, float]:
    """(kept heads per layer, cutoff) for an average of ``h`` kept heads (1 ≤ h ≤ H)."""
    L, H = head_w.shape
    if h >= H:
        return torch.full((L,), H, dtype=torch.long), 0.0
    e = _descending(head_w)
    if variant == "encoder":
        cutoff = e[h * L - 1]
        return (head_w >= cutoff).sum(1), float(cutoff)
    cutoff = e[h * L]
    return (head_w > cutoff).sum(1), float(cutoff)


@dataclass(frozen=True)
class ReferenceChoice:
    heads: torch.Tensor  # (L,) kept heads per layer
    neurons: torch.Tensor  # (L,) kept neurons per layer
    h: int  # chosen average head count
    budget: int  # final average neuron budget N'


def reference_counts(
    head_err: torch.Tensor,
    neuron_err: torch.Tensor,
    neuron_residual: torch.Tensor,
    *,
    keep: float,
    head_share: float,
    variant: Variant,
) -> ReferenceChoice:
    """The released rule on raw arrays (module docstring); ``keep`` = μ, ``head_share`` = w_h.

    head_err (L × H): error of keeping i = 0…H−1 heads; neuron_err (L × d_ff): |R_jj|;
    neuron_residual (L × (d_ff + 1)): ‖R[k:, k:]‖_F of the scaled factorization.
    """
    L, H = head_err.shape
    d_ff = neuron_err.shape[1]
    head_w, neuron_w = weighted_errors(head_err, neuron_err, variant)
    resid = neuron_residual.double()
    rows = torch.arange(L)

    def budget(h: int) -> int:
        return int((keep - head_share * h / H) / (1.0 - head_share) * d_ff)

    best_h, best_gap = H, float("inf")
    for h in range(max(int(keep * H), 1), H + 1):
        ks = neuron_counts(neuron_w, budget(h))
        gap = abs(head_counts(head_w, h, variant)[1] - 2.0 * float(resid[rows, ks].mean()))
        if gap < best_gap:
            best_h, best_gap = h, gap
    ks = neuron_counts(neuron_w, budget(best_h))
    final = int(ks.sum()) // L  # the release's kMain = int(mean(ks)), then the cut again
    return ReferenceChoice(
        head_counts(head_w, best_h, variant)[0], neuron_counts(neuron_w, final), best_h, final
    )


def _take(scores: list[torch.Tensor], costs: list[float], amount: float, *, reach: bool) -> list[int]:
    """Per block, take units in ascending score order (globally; scores[b][r] is the r-th unit of
    block b, nondecreasing in r): until ``amount`` FLOPs are reached (``reach``), else the most
    units whose FLOPs stay within ``amount``."""
    if reach:
        return threshold_fill(scores, costs, [0] * len(scores), amount)
    owner = torch.cat([torch.full((len(s),), b, dtype=torch.long) for b, s in enumerate(scores)])
    cost = torch.cat([torch.full((len(s),), costs[b], dtype=_F64) for b, s in enumerate(scores)])
    if not len(owner) or amount <= 0:
        return [0] * len(scores)
    order = torch.argsort(torch.cat(scores), stable=True)
    n_take = int(
        torch.searchsorted(torch.cumsum(cost[order], 0), torch.tensor(amount, dtype=_F64), right=True)
    )
    return [int(x) for x in torch.bincount(owner[order[:n_take]], minlength=len(scores))]


def _meet_target(
    kept_h: list[int],
    kept_n: list[int],
    heads: list[BlockCurve],
    neurons: list[BlockCurve],
    head_w: torch.Tensor,
    neuron_w: torch.Tensor,
    to_remove: float,
) -> None:
    """Adjust counts in place in the rule's own order so the removed FLOPs meet the target within one unit."""

    def removed() -> float:
        return sum((c.n_units - k) * c.unit_flops for c, k in zip([*heads, *neurons], [*kept_h, *kept_n]))

    short = to_remove - removed()
    if short > 0:  # more neurons: lowest weighted error first (weights made monotone per layer)
        scores = [
            torch.cummax(neuron_w[lay, c.min_units : k].flip(0), 0).values
            for lay, (c, k) in enumerate(zip(neurons, kept_n))
        ]
        for lay, r in enumerate(_take(scores, [c.unit_flops for c in neurons], short, reach=True)):
            kept_n[lay] -= r
        short = to_remove - removed()
        if short > 0:  # every neuron at its minimum: heads, by the weighted error of keeping one fewer
            scores = [
                torch.cummax(head_w[lay, c.min_units : k].flip(0), 0).values
                for lay, (c, k) in enumerate(zip(heads, kept_h))
            ]
            for lay, r in enumerate(_take(scores, [c.unit_flops for c in heads], short, reach=True)):
                kept_h[lay] -= r
    surplus = removed() - to_remove
    if surplus > 0:  # give neurons back, largest weighted error first, while the target holds
        scores = [torch.cummax(-neuron_w[lay, k:], 0).values for lay, k in enumerate(kept_n)]
        for lay, r in enumerate(_take(scores, [c.unit_flops for c in neurons], surplus, reach=False)):
            kept_n[lay] += r


def reference_allocation(
    curves: list[BlockCurve], flops_to_remove: float, *, variant: Variant
) -> dict[tuple[int, str], int]:
    """Kept heads and neurons per layer by the released rule, then filled to the FLOPs target."""
    heads = sorted((c for c in curves if c.kind == "heads"), key=lambda c: c.layer)
    neurons = sorted((c for c in curves if c.kind == "neurons"), key=lambda c: c.layer)
    if len(heads) != len(neurons) or not heads:
        raise StatpruneError("reference allocation needs one head and one neuron curve per layer")
    for c in [*heads, *neurons]:
        if not isinstance(c, StatCurve) or c.raw is None or (c.kind == "neurons" and c.id_residual is None):
            raise StatpruneError("reference allocation needs STAT's raw statistics (StatCurve)")
    if len({c.n_units for c in heads}) > 1 or len({c.n_units for c in neurons}) > 1:
        raise StatpruneError("reference allocation needs the same head and neuron counts in every layer")
    H = heads[0].n_units
    head_err = torch.stack([c.raw[:H] for c in heads])  # type: ignore[index]
    neuron_err = torch.stack([c.raw for c in neurons])  # type: ignore[misc]
    resid = torch.stack([c.id_residual for c in neurons])  # type: ignore[misc]
    head_flops = sum(c.n_units * c.unit_flops for c in heads)
    unit_flops = head_flops + sum(c.n_units * c.unit_flops for c in neurons)
    choice = reference_counts(
        head_err,
        neuron_err,
        resid,
        keep=(unit_flops - flops_to_remove) / unit_flops,
        head_share=head_flops / unit_flops,
        variant=variant,
    )
    log.info(
        "reference allocation (%s): average heads h = %d, neuron budget N = %d",
        variant,
        choice.h,
        choice.budget,
    )
    kept_h = [min(max(int(k), c.min_units), c.n_units) for k, c in zip(choice.heads, heads)]
    kept_n = [min(max(int(k), c.min_units), c.n_units) for k, c in zip(choice.neurons, neurons)]
    head_w, neuron_w = weighted_errors(head_err, neuron_err, variant)
    _meet_target(kept_h, kept_n, heads, neurons, head_w, neuron_w, flops_to_remove)
    kept = {(c.layer, "heads"): k for c, k in zip(heads, kept_h)}
    kept.update({(c.layer, "neurons"): k for c, k in zip(neurons, kept_n)})
    return kept


# --- share --------------------------------------------------------------------------------------


def _share_depth_weight(layer: int, num_layers: int) -> float:
    return (num_layers - layer) ** 0.5 + 1.0  # √(L − l) + 1, l = 0…L−1


def share_allocation(
    curves: list[BlockCurve], flops_to_remove: float, *, num_layers: int, head_share: float
) -> dict[tuple[int, str], int]:
    heads = [c for c in curves if c.kind == "heads"]
    neurons = [c for c in curves if c.kind == "neurons"]

    def head_scores(c: BlockCurve) -> torch.Tensor:
        # removing the r-th unit leaves n − r: score = weighted error of that count (nondecreasing in r)
        w = _share_depth_weight(c.layer, num_layers)
        errs = torch.stack([c.errors[c.n_units - r] for r in range(1, c.n_units + 1)]) * w
        return torch.cummax(errs, 0).values

    def neuron_scores(c: BlockCurve) -> torch.Tensor:
        w = _share_depth_weight(c.layer, num_layers)
        assert c.pivots is not None
        return torch.cummax(c.pivots.flip(0) * w, 0).values  # smallest |R_jj| removed first

    h_removed = threshold_fill(
        [head_scores(c) for c in heads],
        [c.unit_flops for c in heads],
        [c.min_units for c in heads],
        head_share * flops_to_remove,
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
