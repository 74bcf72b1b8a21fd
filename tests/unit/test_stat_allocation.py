"""STAT's allocation rules on constructed error arrays, worked out by hand, and against degeneracy."""

import math
import warnings

import pytest
import torch

from statprune.allocation import BlockCurve, greedy_allocation
from statprune.stat.allocate import (
    StatCurve,
    encoder_depth_weight,
    exp_depth_fit,
    head_counts,
    neuron_counts,
    reference_allocation,
    reference_counts,
    share_allocation,
)
from statprune.stat.prune import StatOptions


def t(x):
    return torch.tensor(x, dtype=torch.float64)


# Shared by the hand-worked cases: L = 2 layers, H = 3 heads, d_ff = 4 neurons, μ = 0.55, w_h = 1/3.
# Search h = ⌊0.55·3⌋ = 1 … 3; N(h) = ⌊(0.55 − h/9)/(2/3)·4⌋ = ⌊3.3 − 2h/3⌋ = 2, 1, 1.
# ‖R_l[k:, k:]‖_F (unweighted) per layer for k = 0…4:
RESID = t([[10, 5, 3, 1, 0], [12, 6, 2, 0.5, 0]])  # k = (2, 2): 2·mean = 5; k = (1, 1): 2·mean = 11


def test_weights_are_the_released_ones():
    # BERT code: sqrt(arange(L, 0, -1) + 1) + 1
    assert encoder_depth_weight(3).tolist() == pytest.approx([3.0, math.sqrt(3) + 1, math.sqrt(2) + 1])
    # OPT code: polyfit(x = 1…L, log y, 1). log y = (0, 3, 3): slope 3/2, intercept −1
    fit = exp_depth_fit(t([1.0, math.e**3, math.e**3]))
    assert fit.log().tolist() == pytest.approx([0.5, 2.0, 3.5])


def test_encoder_variant_by_hand():
    head = t([[5, 2, 1], [6, 1, 0.3]])  # error of keeping 0, 1, 2 heads
    neur = t([[8, 4, 2, 1], [9, 6, 0.5, 0.2]])  # |R_jj|
    # weights w0 = √3+1 ≈ 2.732, w1 = √2+1 ≈ 2.414
    # weighted neurons: l0 21.86 10.93 5.46 2.73 | l1 21.73 14.49 1.21 0.48
    #   pooled ↓: 21.86 21.73 14.49 10.93 [5.46] 2.73 1.21 0.48
    #   N=2: cutoff = pooled[4] = 5.46, k = #{> 5.46} = (2, 2); N=1: pooled[2] = 14.49, k = (1, 1)
    # weighted heads: l0 13.66 5.46 2.73 | l1 14.49 2.41 0.72; pooled ↓: 14.49 13.66 5.46 2.73 2.41 0.72
    #   h=1: cutoff = pooled[1·2 − 1] = 13.66, gap |13.66 − 5| = 8.66
    #   h=2: cutoff = pooled[3] = 2.73 (l0 keeps 3, l1 keeps 1), gap |2.73 − 11| = 8.27  ← smallest
    #   h=3: cutoff 0, gap 11
    c = reference_counts(head, neur, RESID, keep=0.55, head_share=1 / 3, variant="encoder")
    assert c.h == 2 and c.budget == 1
    assert c.heads.tolist() == [3, 1] and c.neurons.tolist() == [1, 1]


def test_decoder_variant_by_hand():
    head = t([[4, 2, 1], [5, 1, 0.5]])
    neur = t([[8, 4, 2, 1], [10, 6, 1, 0.5]])
    # L = 2: the exponential fit passes through both first entries, so each row is divided by its first.
    # neurons: l0 1 .5 .25 .125 | l1 1 .6 .1 .05; pooled ↓: 1 1 .6 .5 [.25] .125 .1 .05
    #   N=2: cutoff .25 → k = (2, 2); N=1: cutoff pooled[2] = .6 → k = (1, 1)
    # heads ÷ first × 1.125^(3 − i): l0 1.424 .633 .281 | l1 1.424 .253 .113
    #   h=1: cutoff = pooled[1·2] = .633 (keep > cutoff: (1, 1)), gap |.633 − 5| = 4.37  ← smallest
    #   h=2: cutoff = pooled[4] = .253, gap 10.75; h=3: gap 11
    c = reference_counts(head, neur, RESID, keep=0.55, head_share=1 / 3, variant="decoder")
    assert c.h == 1 and c.budget == 2
    assert c.heads.tolist() == [1, 1] and c.neurons.tolist() == [2, 2]


