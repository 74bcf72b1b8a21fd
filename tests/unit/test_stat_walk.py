"""STAT's apply walk skips work (stopped forwards, layer replay) without changing the result.

The reference is the walk without shortcuts, written out here: per layer, a full forward for the
head Gram, prune heads, a full forward for the FFN Gram, prune neurons, a full forward for the
outputs.
"""

from __future__ import annotations

import copy

import pytest
import torch

from statprune.adapters import get_adapter
from statprune.calibration import Gram, LayerReplay, LayerWalk, replay_fits
from statprune.pruner import Target, prune
from statprune.stat.heads import prune_heads
from statprune.stat.neurons import prune_neurons
from statprune.stat.prune import StatOptions
from tests.unit.tiny import outputs, random_calibration, rel_err, tiny_model


@torch.no_grad()
def _reference_apply(model: torch.nn.Module, calib, kept: dict[str, int], opts: StatOptions) -> None:
    adapter = get_adapter(model)
    walk = LayerWalk(adapter, calib)
    for i in range(adapter.num_layers):
        g = Gram(adapter.out_proj(i).in_features, walk.device, precision=opts.gram_precision)
        walk.run(i, {adapter.out_proj(i): g}, keep_outputs=False)
        prune_heads(adapter, i, g.G, kept[f"{i}.heads"], mode=opts.gqa, correction=True, rel_tol=opts.rel_tol)
        g = Gram(adapter.down_proj(i).in_features, walk.device, precision=opts.gram_precision)
        walk.run(i, {adapter.down_proj(i): g}, keep_outputs=False)
        prune_neurons(adapter, i, g.G, kept[f"{i}.neurons"], correction=True, rel_tol=opts.rel_tol)
        walk.advance(walk.run(i))


@pytest.mark.parametrize("family", ["llama-gqa", "bert", "phi3"])
def test_apply_walk_matches_full_forwards(family):
    dense = tiny_model(family, layers=3)
    dense.eval()
    calib = random_calibration(n=24)
    fast = copy.deepcopy(dense)
    res = prune(fast, calib, Target(0.4, 20), options={"progress": False, "neuron_multiple": 1})
    kept = res.diagnostics["kept_units"]
    ref = copy.deepcopy(dense)
    _reference_apply(ref, calib, kept, StatOptions())
    ad = get_adapter(ref)
    assert get_adapter(fast).shapes() == ad.shapes()
    assert any(s.intermediate < 96 for s in ad.shapes())  # neurons were pruned
    corrected = {n for n, _ in ref.named_parameters() if n.endswith(("o_proj.weight", "down_proj.weight"))}
    corrected |= {n for n, _ in ref.named_parameters() if ".output.dense.weight" in n}
    pr = dict(ref.named_parameters())
    for name, p in fast.named_parameters():
        if name not in corrected:  # sliced only: bitwise equal, the same units were kept
            assert torch.equal(p, pr[name]), name
        elif family != "phi3":
            assert float((p - pr[name]).detach().norm()) <= 1e-5 * float(pr[name].detach().norm()), name
    # tiny Phi-3 keeps one KV group whose two query heads see near-uniform attention of one 16-dim V:
    # its head Gram is ill-conditioned and W_O's correction amplifies float noise (1e-3 relative);
    # the outputs, which the correction fits, agree
    out_ref, out_fast = outputs(ref, calib), outputs(fast, calib)
    assert rel_err(out_fast, out_ref) < 1e-3 * rel_err(out_ref, outputs(dense, calib))


@pytest.mark.parametrize("family", ["llama-gqa", "phi3", "gemma2", "bert"])
def test_replay_reproduces_the_pruned_layer_where_the_adapter_has_a_plain_residual(family):
    model = tiny_model(family)
    model.eval()
    adapter = get_adapter(model)
    walk = LayerWalk(adapter, random_calibration(n=12))
    assert replay_fits(walk) == (family in ("llama-gqa", "phi3"))
    if not replay_fits(walk):
        return
    handle = adapter.ffn(1).register_forward_hook(lambda _m, _a, out: out)
    assert not replay_fits(walk)  # a hook that may change an output: run the layers in full
    handle.remove()
    rec = LayerReplay(walk, 0)
    n_tok = int(sum(m.sum() for m in walk.masks))
    g = Gram(adapter.out_proj(0).in_features, walk.device)
    walk.run(
        0, rec.attention_hooks({adapter.out_proj(0): g}), keep_outputs=False, stop_after=adapter.out_proj(0)
    )
    dims = prune_heads(adapter, 0, g.G, 1, mode="group", correction=True, rel_tol=1e-12)
    assert dims is not None and len(dims) == 32
    g = Gram(adapter.down_proj(0).in_features, walk.device)
    rec.ffn_inputs(dims, {adapter.down_proj(0): g})
    ref = Gram(adapter.down_proj(0).in_features, walk.device)
    walk.run(0, {adapter.down_proj(0): ref}, keep_outputs=False)  # the pruned layer, run in full
    assert g.count == ref.count == n_tok
    assert torch.allclose(g.G, ref.G, rtol=1e-5, atol=1e-8 * float(ref.G.diagonal().max()))
    kept = prune_neurons(adapter, 0, g.G, 40, correction=True, rel_tol=1e-12)
    assert kept is not None and len(kept) == 40
    replayed, rerun = rec.outputs(kept), walk.run(0)
    for a, b, m in zip(replayed, rerun, walk.masks):
        assert a.shape == b.shape
        assert float((a[m] - b[m]).norm()) <= 1e-6 * float(b[m].norm())


def test_stop_after_gives_the_same_statistics_and_checks_the_module_is_reached():
    model = tiny_model("llama")
    model.eval()
    adapter = get_adapter(model)
    walk = LayerWalk(adapter, random_calibration(n=12))
    full, early = (Gram(adapter.out_proj(1).in_features, walk.device) for _ in range(2))
    walk.run(1, {adapter.out_proj(1): full}, keep_outputs=False)
    seen = []
    ffn_hook = {adapter.down_proj(1): lambda x, m: seen.append(1)}
    walk.run(1, {adapter.out_proj(1): early, **ffn_hook}, keep_outputs=False, stop_after=adapter.out_proj(1))
    assert torch.equal(full.G, early.G) and full.count == early.count > 0
    assert not seen  # nothing after W_O ran
    with pytest.raises(ValueError):
        walk.run(1, {adapter.out_proj(1): early}, stop_after=adapter.out_proj(1))  # outputs wanted
    unused = torch.nn.Linear(2, 2)
    with pytest.raises(Exception, match="never reached"):
        walk.run(1, {unused: lambda x, m: None}, keep_outputs=False, stop_after=unused)
