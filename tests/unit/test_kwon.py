"""Kwon et al. 2022: Fisher gradients, search optimality, rearrangement, mask folding, tuning, budget."""

import copy
import itertools

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import lsmr as scipy_lsmr

from statprune.adapters import get_adapter
from statprune.baselines.kwon.fisher import auto_batch_size, collect_mask_grads, rebatch, task_loss
from statprune.baselines.kwon.masks import MaskHooks, Masks
from statprune.baselines.kwon.method import _group_grads, apply_masks, select
from statprune.baselines.kwon.rearrange import objective, rearrange
from statprune.baselines.kwon.search import search
from statprune.baselines.kwon.tune import solve_scales, tune_masks
from statprune.errors import StatpruneError
from statprune.flops import prunable_flops, unit_costs
from statprune.pruner import Target, prune
from tests.unit.tiny import (
    FAMILIES,
    POST_SUBLAYER_NORM,
    module_inputs,
    outputs,
    random_calibration,
    rel_err,
    tiny_model,
)

SEQ = 20
QUIET = {"progress": False, "batch_size": 8}


def _largest_unit(ad, multiple: int = 8) -> float:
    """One head group or one group of ``multiple`` neurons (widths are rounded to multiples)."""
    s = ad.layer_shape(0)
    return max(
        max(c.group(s.group_size), multiple * c.neuron)
        for c in (unit_costs(ad, i, SEQ) for i in range(ad.num_layers))
    )


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("sparsity", "stop_after"), [(0.2, "search"), (0.5, "rearrange"), (0.3, "tune")])
def test_flops_target_met_within_one_group(family, sparsity, stop_after):
    model = tiny_model(family)
    ad = get_adapter(model)
    dense, unit = prunable_flops(ad, SEQ), _largest_unit(ad)
    calib = random_calibration(n=16)
    res = prune(
        model, calib, Target(sparsity, SEQ), method="kwon", options={**QUIET, "stop_after": stop_after}
    )
    removed = dense - res.flops_pruned
    assert sparsity * dense <= removed < sparsity * dense + unit
    assert all(s.num_heads >= 1 and s.intermediate % 8 == 0 for s in res.shapes_pruned)
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


# Gemma normalises a sub-block's output before the residual add: the scales are then no longer a
# linear least-squares fit of the residual contribution, so exact recovery does not apply there.
@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in POST_SUBLAYER_NORM])
@pytest.mark.parametrize("solver", ["ridge", "lsmr"])
def test_tuning_recovers_pruned_scaled_twins(family, solver):
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
    # ridge: a tiny damping gives the exact scales; lsmr as released (damp = 1 on the normal
    # equations, LSMR's default tolerances 1e-6) gets within its tolerance
    damp, tol = (1e-4, 1e-3) if solver == "ridge" else (1e-8, 3e-3)
    tuned, report = tune_masks(ad, calib, student, None, damp=damp, solver=solver, progress=False)
    assert report.stopped_at is None
    for i in range(ad.num_layers):
        n = ad.layer_shape(i).intermediate // 2
        assert torch.allclose(tuned.neuron[i][:n], torch.full((n,), 1.2), atol=tol)
    exact = copy.deepcopy(model)
    apply_masks(get_adapter(exact), tuned)
    assert err_search > 1e-3 and rel_err(outputs(exact, calib), ref) < 10 * tol * err_search


