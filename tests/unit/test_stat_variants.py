"""Issue 15 variants of STAT: layer bounds, protected layers, dense-target damped correction,
exact KV-group selection."""

import math

import pytest
import torch

from statprune.allocation import (
    BlockCurve,
    bound_curves,
    enforce_bounds,
    greedy_allocation,
    parse_protect,
    round_neurons,
)
from statprune.stat.allocate import StatCurve, reference_allocation, share_allocation


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def _skewed_curves(n_layers=6, H=4, d_ff=64):
    """Layer 0's errors dwarf the others' (a decoder's first layer under residual normalisation)."""
    piv = 0.95 ** torch.arange(d_ff, dtype=torch.float64)
    n_err = torch.cat([piv.pow(2).flip(0).cumsum(0).flip(0), t([0.0])])
    h_norm = t([4.0, 2.5, 1.5, 0.7, 0.0])[: H + 1]
    curves = []
    for layer in range(n_layers):
        s = 1000.0 if layer == 0 else 1.0 / (layer + 1)  # decreasing error scale with depth
        curves.append(StatCurve(layer, "heads", h_norm**2 * s, 40.0, raw=h_norm * s**0.5))
        curves.append(
            StatCurve(
                layer,
                "neurons",
                n_err * s,
                3.0,
                pivots=piv * s**0.5,
                raw=piv * s**0.5,
                id_residual=(n_err * s).sqrt(),
            )
        )
    return curves


def _run(rule, curves, to_remove, n_layers):
    if rule == "greedy":
        return greedy_allocation(curves, to_remove)
    if rule == "share":
        return share_allocation(curves, to_remove, num_layers=n_layers, head_share=160 / (160 + 192))
    return reference_allocation(curves, to_remove, variant="decoder")


def _removed(kept, curves):
    return sum((c.n_units - kept[(c.layer, c.kind)]) * c.unit_flops for c in curves)


@pytest.mark.parametrize("rule", ["greedy", "share", "reference"])
@pytest.mark.parametrize("delta", [0.0, 0.1, 0.25])
def test_bounds_are_respected_exactly_and_the_target_met(rule, delta):
    L = 6
    curves = _skewed_curves(L)
    total = sum(c.n_units * c.unit_flops for c in curves)
    to_remove = 0.4 * total
    unbounded = _run(rule, curves, to_remove, L)
    assert unbounded[(0, "neurons")] == 64 or rule == "reference"  # the skew makes layer 0 untouched
    bounded = bound_curves(curves, to_remove, delta=delta, protect=set())
    kept = enforce_bounds(_run(rule, bounded, to_remove, L), bounded, to_remove)
    removed = _removed(kept, curves)
    assert to_remove <= removed < to_remove + 40.0  # met within one unit (the largest unit: a head)
    for c in curves:
        k = kept[(c.layer, c.kind)]
        r, n = c.n_units - k, c.n_units
        lo, hi = math.ceil(n * (0.4 - delta) - 1e-9), math.floor(n * (0.4 + delta) + 1e-9)
        if lo > hi:  # no count inside the band (δ = 0, or 4 heads): the counts either side of 0.4·n
            lo, hi = math.floor(0.4 * n), math.ceil(0.4 * n)
        assert lo <= r <= hi, (c.layer, c.kind, r, lo, hi)
        assert r / n <= 0.4 + delta + 1e-9 or r == math.ceil(0.4 * n)


def test_band_widens_only_to_the_granularity():
    c = BlockCurve(0, "heads", t([3, 2, 1, 0]), 1.0)  # 3 KV groups, t = 0.4: no count in [0.35, 0.45]
    (b,) = bound_curves([c], 1.2, delta=0.05, protect=set())
    assert (b.min_units, b.max_units) == (1, 2)  # remove 1 or 2 of 3: either side of 1.2
    (b,) = bound_curves([c], 1.2, delta=0.3, protect=set())
    assert (b.min_units, b.max_units) == (1, 2)  # [0.1, 0.7]·3 = [0.3, 2.1] → remove 1…2


def test_protected_layers_are_untouched_and_the_rest_meets_the_target():
    L = 6
    curves = _skewed_curves(L)
    total = sum(c.n_units * c.unit_flops for c in curves)
    to_remove = 0.3 * total
    protect = parse_protect("first:1,last:2", L)
    assert protect == {0, 4, 5}
    for rule in ("greedy", "share", "reference"):
        bounded = bound_curves(curves, to_remove, delta=None, protect=protect)
        kept = enforce_bounds(_run(rule, bounded, to_remove, L), bounded, to_remove)
        for c in curves:
            if c.layer in protect:
                assert kept[(c.layer, c.kind)] == c.n_units
        assert to_remove <= _removed(kept, curves) < to_remove + 40.0


def test_parse_protect():
    assert parse_protect("1", 5) == {0, 4}
    assert parse_protect(2, 5) == {0, 1, 3, 4}
    assert parse_protect("last:1", 5) == {4}
    assert parse_protect(None, 5) == set()
    with pytest.raises(ValueError):
        parse_protect("middle:1", 5)


def test_rounding_respects_the_bounds():
    errs = torch.linspace(10, 0, 21, dtype=torch.float64)
    c = BlockCurve(0, "neurons", errs, 1.0, min_units=13, max_units=15)
    out = round_neurons({(0, "neurons"): 13}, [c], 8, 7.0)
    assert out[(0, "neurons")] == 13  # rounding down to 8 would cross min_units: left as is


def test_llama_share_residual_is_not_degenerate_with_bounds():
    """The strict-xfail case of test_stat_allocation (share + residual leaves layer 0's FFN untouched)
    is fixed by δ: every FFN removes 40%·(prunable share) ± δ of its FLOPs."""
    from statprune.pruner import Target, prune
    from tests.unit.test_stat_allocation import _similar_layers
    from tests.unit.tiny import random_calibration

    res = prune(
        _similar_layers("llama"),
        random_calibration(n=24),
        Target(0.4, 20),
        options={"progress": False, "allocation": "share", "neuron_multiple": 1, "max_layer_departure": 0.1},
    )
    full = res.shapes_dense[0].intermediate
    frac = [s.intermediate / full for s in res.shapes_pruned]
    assert not (max(frac) == 1.0 and min(frac) < 0.5), frac
    assert max(frac) - min(frac) <= 0.2 + 1.0 / full + 1e-9, frac
    assert res.sparsity_achieved >= 0.4 - 1e-9
