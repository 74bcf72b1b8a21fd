"""STAT end to end on tiny random models: exactness, correction, FLOPs target, determinism."""

import copy

import numpy as np
import pytest
import torch

from statprune.adapters import get_adapter
from statprune.allocation import BlockCurve, round_neurons
from statprune.pruner import Target, prune
from statprune.stat.prune import StatOptions
from tests.unit.analytic import largest_unit, model_macs
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
    multiple = StatOptions().neuron_multiple  # kept neurons come in groups of 8 by default
    full = [sh.intermediate for sh in ad.shapes()]
    res = prune(
        model, random_calibration(), Target(sparsity, seq), options={**QUIET, "allocation": allocation}
    )
    # achieved FLOPs from the recorded shapes by the closed form, not by the FLOPs model under test
    dense, pruned = (model_macs(sh, 64, seq, family) for sh in (res.shapes_dense, res.shapes_pruned))
    assert (res.flops_dense, res.flops_pruned) == pytest.approx((dense, pruned), rel=1e-12)
    biggest_unit = largest_unit(res.shapes_dense[0], 64, seq, family, neuron_multiple=multiple)
    removed = dense - pruned
    assert removed >= sparsity * dense - 1e-6
    assert removed - sparsity * dense < biggest_unit
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


# --- error curves and head ranking against independent computations ------------------------------


def _lstsq_residual(A: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """A minus its least-squares fit on the kept columns (zero there), by torch.linalg.lstsq."""
    if len(kept) == 0:
        return A.clone()
    X = torch.linalg.lstsq(A[:, kept], A).solution
    return A - A[:, kept] @ X


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_neuron_curve_is_the_least_squares_error_of_every_count(seed):
    import scipy.linalg

    from statprune.stat.neurons import neuron_curve

    g = torch.Generator().manual_seed(seed)
    N, n, d = 60, 12, 7
    Z = torch.randn(N, n, dtype=torch.float64, generator=g) @ torch.randn(
        n, n, dtype=torch.float64, generator=g
    )
    W2 = torch.randn(d, n, dtype=torch.float64, generator=g) * torch.rand(n, dtype=torch.float64, generator=g)
    errors, pivots, id_res = neuron_curve(Z.T @ Z, W2, rel_tol=1e-12)
    D = W2.norm(dim=0)
    _, R, P = scipy.linalg.qr((Z * D).numpy(), pivoting=True, mode="economic")
    assert pivots.numpy() == pytest.approx(abs(R.diagonal()), rel=1e-8)
    for k in range(n + 1):
        E = _lstsq_residual(Z, torch.as_tensor(P[:k]))
        assert float(errors[k]) == pytest.approx(float((E @ W2.T).pow(2).sum()), rel=1e-7, abs=1e-9)
        assert float(id_res[k]) == pytest.approx(float(np.linalg.norm(R[k:, k:])), rel=1e-7, abs=1e-9)


def _head_matrix(C: torch.Tensor, kv: int, g: int, hd: int) -> torch.Tensor:
    """One column per KV group; rows are (token, query head in the group, within-head dim) triples."""
    N = C.shape[0]
    return C.reshape(N, kv, g, hd).permute(0, 2, 3, 1).reshape(N * g * hd, kv)


@pytest.mark.parametrize(("heads", "kv"), [(6, 6), (6, 3)])
def test_head_units_match_column_pivoted_qr_of_the_reshaped_outputs(heads, kv):
    import scipy.linalg

    from statprune.adapters import LayerShape
    from statprune.stat.heads import head_units

    hd = 4
    g = torch.Generator().manual_seed(heads + kv)
    C = torch.randn(50, heads * hd, dtype=torch.float64, generator=g) * torch.rand(
        heads * hd, dtype=torch.float64, generator=g
    )
    units = head_units(C.T @ C, LayerShape(heads, kv, hd, 8), "group", rel_tol=1e-12)
    _, _, P = scipy.linalg.qr(_head_matrix(C, kv, heads // kv, hd).numpy(), pivoting=True, mode="economic")
    group = heads // kv
    assert [int(u[0]) // group for u in units] == P.tolist()
    assert all(u.tolist() == list(range(int(u[0]), int(u[0]) + group)) for u in units)


@pytest.mark.parametrize("seed", [0, 1])
def test_head_curve_is_the_block_least_squares_error_of_every_count(seed):
    from statprune.adapters import LayerShape, head_dims
    from statprune.stat.heads import head_curve, head_units

    H, hd, d = 5, 3, 6
    g = torch.Generator().manual_seed(seed)
    C = torch.randn(40, H * hd, dtype=torch.float64, generator=g) @ torch.randn(
        H * hd, H * hd, dtype=torch.float64, generator=g
    )
    W_O = torch.randn(d, H * hd, dtype=torch.float64, generator=g)
    G = C.T @ C
    units = head_units(G, LayerShape(H, H, hd, 8), "group", rel_tol=1e-12)
    errors = head_curve(G, W_O, units, hd, rel_tol=1e-12)
    for k in range(H + 1):
        kept = head_dims(torch.cat(units[:k]), hd) if k else torch.zeros(0, dtype=torch.long)
        E = _lstsq_residual(C, kept)
        assert float(errors[k]) == pytest.approx(float((E @ W_O.T).pow(2).sum()), rel=1e-7, abs=1e-9)


def test_robust_error_norms_ignore_sink_tokens_and_massive_dimensions():
    from types import SimpleNamespace

    from statprune.stat.prune import layer_scale

    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 10, 200, dtype=torch.float64, generator=g)  # 20 tokens, 200 dims
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 8:] = False  # padding never counts

    def walk(x):
        return SimpleNamespace(
            hidden=[x], masks=[mask], device=torch.device("cpu"), energy=lambda: float(x[mask].pow(2).sum())
        )

    base = {n: layer_scale(walk(h), n) for n in ("residual", "median", "trimmed", "none")}
    assert base["none"] == 1.0
    for n in ("median", "trimmed"):  # on well-behaved states all three agree to within sampling
        assert base[n] == pytest.approx(base["residual"], rel=0.15)
    sink = h.clone()
    sink[0, 0] *= 100.0  # one attention-sink token carrying 10⁴× the energy
    massive = h.clone()
    massive[..., 7] *= 100.0  # one massive-activation dimension
    assert layer_scale(walk(sink), "residual") > 100 * base["residual"]
    assert layer_scale(walk(sink), "median") == pytest.approx(base["median"], rel=0.05)
    assert layer_scale(walk(massive), "residual") > 20 * base["residual"]
    assert layer_scale(walk(massive), "trimmed") == pytest.approx(base["trimmed"], rel=0.02)
    assert layer_scale(walk(massive), "median") > 20 * base["median"]  # per-token median: not its job