def test_head_cutoff_conventions_differ_by_variant():
    w = t([[3, 2, 1], [2.5, 1.5, 0.5]])  # pooled ↓: 3 2.5 2 1.5 1 .5
    counts, cutoff = head_counts(w, 2, "encoder")  # the (h·L)-th largest, keep ≥
    assert cutoff == 1.5 and counts.tolist() == [2, 2]
    counts, cutoff = head_counts(w, 2, "decoder")  # the (h·L + 1)-th largest, keep >
    assert cutoff == 1.0 and counts.tolist() == [2, 2]
    assert head_counts(w, 3, "decoder") == (pytest.approx(torch.tensor([3, 3])), 0.0)
    n = t([[4, 3.8, 2, 1], [3.5, 0.2, 0.1, 0.0]])  # pooled ↓: 4 3.8 3.5 2 1 .2 .1 0
    assert neuron_counts(n, 1).tolist() == [2, 0]  # cutoff pooled[1·L] = 3.5, keep > 3.5
    assert neuron_counts(n, -1).tolist() == [0, 0] and neuron_counts(n, 4).tolist() == [4, 4]


def _stat_curves(head, neur, resid, u_head, u_neuron):
    curves = []
    for layer in range(len(head)):
        h, n = t(head[layer]), t(neur[layer])
        raw_h = torch.cat([h, t([0.0])])  # keeping all heads: no error
        curves.append(StatCurve(layer, "heads", raw_h**2, u_head, raw=raw_h))
        curves.append(
            StatCurve(layer, "neurons", resid[layer] ** 2, u_neuron, raw=n, id_residual=resid[layer])
        )
    return curves


def test_reference_allocation_derives_shares_from_flops_and_meets_the_target():
    # unit FLOPs head 2, neuron 3: w_h = 3·2 / (3·2 + 4·3) = 1/3; 36 FLOPs, remove 45% → keep μ = 0.55
    curves = _stat_curves([[5, 2, 1], [6, 1, 0.3]], [[8, 4, 2, 1], [9, 6, 0.5, 0.2]], RESID, 2.0, 3.0)
    kept = reference_allocation(curves, 0.45 * 36, variant="encoder")
    # the released counts (encoder case above): heads (3, 1), neurons (1, 1) remove 22 ≥ 16.2; neurons
    # are given back, largest weighted error first, while the target holds: l1's 2nd (14.49) → 19 removed;
    # l0's 2nd (10.93) would leave 16 < 16.2, so it stays removed.
    assert kept == {(0, "heads"): 3, (1, "heads"): 1, (0, "neurons"): 1, (1, "neurons"): 2}


def test_reference_allocation_clamps_and_fills_with_neurons_first():
    # layer 1's heads barely matter: weighted l0 13.66 5.46 2.73 | l1 .241 .121 .024.
    # Remove 19 of 36: μ = 17/36, h from ⌊1.42⌋ = 1, N(h) = ⌊2.83 − 2h/3⌋ = 2, 1, 0.
    #   h=1: head cutoff pooled[1] = 5.46 → heads (2, 0); neurons N=2 → (2, 2), gap |5.46 − 5| = .46 ← wins
    #   h=2: cutoff .241, N=1 → 2·mean 11, gap 10.8; h=3: gap 22
    # l1's 0 heads are clamped to 1 → 18 FLOPs kept, 18 removed < 19: one more neuron goes, the lowest
    # weighted next one (l0's 2nd, 10.93, before l1's 2nd, 14.49) → 21 removed.
    curves = _stat_curves([[5, 2, 1], [0.1, 0.05, 0.01]], [[8, 4, 2, 1], [9, 6, 0.5, 0.2]], RESID, 2.0, 3.0)
    kept = reference_allocation(curves, 19.0, variant="encoder")
    assert kept == {(0, "heads"): 2, (1, "heads"): 1, (0, "neurons"): 1, (1, "neurons"): 2}


def _identical_curves(n_layers, H=4, d_ff=64):
    """Every layer the same: geometric |R_jj| decay, errors the tail sums (as an ID's would be)."""
    piv = 0.95 ** torch.arange(d_ff, dtype=torch.float64)
    n_err = torch.cat([piv.pow(2).flip(0).cumsum(0).flip(0), t([0.0])])
    h_norm = t([4.0, 2.5, 1.5, 0.7, 0.0])[: H + 1]
    curves = []
    for layer in range(n_layers):
        curves.append(StatCurve(layer, "heads", h_norm**2, 40.0, raw=h_norm))
        curves.append(StatCurve(layer, "neurons", n_err, 3.0, pivots=piv, raw=piv, id_residual=n_err.sqrt()))
    return curves


