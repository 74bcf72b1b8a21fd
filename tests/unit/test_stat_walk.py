"""STAT's apply walk skips work (stopped forwards, layer replay) without changing the result.

The reference is the walk without shortcuts, written out here: per layer, a full forward for the
head Gram, prune heads, a full forward for the FFN Gram, prune neurons, a full forward for the
outputs.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from statprune import calibration
from statprune.adapters import get_adapter
from statprune.calibration import Gram, LayerReplay, LayerWalk, replay_fits, walk_groups
from statprune.pruner import Target, prune
from statprune.stat import prune as stat_prune_module
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


def _batch(rows: int, length: int, types: bool = False) -> dict[str, torch.Tensor]:
    b = {"input_ids": torch.ones(rows, length, dtype=torch.long), "attention_mask": torch.ones(rows, length)}
    return {**b, "token_type_ids": torch.zeros(rows, length, dtype=torch.long)} if types else b


def test_walk_groups_consecutive_batches_of_one_shape_within_the_limits():
    batches = [_batch(8, 20), _batch(8, 20), _batch(4, 20), _batch(8, 30), _batch(8, 30), _batch(8, 30, True)]
    assert walk_groups(batches, lambda s: 10**6) == [[0, 1, 2], [3, 4], [5]]
    assert walk_groups(batches, lambda s: 320) == [[0, 1], [2], [3], [4], [5]]  # 160 + 160 fit, + 80 not
    assert walk_groups(batches, lambda s: 400 if s == 20 else 100) == [[0, 1, 2], [3], [4], [5]]
    assert walk_groups(batches, lambda s: 0) == [[b] for b in range(6)]  # each batch alone over the limit


def test_group_limit_counts_tokens_work_and_memory(monkeypatch):
    model = tiny_model("llama-gqa", layers=2)
    ad = get_adapter(model)
    walk = LayerWalk(ad, random_calibration(n=4), group=True)
    params = sum(p.numel() for p in ad.layers()[0].parameters())
    assert walk._group_limit()(20) == min(calibration.GROUP_TOKENS, int(calibration.GROUP_WORK // params))
    monkeypatch.setattr(calibration, "GROUP_WORK", 1000 * params)
    assert walk._group_limit()(20) == 1000
    shape = ad.layer_shape(0)
    per_token = (8 * ad.hidden_size + 3 * shape.intermediate) * 4 + shape.num_heads * 20 * 4  # float32
    monkeypatch.setattr(calibration, "free_bytes", lambda device: 4 * 300 * per_token)  # room for 300
    assert walk._group_limit()(20) == 300
    assert walk._group_limit()(40) < 300  # longer rows: more attention scores per token


@pytest.mark.parametrize(
    "family", ["bert", "distilbert", "llama-gqa", "opt", "phi3", "gemma2", "gpt2", "qwen3"]
)
def test_grouped_walk_gives_the_statistics_and_outputs_of_one_forward_per_batch(family):
    model = tiny_model(family, layers=2)
    model.eval()
    ad = get_adapter(model)
    calib = random_calibration(n=20)  # batches of 8, 8, 4 rows, padded to various lengths
    plain, grouped = LayerWalk(ad, calib), LayerWalk(ad, calib, group=True)
    assert plain.groups == [[0], [1], [2]] and grouped.groups == [[0, 1, 2]]
    for i in range(ad.num_layers):
        seen: dict[str, list[tuple]] = {"plain": [], "grouped": []}
        grams = {}
        for name, walk in (("plain", plain), ("grouped", grouped)):
            heads = Gram(ad.out_proj(i).in_features, walk.device)
            ffn = Gram(ad.down_proj(i).in_features, walk.device)

            def neurons(x, m, ffn=ffn, log=seen[name]):  # hooks see one batch at a time, as without groups
                log.append((tuple(x.shape), tuple(m.shape)))
                ffn(x, m)

            early = Gram(ad.out_proj(i).in_features, walk.device)
            walk.run(i, {ad.out_proj(i): early}, keep_outputs=False, stop_after=ad.out_proj(i))
            outs = walk.run(i, {ad.out_proj(i): heads, ad.down_proj(i): neurons})
            grams[name] = (heads, ffn, early, outs)
            walk.advance(outs)
        assert seen["plain"] == seen["grouped"] and len(seen["plain"]) == 3
        for a, b in zip(grams["plain"][:3], grams["grouped"][:3]):
            assert a.count == b.count > 0
            assert torch.allclose(a.G, b.G, rtol=1e-6, atol=1e-9 * float(a.G.diagonal().max()))
        for a, b, m in zip(grams["plain"][3], grams["grouped"][3], plain.masks):
            assert a.shape == b.shape
            assert float((a[m] - b[m]).norm()) <= 1e-6 * float(a[m].norm())


def test_stat_prunes_alike_with_the_walk_grouped(monkeypatch):
    """STAT groups the walk on CUDA only; forced here on the CPU, the same units and corrections."""
    dense = tiny_model("llama-gqa", layers=3)
    dense.eval()
    calib = random_calibration(n=24)
    opts = {"progress": False, "neuron_multiple": 1}
    plain = copy.deepcopy(dense)
    res_plain = prune(plain, calib, Target(0.4, 20), options=opts)
    monkeypatch.setattr(stat_prune_module, "LayerWalk", functools.partial(LayerWalk, group=True))
    grouped = copy.deepcopy(dense)
    res_grouped = prune(grouped, calib, Target(0.4, 20), options=opts)
    assert res_grouped.diagnostics["kept_units"] == res_plain.diagnostics["kept_units"]
    gp = dict(grouped.named_parameters())
    for name, p in plain.named_parameters():
        assert float((p - gp[name]).detach().norm()) <= 1e-5 * float(p.detach().norm()), name
