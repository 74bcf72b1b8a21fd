"""STAT end to end on tiny random models: exactness, correction, FLOPs target, determinism."""

import copy

import pytest
import torch

from statprune.adapters import get_adapter
from statprune.allocation import BlockCurve, round_neurons
from statprune.flops import prunable_flops, unit_costs
from statprune.pruner import Target, prune
from statprune.stat.prune import StatOptions
from tests.unit.tiny import FAMILIES, outputs, random_calibration, rel_err, tiny_model

QUIET = {"progress": False}


@pytest.mark.parametrize("family", FAMILIES)
def test_sparsity_zero_changes_nothing(family):
    model = tiny_model(family)
    calib = random_calibration()
    ref = outputs(model, calib)
    res = prune(model, calib, Target(0.0, 20), options=QUIET)
    assert res.sparsity_achieved == 0.0
    assert rel_err(outputs(model, calib), ref) <= 1e-5


def _duplicate_units(model: torch.nn.Module) -> None:
    """Make the second half of every layer's KV groups and neurons exact copies of the first half.

    Head outputs and FFN activations then have exactly half rank, so keeping ≥ half of each must be
    exact once the interpolation is folded into W_O and W2.
    """
    ad = get_adapter(model)
    with torch.no_grad():
        for i in range(ad.num_layers):
            s = ad.layer_shape(i)
            q, k, v = ad.qkv(i)
            half_kv = s.num_kv_heads // 2 * s.head_dim
            half_q = s.num_heads // 2 * s.head_dim
            for lin, half in ((q, half_q), (k, half_kv), (v, half_kv)):
                lin.weight[half : 2 * half] = lin.weight[:half]
                if lin.bias is not None:
                    lin.bias[half : 2 * half] = lin.bias[:half]
            n = s.intermediate // 2
            for lin in ad.ffn_in(i):
                lin.weight[n : 2 * n] = lin.weight[:n]
                if lin.bias is not None:
                    lin.bias[n : 2 * n] = lin.bias[:n]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("repropagate", [True, False])
def test_exact_rank_is_reproduced_with_correction(family, repropagate):
    model = tiny_model(family)
    _duplicate_units(model)
    calib = random_calibration(n=24)
    ref = outputs(model, calib)
    pruned = copy.deepcopy(model)
    res = prune(pruned, calib, Target(0.4, 20), options={**QUIET, "repropagate": repropagate})
    assert res.sparsity_achieved >= 0.4
    err = rel_err(outputs(pruned, calib), ref)
    assert err <= 1e-4
    nocorr = copy.deepcopy(model)
    prune(nocorr, calib, Target(0.4, 20), options={**QUIET, "repropagate": repropagate, "correction": False})
    err_nocorr = rel_err(outputs(nocorr, calib), ref)  # selection alone loses the removed copies
    assert err_nocorr > 1e-3 and err_nocorr > 100 * err


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("allocation", ["greedy", "share", "reference"])
@pytest.mark.parametrize("sparsity", [0.15, 0.3, 0.55])
def test_flops_target_met_within_one_unit(family, allocation, sparsity):
    model = tiny_model(family)
    ad = get_adapter(model)
    seq = 20
    dense = prunable_flops(ad, seq)
    costs = [unit_costs(ad, i, seq) for i in range(ad.num_layers)]
    s = ad.layer_shape(0)
    multiple = StatOptions().neuron_multiple  # kept neurons come in groups of 8 by default
    full = [sh.intermediate for sh in ad.shapes()]
    biggest_unit = max(max(c.group(s.group_size), multiple * c.neuron) for c in costs)
    res = prune(
        model, random_calibration(), Target(sparsity, seq), options={**QUIET, "allocation": allocation}
    )
    removed = dense - res.flops_pruned
    assert removed >= sparsity * dense - 1e-6
    assert removed - sparsity * dense < biggest_unit
    assert res.flops_pruned == pytest.approx(prunable_flops(ad, seq))
    for layer, n in zip(ad.shapes(), full):
        assert layer.intermediate in (n, *range(multiple)) or layer.intermediate % multiple == 0


def test_round_neurons_keeps_the_target_and_gives_back_where_error_drops_most():
    def curve(layer, errors):
        return BlockCurve(layer, "neurons", torch.tensor(errors, dtype=torch.float64), unit_flops=1.0)

    # two 24-neuron layers; layer 0's error rises steeply below 16 kept, layer 1's is flat
    steep = [100.0 - 4 * c for c in range(25)]
    flat = [10.0 - 0.1 * c for c in range(25)]
    curves = [curve(0, steep), curve(1, flat)]
    kept = {(0, "neurons"): 13, (1, "neurons"): 13}  # 22 removed, target 20
    out = round_neurons(kept, curves, 8, to_remove=20.0)
    assert out == {(0, "neurons"): 16, (1, "neurons"): 8}  # 8 + 16 = 24 removed ≥ 20
    assert round_neurons(kept, curves, 8, to_remove=26.0) == {(0, "neurons"): 8, (1, "neurons"): 8}
    assert round_neurons(kept, curves, 1, to_remove=20.0) == kept
    assert round_neurons({(0, "neurons"): 5, (1, "neurons"): 24}, curves, 8, 19.0)[(0, "neurons")] == 5


def test_same_seed_same_weights_and_gqa_stays_uniform():
    calib = random_calibration()
    states = []
    for _ in range(2):
        model = tiny_model("llama-gqa")
        prune(model, calib, Target(0.5, 20), options={**QUIET, "gqa": "uniform"})
        states.append(model.state_dict())
        for s in get_adapter(model).shapes():
            assert s.num_heads % s.num_kv_heads == 0
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_correction_beats_selection_only_on_random_model():
    calib = random_calibration(n=32)
    model = tiny_model("bert")
    ref = outputs(model, calib)
    errs = {}
    for corr in (True, False):
        m = copy.deepcopy(model)
        prune(m, calib, Target(0.4, 20), options={**QUIET, "correction": corr})
        errs[corr] = rel_err(outputs(m, calib), ref)
    assert errs[True] < errs[False]


def test_nan_activations_are_a_clear_error():
    from statprune.errors import StatpruneError

    model = tiny_model("bert")
    with torch.no_grad():
        get_adapter(model).down_proj(0).weight[0, 0] = float("nan")
    with pytest.raises(StatpruneError, match="NaN/inf"):
        prune(model, random_calibration(), Target(0.3, 20), options=QUIET)