@pytest.mark.parametrize("family", ["bert", "llama", "llama-gqa"])
@pytest.mark.parametrize("solver", ["ridge", "lsmr"])
def test_attention_tuning_recovers_known_head_scales(family, solver):
    """Teacher = the kept heads' outputs scaled by known factors (pruned heads off): the fitted
    student scales are those factors, layer after layer, and the tuned model is the teacher."""
    model = tiny_model(family)
    ad = get_adapter(model)
    with torch.no_grad():  # head outputs of order 1, as in trained models (LSMR's tolerances and
        for i in range(ad.num_layers):  # conlim are relative: the offset column must not dwarf them)
            ad.out_proj(i).weight.mul_(50.0)
    calib = random_calibration(n=16)
    gen = torch.Generator().manual_seed(7)
    student, teacher = Masks.ones(ad), Masks.ones(ad)
    for i in range(ad.num_layers):
        g = ad.layer_shape(i).group_size
        keep = torch.tensor([1.0, 0.0, 1.0, 1.0]).repeat_interleave(g)[: len(student.head[i])]
        student.head[i] = keep
        teacher.head[i] = keep * (0.4 + 1.5 * torch.rand(len(keep), generator=gen))
    damp, tol = (1e-6, 1e-5) if solver == "ridge" else (1e-8, 1e-3)
    tuned, report = tune_masks(ad, calib, student, teacher, damp=damp, solver=solver, progress=False)
    assert report.stopped_at is None and all(f.status == "ok" for f in report.attention)
    for i in range(ad.num_layers):
        assert torch.allclose(tuned.head[i], teacher.head[i], atol=tol)
        assert torch.allclose(tuned.neuron[i], teacher.neuron[i], atol=tol)
    with MaskHooks(ad, teacher).attached():
        ref = outputs(model, calib)
    apply_masks(ad, tuned)
    assert rel_err(outputs(model, calib), ref) < 10 * tol


def test_attention_lsmr_matches_the_released_definition():
    """Layer 0 attention, built as the released get_mha_lstsq + lsmr_cupy_solver define it: per-head
    outputs as columns plus a column of ones, B = teacher output − bias − input, then
    X = lsmr(AᵀA, AᵀB − AᵀA·1, damp=1) + 1, offset dropped. Ours streams the same statistics."""
    model = tiny_model("bert").double()
    ad = get_adapter(model)
    calib = random_calibration(n=8)
    contexts = module_inputs(model, ad.out_proj(0), calib)
    hd, H = ad.head_dim, ad.layer_shape(0).num_heads
    C = torch.cat([c[b["attention_mask"].bool()] for c, b in zip(contexts, calib.batches)])  # tokens × H·hd
    W = ad.out_proj(0).weight.detach()  # d × H·hd
    per_head = [C[:, h * hd : (h + 1) * hd] @ W[:, h * hd : (h + 1) * hd].T for h in range(H)]
    kept = [0, 2, 3]
    # layer 0 sees the same input in teacher and student, so B = Σ over all heads (dense teacher)
    B = sum(per_head).reshape(-1).numpy()
    A = np.stack([per_head[h].reshape(-1).numpy() for h in kept] + [np.ones(B.size)], axis=1)
    ATA, ATB = A.T @ A, A.T @ B
    X = scipy_lsmr(ATA, ATB - ATA.sum(1), damp=1, maxiter=5 * len(ATB))[0] + 1  # cupyx's default cap
    released = X[:-1]
    student = Masks.ones(ad)
    student.head[0] = torch.tensor([1.0, 0.0, 1.0, 1.0])
    tuned, report = tune_masks(ad, calib, student, None, solver="lsmr", on_failure="skip", progress=False)
    assert report.attention[0].status == "ok"
    assert np.allclose(tuned.head[0][kept].numpy(), released, rtol=1e-6, atol=1e-8)
    assert float(tuned.head[0][1]) == 0.0
    # the ridge toward 1 on A is a different problem: its scales differ by far more than the tolerance
    ridge = np.linalg.solve(A[:, :-1].T @ A[:, :-1] + np.eye(3), A[:, :-1].T @ (B - A[:, :-1].sum(1))) + 1
    assert np.abs(ridge - released).max() > 1e-4


def test_lsmr_on_normal_equations_is_damped_least_squares_of_the_normal_system():
    """solve_scales(solver="lsmr") = argmin ‖AᵀA δ − Aᵀr‖² + ‖δ‖² (tight enough on a well-posed case),
    unlike the ridge (AᵀA + I)⁻¹Aᵀr."""
    gen = torch.Generator().manual_seed(2)
    A = torch.randn(200, 6, generator=gen, dtype=torch.float64) * 0.3
    r = torch.randn(200, generator=gen, dtype=torch.float64)
    M, b = A.T @ A, A.T @ r
    lsmr_delta, fit = solve_scales(M, b, float(r @ r), damp=1.0, bound=1e9, solver="lsmr")
    ridge_delta, _ = solve_scales(M, b, float(r @ r), damp=1.0, bound=1e9, solver="ridge")
    normal = torch.linalg.solve(M @ M + torch.eye(6, dtype=torch.float64), M @ b)
    ridge = torch.linalg.solve(M + torch.eye(6, dtype=torch.float64), b)
    assert torch.allclose(lsmr_delta, normal, rtol=1e-4, atol=1e-6)
    assert torch.allclose(ridge_delta, ridge, rtol=1e-10, atol=1e-12)
    assert (lsmr_delta - ridge_delta).abs().max() > 1e-2
    assert fit.error_after == pytest.approx(float((A @ lsmr_delta - r).pow(2).sum()), rel=1e-9)


