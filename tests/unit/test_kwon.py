"""Kwon et al. 2022: Fisher gradients, search optimality, rearrangement, mask folding, tuning, budget."""

import copy
import itertools

import pytest
import torch

from statprune.adapters import get_adapter
from statprune.baselines.kwon.fisher import collect_mask_grads, rebatch, task_loss
from statprune.baselines.kwon.masks import MaskHooks, Masks
from statprune.baselines.kwon.method import apply_masks
from statprune.baselines.kwon.rearrange import objective, rearrange
from statprune.baselines.kwon.search import search
from statprune.baselines.kwon.tune import tune_masks
from statprune.errors import StatpruneError
from statprune.flops import prunable_flops, unit_costs
from statprune.pruner import Target, prune
from tests.unit.tiny import FAMILIES, POST_SUBLAYER_NORM, outputs, random_calibration, rel_err, tiny_model

SEQ = 20
QUIET = {"progress": False, "batch_size": 8}


def _largest_unit(ad) -> float:
    s = ad.layer_shape(0)
    return max(
        max(c.group(s.group_size), c.neuron) for c in (unit_costs(ad, i, SEQ) for i in range(ad.num_layers))
    )


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("sparsity", "stop_after"), [(0.2, "search"), (0.5, "rearrange"), (0.3, "tune")])
def test_flops_target_met_within_one_unit(family, sparsity, stop_after):
    model = tiny_model(family)
    ad = get_adapter(model)
    dense, unit = prunable_flops(ad, SEQ), _largest_unit(ad)
    calib = random_calibration(n=16)
    res = prune(
        model, calib, Target(sparsity, SEQ), method="kwon", options={**QUIET, "stop_after": stop_after}
    )
    removed = dense - res.flops_pruned
    assert sparsity * dense <= removed < sparsity * dense + unit
    assert all(s.num_heads >= 1 for s in res.shapes_pruned)
    assert torch.isfinite(outputs(model, calib)).all()