@pytest.mark.parametrize("rule", ["greedy", "share", "reference-encoder", "reference-decoder"])
def test_similar_layers_share_the_removal(rule):
    """Degenerate allocations (some layers untouched, others stripped) must fail this."""
    L = 8
    curves = _identical_curves(L)
    total = sum(c.n_units * c.unit_flops for c in curves)
    to_remove = 0.4 * total
    if rule == "greedy":
        kept = greedy_allocation(curves, to_remove)
    elif rule == "share":
        kept = share_allocation(curves, to_remove, num_layers=L, head_share=160 / (160 + 192))
    else:
        kept = reference_allocation(curves, to_remove, variant=rule.split("-")[1])
    frac = torch.tensor([kept[(layer, "neurons")] / 64 for layer in range(L)])
    assert float(frac.max()) < 1.0  # no layer's FFN left untouched
    assert float(frac.min()) > 0.25  # none stripped
    assert float(frac.max() - frac.min()) <= 0.35


def test_paper_is_a_deprecated_name_for_share():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        opts = StatOptions(allocation="paper")
    assert opts.allocation == "share"
    assert any("allocation=reference" in str(x.message) for x in w)


def test_reference_refuses_curves_without_raw_statistics():
    from statprune.errors import StatpruneError

    curves = [BlockCurve(0, "heads", t([1, 0]), 1.0), BlockCurve(0, "neurons", t([1, 0]), 1.0)]
    with pytest.raises(StatpruneError, match="raw statistics"):
        reference_allocation(curves, 0.5, variant="encoder")


def _similar_layers(family: str, layers: int = 4):
    from statprune.adapters import get_adapter
    from tests.unit.tiny import tiny_model

    model = tiny_model(family, layers=layers)
    ad = get_adapter(model)
    with torch.no_grad():
        for i in range(1, layers):
            ad.layers()[i].load_state_dict(ad.layers()[0].state_dict())
    return model


_DEGENERATE = pytest.mark.xfail(
    strict=True,
    reason="share + error_norm=residual on a pre-norm decoder leaves layer 0's FFN untouched and strips "
    "layer 3's (issue 15: the residual stream's energy grows with depth)",
)


@pytest.mark.parametrize(
    ("family", "rule"),
    [
        ("bert", "greedy"),
        ("bert", "share"),
        ("bert", "reference"),
        ("llama", "greedy"),
        pytest.param("llama", "share", marks=_DEGENERATE),
        ("llama", "reference"),
    ],
)
def test_real_tiny_model_with_identical_layers_is_not_degenerate(family, rule):
    """Identical layers (weights copied from layer 0), default options but the rule: no layer may be
    left untouched while another loses most of its FFN, and the kept fractions stay within 0.6."""
    from statprune.pruner import Target, prune
    from tests.unit.tiny import random_calibration

    res = prune(
        _similar_layers(family),
        random_calibration(n=24),
        Target(0.4, 20),
        options={"progress": False, "allocation": rule, "neuron_multiple": 1},
    )
    full = res.shapes_dense[0].intermediate
    frac = [s.intermediate / full for s in res.shapes_pruned]
    assert not (max(frac) == 1.0 and min(frac) < 0.5), frac
    assert max(frac) - min(frac) <= 0.6, frac


@pytest.mark.parametrize(
    ("family", "variant"), [("bert", "encoder"), ("distilbert", "encoder"), ("llama", "decoder")]
)
def test_reference_variant_follows_the_architecture(family, variant):
    from statprune.adapters import get_adapter
    from statprune.pruner import Target
    from statprune.stat.prune import allocate
    from tests.unit.tiny import tiny_model

    ad = get_adapter(tiny_model(family))
    curves = _identical_curves(8)
    total = sum(c.n_units * c.unit_flops for c in curves)
    target = Target(0.4, 20, flops_dense=total)
    kept = allocate(ad, curves, target, StatOptions(allocation="reference", neuron_multiple=1))
    other = {"encoder": "decoder", "decoder": "encoder"}[variant]
    assert kept == reference_allocation(curves, target.flops_to_remove, variant=variant)
    assert kept != reference_allocation(curves, target.flops_to_remove, variant=other)