@pytest.mark.parametrize("on_failure", ["stop", "skip"])
def test_tune_abandons_out_of_range_scales(on_failure):
    model = tiny_model("bert")
    ad = get_adapter(model)
    student = Masks.ones(ad)
    for i in range(ad.num_layers):
        student.neuron[i][::2] = 0.0
        student.head[i][1] = 0.0
    tuned, report = tune_masks(
        ad,
        random_calibration(n=8),
        student,
        None,
        damp=1e-6,
        bound=1.0001,
        solver="ridge",
        on_failure=on_failure,
        progress=False,
    )
    assert report.attention[0].status == "out_of_range"
    if on_failure == "stop":  # as released: the first failed fit ends tuning
        assert report.stopped_at == "0.attention" and not report.ffn and len(report.attention) == 1
    else:
        assert report.stopped_at is None and {f.status for f in report.ffn} == {"out_of_range"}
    for i in range(ad.num_layers):  # abandoned fits keep their 0/1 masks
        assert set(tuned.head[i].tolist()) <= {0.0, 1.0}


def test_pipeline_diagnostics_and_teacher_assistant():
    model = tiny_model("llama-gqa")
    calib = random_calibration(n=24)
    res = prune(
        model,
        calib,
        Target(0.4, SEQ),
        method="kwon",
        options={"progress": False, "teacher": "assistant", "num_samples": 16},
    )
    d = res.diagnostics
    assert d["samples_used"] == 16 and d["num_batches"] == 16 and d["batch_size"] == 1  # per example
    assert sum(d["teacher_assistant_kept"].values()) > sum(d["kept_units"].values())
    assert set(res.timings) >= {"fisher", "search", "rearrange", "tune"}


@pytest.mark.parametrize(
    ("n", "batch", "terms"), [(2048, 32, 64), (512, 8, 64), (128, 2, 64), (200, 3, 67), (40, 1, 40)]
)
def test_default_fisher_has_at_least_64_terms_or_one_per_example(n, batch, terms):
    assert auto_batch_size(n) == batch
    data = rebatch(random_calibration(n=n, length=4, batch_size=64), n, None)
    assert len(data.batches) == terms and data.num_examples == n
    assert {b["input_ids"].shape[0] for b in data.batches[:-1]} == {batch}


def _official_search_mac(head_imp, neuron_imp, hc, nc, max_mac):
    """The released search_mac from its definition: global sort, num_heads from 1, int() neuron fill,
    strict improvement from 0."""
    hs = torch.cat(head_imp).sort(descending=True)
    ns = torch.cat(neuron_imp).sort(descending=True)
    best, pick = 0.0, None
    for k in range(1, len(hs.values) + 1):
        m = max(int((max_mac - hc * k) / nc), 0)
        total = float(hs.values[:k].sum() + ns.values[:m].sum())
        if total > best:
            best, pick = total, (hs.indices[:k], ns.indices[:m])
    H, N = len(head_imp[0]), len(neuron_imp[0])
    heads = torch.zeros(len(head_imp) * H, dtype=torch.bool)
    neurons = torch.zeros(len(neuron_imp) * N, dtype=torch.bool)
    heads[pick[0]], neurons[pick[1]] = True, True
    return heads.view(-1, H), neurons.view(-1, N)


def test_search_keeps_what_the_released_search_keeps():
    gen = torch.Generator().manual_seed(4)
    L, H, N, hc, nc = 3, 4, 24, 7.0, 1.0
    for trial in range(20):
        head_imp = [torch.rand(H, generator=gen, dtype=torch.float64) for _ in range(L)]
        for h in head_imp:  # every layer's best head is globally important: the per-layer head
            h[int(torch.randint(H, (1,), generator=gen))] += 2.0  # rule does not bind
        neuron_imp = [torch.rand(N, generator=gen, dtype=torch.float64) ** 3 for _ in range(L)]
        budget = float(L * (H * hc + N * nc)) * (0.3 + 0.05 * trial % 0.6)
        off_h, off_n = _official_search_mac(head_imp, neuron_imp, hc, nc, budget)
        assert hc * int(off_h.sum()) + nc * int(off_n.sum()) <= budget  # (the released loop does not check)
        sel = search(head_imp, [hc] * L, neuron_imp, [nc] * L, budget)
        assert torch.equal(torch.stack(sel.heads), off_h)
        assert torch.equal(torch.stack(sel.neurons), off_n)