def test_fisher_gradients_match_finite_differences():
    model = tiny_model("bert").double()
    ad = get_adapter(model)
    calib = rebatch(random_calibration(n=8), 8, 8)
    grads = collect_mask_grads(model, ad, calib, progress=False)
    batch = calib.batches[0]
    ones = Masks.ones(ad)
    masks = Masks([m.double() for m in ones.head], [m.double() for m in ones.neuron])  # exact ±eps
    eps = 1e-4
    with torch.no_grad(), MaskHooks(ad, masks).attached():
        for kind, i, j in (("head", 0, 1), ("head", 1, 3), ("neuron", 0, 5), ("neuron", 1, 77)):
            m = getattr(masks, kind)[i]
            m[j] = 1 + eps
            up = float(task_loss(model, batch, ad.device))
            m[j] = 1 - eps
            down = float(task_loss(model, batch, ad.device))
            m[j] = 1.0
            fd = (up - down) / (2 * eps)
            g = float(getattr(grads, kind)[i][0, j])
            assert g == pytest.approx(fd, rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_micro_batched_gradients_equal_the_mini_batch_gradient(family):
    """Pieces of one row (variable lengths: the LM loss is a token mean) give the same gradients."""
    model = tiny_model(family).double()
    ad = get_adapter(model)
    calib = rebatch(random_calibration(n=8), 8, 8)
    whole = collect_mask_grads(model, ad, calib, progress=False)
    pieces = collect_mask_grads(model, ad, calib, progress=False, max_tokens=1)
    for a, b in zip([*whole.head, *whole.neuron], [*pieces.head, *pieces.neuron]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-9)  # float32 masks: summation order only
    assert max(float(g.abs().max()) for g in whole.neuron) > 1e-6  # not trivially zero


def test_search_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    L, H, N = 2, 3, 4
    head_imp = [torch.rand(H, generator=gen) for _ in range(L)]
    neuron_imp = [torch.rand(N, generator=gen) for _ in range(L)]
    hc, nc = 5.0, 2.0
    units = [("h", i, j) for i in range(L) for j in range(H)] + [
        ("n", i, j) for i in range(L) for j in range(N)
    ]
    for budget in (10.0, 14.0, 19.0, 27.0, 40.0):
        best = -1.0
        for r in range(len(units) + 1):
            for subset in itertools.combinations(units, r):
                if any(not any(u[0] == "h" and u[1] == i for u in subset) for i in range(L)):
                    continue  # every layer keeps a head
                cost = sum(hc if u[0] == "h" else nc for u in subset)
                if cost <= budget:
                    imp = sum(float((head_imp if u[0] == "h" else neuron_imp)[u[1]][u[2]]) for u in subset)
                    best = max(best, imp)
        sel = search(head_imp, [hc] * L, neuron_imp, [nc] * L, budget)
        got = sum(
            float(head_imp[i][sel.heads[i]].sum() + neuron_imp[i][sel.neurons[i]].sum()) for i in range(L)
        )
        cost = sum(hc * int(sel.heads[i].sum()) + nc * int(sel.neurons[i].sum()) for i in range(L))
        assert cost <= budget
        assert got == pytest.approx(best)


def test_search_refuses_a_budget_below_one_head_per_layer():
    with pytest.raises(StatpruneError, match="one attention head per layer"):
        search([torch.ones(2)] * 2, [5.0, 5.0], [torch.ones(3)] * 2, [1.0, 1.0], 9.0)


def test_rearrange_finds_a_cancelling_swap():
    a = torch.tensor([1.0, 2.0, -1.0, 0.5])
    # units 0, 1: small Fisher, aligned gradients; unit 2 cancels unit 0; unit 3 is large
    grads = torch.stack([a, a, -1.2 * a, 10 * torch.tensor([0.3, -1.0, 2.0, 1.0])], dim=1)  # batches × units
    kept = torch.tensor([False, False, True, True])  # diagonal Fisher prunes 0 and 1
    new = rearrange(grads, kept)
    assert int(new.sum()) == 2
    assert objective(grads, ~new) < 0.05 * objective(grads, ~kept)
    assert not bool(new[2])  # the cancelling unit is now pruned


def test_rearrange_never_increases_the_objective():
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        grads = torch.randn(6, 12, generator=gen)
        kept = torch.rand(12, generator=gen) > 0.4
        new = rearrange(grads, kept)
        assert int(new.sum()) == int(kept.sum())
        assert objective(grads, ~new) <= objective(grads, ~kept) + 1e-9


@pytest.mark.parametrize("family", FAMILIES)
def test_folded_scales_equal_the_masked_model(family):
    """Real-valued masks folded into W_O / W2 and removed units: same outputs as the masked dense model."""
    model = tiny_model(family)
    ad = get_adapter(model)
    calib = random_calibration(n=8)
    gen = torch.Generator().manual_seed(0)
    masks = Masks.ones(ad)
    for i in range(ad.num_layers):
        g = ad.layer_shape(i).group_size
        keep_groups = (torch.rand(len(masks.head[i]) // g, generator=gen) > 0.4).float()
        keep_groups[0] = 1.0
        masks.head[i] = keep_groups.repeat_interleave(g) * (
            0.5 + torch.rand(len(masks.head[i]), generator=gen)
        )
        masks.neuron[i] = (torch.rand(len(masks.neuron[i]), generator=gen) > 0.3).float() * (
            0.5 + torch.rand(len(masks.neuron[i]), generator=gen)
        )
    with MaskHooks(ad, masks).attached():
        ref = outputs(model, calib)
    apply_masks(ad, masks)
    assert sum(s.intermediate for s in ad.shapes()) < 2 * 128
    assert rel_err(outputs(model, calib), ref) <= 1e-5


def _scaled_twins(model) -> None:
    """Second half of each FFN: exact copies of the first half, with W2 columns scaled by 0.2."""
    ad = get_adapter(model)
    with torch.no_grad():
        for i in range(ad.num_layers):
            n = ad.layer_shape(i).intermediate // 2
            for lin in ad.ffn_in(i):
                lin.weight[n : 2 * n] = lin.weight[:n]
                if lin.bias is not None:
                    lin.bias[n : 2 * n] = lin.bias[:n]
            ad.down_proj(i).weight[:, n : 2 * n] = 0.2 * ad.down_proj(i).weight[:, :n]


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in POST_SUBLAYER_NORM])
def test_tuning_lowers_reconstruction_error_vs_search_only(family):
    """Pruning the scaled twins is exactly recoverable by scaling the originals by 1.2."""
    model = tiny_model(family)
    _scaled_twins(model)
    ad = get_adapter(model)
    calib = random_calibration(n=16)
    ref = outputs(model, calib)
    student = Masks.ones(ad)
    for i in range(ad.num_layers):
        n = ad.layer_shape(i).intermediate // 2
        student.neuron[i][n : 2 * n] = 0.0
    search_only = copy.deepcopy(model)
    apply_masks(get_adapter(search_only), student)
    err_search = rel_err(outputs(search_only, calib), ref)

    tuned, report = tune_masks(ad, calib, student, None, damp=1e-4, progress=False)
    for fit in report.ffn:
        assert fit.status == "ok" and fit.error_after <= 1e-8 * max(fit.error_before, 1e-12) + 1e-10
    for i in range(ad.num_layers):
        n = ad.layer_shape(i).intermediate // 2
        assert torch.allclose(tuned.neuron[i][:n], torch.full((n,), 1.2), atol=1e-3)
    exact = copy.deepcopy(model)
    apply_masks(get_adapter(exact), tuned)
    err_tuned = rel_err(outputs(exact, calib), ref)
    assert err_search > 1e-3 and err_tuned < 1e-4

    # the paper's damp = 1 (ridge toward 1) still lowers every sub-block's error, just less
    _, report = tune_masks(ad, calib, student, None, damp=1.0, progress=False)
    for fit in report.attention + report.ffn:
        assert fit.status == "ok" and fit.error_after <= fit.error_before + 1e-12
    assert sum(f.error_after for f in report.ffn) < sum(f.error_before for f in report.ffn)


def test_exact_and_lsmr_solvers_agree():
    from statprune.baselines.kwon.tune import solve_scales

    gen = torch.Generator().manual_seed(2)
    A = torch.randn(200, 12, generator=gen, dtype=torch.float64) * torch.logspace(
        -2, 1, 12, dtype=torch.float64
    )
    r = torch.randn(200, generator=gen, dtype=torch.float64)
    exact, fit = solve_scales(A.T @ A, A.T @ r, float(r @ r), damp=1.0, bound=1e9)
    iterative, fit2 = solve_scales(A.T @ A, A.T @ r, float(r @ r), damp=1.0, bound=1e9, solver="lsmr")
    direct = torch.linalg.solve(A.T @ A + torch.eye(12, dtype=torch.float64), A.T @ r)
    assert torch.allclose(exact, direct, rtol=1e-9, atol=1e-12)
    assert torch.allclose(iterative, direct, rtol=1e-6, atol=1e-9)
    assert fit.error_after == pytest.approx(float((A @ exact - r).pow(2).sum()), rel=1e-9)
    assert fit.error_after < fit.error_before and fit2.status == "ok"


def test_tune_abandons_out_of_range_scales():
    model = tiny_model("bert")
    ad = get_adapter(model)
    student = Masks.ones(ad)
    for i in range(ad.num_layers):
        student.neuron[i][::2] = 0.0
    _, report = tune_masks(
        ad, random_calibration(n=8), student, None, damp=1e-6, bound=1.0001, progress=False
    )
    assert {f.status for f in report.ffn} == {"out_of_range"}


def test_pipeline_diagnostics_and_teacher_assistant():
    model = tiny_model("llama-gqa")
    calib = random_calibration(n=24)
    res = prune(
        model,
        calib,
        Target(0.4, SEQ),
        method="kwon",
        options={**QUIET, "teacher": "assistant", "num_samples": 16},
    )
    d = res.diagnostics
    assert d["samples_used"] == 16 and d["num_batches"] == 2
    assert d["rearrange_objective"]["after"] <= d["rearrange_objective"]["before"] + 1e-12
    assert sum(d["teacher_assistant_kept"].values()) > sum(d["kept_units"].values())
    fits = d["tune"]["attention"] + d["tune"]["ffn"]
    assert all(f["error_after"] <= f["error_before"] + 1e-12 for f in fits if f["status"] == "ok")
    assert set(res.timings) >= {"fisher", "search", "rearrange", "tune"}


def test_encoder_without_labels_is_a_user_error():
    calib = random_calibration(n=8)
    for b in calib.batches:
        del b["labels"]
    with pytest.raises(StatpruneError, match="labelled"):
        prune(tiny_model("bert"), calib, Target(0.3, SEQ), method="kwon", options=QUIET)
