"""STAT ``error_norm=loss``: the captured output-gradient weights and the allocation they drive."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from statprune.adapters import get_adapter
from statprune.calibration import Calibration, LayerWalk
from statprune.errors import StatpruneError
from statprune.flops import prunable_flops, unit_costs
from statprune.pruner import Target, prune
from statprune.stat.loss_weights import output_grad_weights
from statprune.stat.prune import StatOptions, _Timer, allocate, measure_curves
from tests.unit.tiny import random_calibration, tiny_model

SEQ = 20


def _brute_force(model, calib):
    """Autograd on the whole model (weights with gradients, no micro-batching): mean over real
    tokens of the squared gradient of the summed task loss w.r.t. every out_proj/down_proj output."""
    ad = get_adapter(model)
    points = {ad.out_proj(i): (i, "heads") for i in range(ad.num_layers)}
    points.update({ad.down_proj(i): (i, "neurons") for i in range(ad.num_layers)})
    acc, n = {}, 0
    for b in calib.batches:
        outs = {}

        def keep(mod, _args, out, outs=outs):
            out.retain_grad()
            outs[points[mod]] = out

        handles = [m.register_forward_hook(keep) for m in points]
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        for h in handles:
            h.remove()
        mask = b["attention_mask"].bool()
        if logits.dim() == 3:  # next-token loss on real tokens, summed
            tgt = b["input_ids"].masked_fill(~mask, -100)[:, 1:]
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1), reduction="sum"
            )
        else:
            loss = F.cross_entropy(logits.float(), b["labels"], reduction="sum")
        model.zero_grad()
        loss.backward()
        for key, out in outs.items():
            acc[key] = acc.get(key, 0.0) + out.grad[mask].double().pow(2).sum(0)
        n += int(mask.sum())
    return {k: v / n for k, v in acc.items()}


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_captured_weights_equal_brute_force_autograd(family):
    model = tiny_model(family, layers=2).double()
    calib = random_calibration(n=8, length=SEQ, batch_size=4)
    ad = get_adapter(model)
    # max_tokens = one row: the micro-batched capture must equal whole-batch autograd
    got = output_grad_weights(model, ad, calib, ad.device, max_tokens=SEQ, progress=False)
    want = _brute_force(model, calib)
    assert set(got) == set(want) == {(i, k) for i in range(2) for k in ("heads", "neurons")}
    for key in want:
        assert float(want[key].sum()) > 0
        assert torch.allclose(got[key], want[key], rtol=1e-5, atol=0), key
    assert all(p.requires_grad for p in model.parameters())  # restored


def test_encoder_without_labels_is_refused():
    model = tiny_model("bert")
    calib = random_calibration(n=4)
    bare = Calibration(
        [{k: v for k, v in b.items() if k != "labels"} for b in calib.batches], 4, list(range(4))
    )
    with pytest.raises(StatpruneError, match="labelled calibration data"):
        output_grad_weights(model, get_adapter(model), bare, torch.device("cpu"), progress=False)


def _curves_and_target(family, norm, weights, sparsity=0.3):
    model = tiny_model(family, layers=3)
    ad = get_adapter(model)
    calib = random_calibration(n=8, length=SEQ)
    opts = StatOptions(progress=False, error_norm=norm, neuron_multiple=1)
    with torch.no_grad():
        w = weights(model, ad, calib) if weights is not None else None
        curves = measure_curves(
            ad, LayerWalk(ad, calib), Target(sparsity, SEQ), opts, _Timer(ad.device), False, 0, w
        )
    return ad, curves, Target(sparsity, SEQ, prunable_flops(ad, SEQ))


@pytest.mark.parametrize("family", ["llama", "bert"])
@pytest.mark.parametrize("rule", ["share", "greedy"])
@pytest.mark.parametrize("c", [4.0, 0.37])
def test_constant_weights_allocate_as_none(family, rule, c):
    def const(model, ad, calib):
        return {
            (i, k): torch.full((ad.hidden_size,), c, dtype=torch.float64)
            for i in range(3)
            for k in ("heads", "neurons")
        }

    kept = {}
    for norm, weights in (("none", None), ("loss", const)):
        ad, curves, target = _curves_and_target(family, norm, weights)
        kept[norm] = allocate(
            ad, curves, target, StatOptions(allocation=rule, error_norm=norm, neuron_multiple=1)
        )
        if norm == "loss":
            ref = _curves_and_target(family, "none", None)[1]
            for a, b in zip(curves, ref):
                assert torch.allclose(a.errors, c * b.errors, rtol=1e-9, atol=1e-12)
    assert kept["loss"] == kept["none"]
    removed = sum(c.n_units - kept["none"][(c.layer, c.kind)] for c in curves)
    assert removed > 0


@pytest.mark.parametrize("rule", ["share", "greedy"])
def test_a_layer_whose_outputs_do_not_move_the_loss_is_pruned_first(rule):
    def dead_layer_1(model, ad, calib):
        g = output_grad_weights(model, ad, calib, ad.device, progress=False)
        assert all(float(v.sum()) > 0 for v in g.values())
        return {k: v * 0 if k[0] == 1 else v for k, v in g.items()}

    ad, curves, target = _curves_and_target("llama", "loss", dead_layer_1, sparsity=0.1)
    kept = allocate(ad, curves, target, StatOptions(allocation=rule, error_norm="loss", neuron_multiple=1))
    removed = {k: c.n_units - kept[k] for c in curves for k in [(c.layer, c.kind)]}
    assert removed[(1, "heads")] + removed[(1, "neurons")] > 0
    assert all(r == 0 for (layer, _), r in removed.items() if layer != 1), removed
    # the unweighted (none) allocation does take units elsewhere: the weight made the difference
    ad, curves, target = _curves_and_target("llama", "none", None, sparsity=0.1)
    kept = allocate(ad, curves, target, StatOptions(allocation=rule, error_norm="none", neuron_multiple=1))
    assert any(c.n_units > kept[(c.layer, c.kind)] for c in curves if c.layer != 1)


@pytest.mark.parametrize("family", ["llama", "bert"])
@pytest.mark.parametrize("rule", ["share", "greedy"])
@pytest.mark.parametrize("rounds", [1, 2])
def test_loss_weighted_prune_meets_the_flops_target_within_one_unit(family, rule, rounds):
    model = tiny_model(family, layers=3)
    ad = get_adapter(model)
    s = ad.layer_shape(0)
    costs = unit_costs(ad, 0, SEQ)
    unit = max(costs.group(s.group_size), costs.neuron) / prunable_flops(ad, SEQ)
    res = prune(
        model,
        random_calibration(n=8, length=SEQ),
        Target(0.4, SEQ),
        options={
            "progress": False,
            "allocation": rule,
            "neuron_multiple": 1,
            "error_norm": "loss",
            "rounds": rounds,
        },
    )
    assert 0.4 - 1e-9 <= res.sparsity_achieved < 0.4 + unit + 1e-9, (res.sparsity_achieved, unit)
    assert res.timings["loss_gradients"] > 0
    assert len(res.diagnostics["loss_weight_totals"]) == 6


def test_loss_norm_refuses_the_reference_rule():
    with pytest.raises(StatpruneError, match="error_norm=loss"):
        StatOptions(allocation="reference", error_norm="loss")


@pytest.mark.parametrize(
    ("family", "given", "want"),
    [
        ("llama-gqa", {}, {"error_norm": "loss", "allocation": "greedy"}),  # decoders: dev's choice
        ("bert", {}, {"error_norm": "residual", "allocation": "share"}),  # encoders: unchanged
        ("llama", {"allocation": "greedy"}, {"error_norm": "loss"}),
        ("bert", {"allocation": "share"}, {"error_norm": "residual"}),
    ],
)
def test_auto_defaults_prune_exactly_as_the_options_they_become(family, given, want):
    calib = random_calibration(n=8, length=SEQ)
    runs, states = {}, {}
    for name, opts in (("auto", given), ("explicit", {**given, **want})):
        model = tiny_model(family, layers=3)
        runs[name] = prune(model, calib, Target(0.3, SEQ), options={"progress": False, **opts})
        states[name] = model.state_dict()
    assert runs["auto"].diagnostics["auto_options"] == want
    assert runs["explicit"].diagnostics["auto_options"] == {}
    assert runs["auto"].diagnostics["kept_units"] == runs["explicit"].diagnostics["kept_units"]
    assert runs["auto"].diagnostics["predicted_error"] == runs["explicit"].diagnostics["predicted_error"]
    loss = {**given, **want}["error_norm"] == "loss"
    assert ("loss_weight_totals" in runs["auto"].diagnostics) == loss
    for k, v in states["explicit"].items():
        assert torch.equal(states["auto"][k], v), k


def test_auto_is_resolved_at_parse_time_where_the_model_does_not_matter():
    assert (StatOptions().error_norm, StatOptions().allocation) == ("auto", "auto")
    assert StatOptions(allocation="reference").error_norm == "residual"  # the rule reads raw statistics
    assert StatOptions(error_norm="loss").allocation == "greedy"
    assert StatOptions(error_norm="median").allocation == "share"
    assert StatOptions(allocation="greedy").error_norm == "auto"  # decided by the model


def test_internal_steps_refuse_an_unresolved_auto():
    ad, curves, target = _curves_and_target("llama", "residual", None)
    with pytest.raises(StatpruneError, match="auto"):
        allocate(ad, curves, target, StatOptions(allocation="auto"))


def test_the_decoder_default_warns_on_little_calibration_data():
    calib = random_calibration(n=8, length=SEQ)  # 160 tokens
    with pytest.warns(UserWarning, match="error_norm=residual"):
        prune(tiny_model("llama", layers=2), calib, Target(0.3, SEQ), options={"progress": False})
    with warnings.catch_warnings():  # set explicitly: the user chose it, no warning
        warnings.simplefilter("error")
        prune(
            tiny_model("llama", layers=2),
            calib,
            Target(0.3, SEQ),
            options={"progress": False, "error_norm": "loss"},
        )