@pytest.mark.parametrize("family", ["bert", "llama-gqa"])
@pytest.mark.parametrize("sparsity", [0.2, 0.45])
def test_neuron_multiple_keeps_widths_aligned_and_the_top_units(family, sparsity):
    model = tiny_model(family)
    ad = get_adapter(model)
    dense = prunable_flops(ad, SEQ)
    grads = collect_mask_grads(model, ad, rebatch(random_calibration(n=16), 16, 2), progress=False)
    head_g, neuron_g = _group_grads(grads, ad), grads.neuron
    keep = (1 - sparsity) * dense
    free = select(ad, head_g, neuron_g, keep, SEQ, rearranged=False, neuron_multiple=1)
    sel = select(ad, head_g, neuron_g, keep, SEQ, rearranged=False, neuron_multiple=8)
    costs = [unit_costs(ad, i, SEQ) for i in range(ad.num_layers)]

    def kept_flops(s):
        return sum(
            int(h.sum()) * c.group(ad.layer_shape(i).group_size) + int(n.sum()) * c.neuron
            for i, (h, n, c) in enumerate(zip(s.heads, s.neurons, costs))
        )

    group = 8 * max(c.neuron for c in costs)
    assert keep - group < kept_flops(sel) <= keep  # within one group of the target
    for i, n in enumerate(sel.neurons):
        c = int(n.sum())
        assert c % 8 == 0 or c == int(free.neurons[i].sum()) < 8
        fisher = neuron_g[i].pow(2).sum(0)
        assert float(fisher[n].min()) >= float(fisher[~n].max())  # the layer's top-importance units
        assert torch.equal(sel.heads[i], free.heads[i])
    model2 = tiny_model(family)
    res = prune(model2, random_calibration(n=16), Target(sparsity, SEQ), method="kwon", options=QUIET)
    assert all(s.intermediate % 8 == 0 for s in res.shapes_pruned)


def test_encoder_without_labels_is_a_user_error():
    calib = random_calibration(n=8)
    for b in calib.batches:
        del b["labels"]
    with pytest.raises(StatpruneError, match="labelled"):
        prune(tiny_model("bert"), calib, Target(0.3, SEQ), method="kwon", options=QUIET)


@pytest.mark.parametrize("cls_only", [True, False])
def test_last_ffn_of_a_classifier_is_fitted_on_the_first_token(cls_only):
    """As released (``cls_only``): the last layer's FFN fit uses only the position the head reads."""
    model = tiny_model("bert", layers=1).double()
    ad = get_adapter(model)
    calib = random_calibration(n=8)
    zs = module_inputs(model, ad.down_proj(0), calib)
    rows = [z[:, :1] if cls_only else z[b["attention_mask"].bool()] for z, b in zip(zs, calib.batches)]
    Z = torch.cat([r.reshape(-1, r.shape[-1]) for r in rows])  # tokens × neurons
    W2 = ad.down_proj(0).weight.detach()
    kept = torch.arange(0, 128, 2)
    pruned = torch.arange(1, 128, 2)
    r = Z[:, pruned] @ W2[:, pruned].T  # what the pruned neurons contributed (tokens × d)
    A = torch.stack([(Z[:, j : j + 1] * W2[:, j]).reshape(-1) for j in kept], 1)
    direct = torch.linalg.lstsq(A, r.reshape(-1, 1)).solution[:, 0]
    student = Masks.ones(ad)
    student.neuron[0][pruned] = 0.0
    tuned, report = tune_masks(
        ad, calib, student, None, damp=1e-9, solver="ridge", cls_last_ffn=cls_only, progress=False
    )
    assert report.ffn[0].status == "ok"
    assert torch.allclose(tuned.neuron[0][kept].double() - 1, direct, rtol=1e-3, atol=1e-4)
