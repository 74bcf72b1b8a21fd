"""FLAP: fluctuation metric and bias compensation by hand, FLOPs target, reload, peer check."""

import math

import pytest
import torch

from statprune.adapters import get_adapter
from statprune.baselines.flap import (
    ChannelStats,
    apply_units,
    collect_stats,
    compensation,
    fluctuation,
    layer_scores,
    spread_order,
    standardise,
)
from statprune.calibration import LayerWalk
from statprune.flops import prunable_flops, unit_costs
from statprune.models.checkpoint import load_pruned, save_pruned
from statprune.pruner import Target, prune
from tests.unit.tiny import FAMILIES, outputs, random_calibration, rel_err, tiny_model

SEQ = 20
QUIET = {"progress": False}
# families whose stock modules have no config switch for an output-projection bias (FLAP refuses
# bias compensation there, tested below; these tests run them with bias=false)
NO_BIAS_SWITCH = ("qwen3", "phi3", "gemma2", "gemma3")


def _opts(family: str, **kw) -> dict:
    return {**QUIET, "bias": family not in NO_BIAS_SWITCH, **kw}


STRUCTURES = ("AL-AM", "AL-MM", "UL-UM", "UL-MM")


def test_fluctuation_metrics_by_hand():
    # tokens × channels; the last row is padding and must not count
    x = torch.tensor([[[1.0, 2.0], [3.0, 2.0], [5.0, 2.0], [100.0, -50.0]]])
    mask = torch.tensor([[True, True, True, False]])
    stats = ChannelStats()
    stats(x[:, :2], mask[:, :2])  # two batches: streaming must not matter
    stats(x[:, 2:], mask[:, 2:])
    assert stats.n == 3
    one_by_one = ChannelStats()
    one_by_one(x, mask, chunk_rows=1)
    assert torch.allclose(one_by_one.var, stats.var) and torch.allclose(one_by_one.mean, stats.mean)
    assert torch.allclose(stats.mean, torch.tensor([3.0, 2.0], dtype=torch.float64))
    assert torch.allclose(stats.var, torch.tensor([8 / 3, 0.0], dtype=torch.float64))
    assert torch.allclose(stats.sumsq, torch.tensor([35.0, 12.0], dtype=torch.float64))
    w = torch.tensor([[1.0, 2.0], [2.0, 0.0], [-2.0, 1.0]])  # out × in: squared column norms 9, 5
    assert torch.allclose(fluctuation(stats, w, "WIFV"), torch.tensor([24.0, 0.0], dtype=torch.float64))
    assert torch.allclose(fluctuation(stats, w, "IFV"), torch.tensor([8 / 3, 0.0], dtype=torch.float64))
    wifn = torch.tensor([5 / 3 * math.sqrt(35 / 3), 1.0 * 2.0], dtype=torch.float64)
    assert torch.allclose(fluctuation(stats, w, "WIFN"), wifn)
    assert torch.allclose(standardise(torch.tensor([1.0, 2.0, 3.0])), torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(standardise(torch.tensor([4.0, 4.0])), torch.zeros(2))


def _plant_constant_units(model, heads: list[int], neurons: list[int]) -> None:
    """BERT layer 0: the given heads and neurons output a (nonzero) constant on every token."""
    ad = get_adapter(model)
    hd = ad.head_dim
    v = ad.qkv(0)[2]
    up = ad.ffn_in(0)[0]
    with torch.no_grad():
        for h in heads:  # zero value rows + bias c: softmax-weighted average of c is c
            v.weight[h * hd : (h + 1) * hd] = 0.0
            v.bias[h * hd : (h + 1) * hd] = torch.linspace(-1.0, 1.0, hd)
        up.weight[neurons] = 0.0
        up.bias[neurons] = torch.linspace(0.5, 2.0, len(neurons))  # GELU(c) ≠ 0


def test_bias_compensation_is_exact_for_constant_inputs():
    model = tiny_model("bert")
    _plant_constant_units(model, heads=[1, 3], neurons=list(range(0, 40, 5)))
    calib = random_calibration()
    dense = outputs(model, calib)
    ad = get_adapter(model)
    h, n, _ = collect_stats(LayerWalk(ad, calib), ad, 0)
    assert float(n.var[list(range(0, 40, 5))].max()) < 1e-10  # the planted inputs are constant
    keep_heads = torch.tensor([0, 2])
    keep_neurons = torch.tensor([j for j in range(128) if j % 5 or j >= 40])
    b_o, b_d = ad.out_proj(0).bias.detach().clone(), ad.down_proj(0).bias.detach().clone()
    d_o = compensation(ad, 0, "heads", keep_heads, h.mean)
    d_d = compensation(ad, 0, "neurons", keep_neurons, n.mean)
    hd = ad.head_dim
    removed_o = torch.cat([torch.arange(hd) + hd, torch.arange(hd) + 3 * hd])
    hand = ad.out_proj(0).weight.detach().double()[:, removed_o] @ h.mean[removed_o]
    assert torch.allclose(d_o, hand)
    assert float(d_d.abs().max()) > 1e-2  # a real correction, not a no-op
    ad.add_output_bias(0, "attention", d_o)
    ad.add_output_bias(0, "ffn", d_d)
    apply_units(ad, 0, "heads", keep_heads)
    apply_units(ad, 0, "neurons", keep_neurons)
    assert torch.allclose(ad.out_proj(0).bias.double(), b_o.double() + d_o, atol=1e-6)
    assert torch.allclose(ad.down_proj(0).bias.double(), b_d.double() + d_d, atol=1e-6)
    assert rel_err(outputs(model, calib), dense) < 1e-5
    # without the compensation the same removal changes the output
    plain = tiny_model("bert")
    _plant_constant_units(plain, heads=[1, 3], neurons=list(range(0, 40, 5)))
    pad = get_adapter(plain)
    apply_units(pad, 0, "heads", keep_heads)
    apply_units(pad, 0, "neurons", keep_neurons)
    assert rel_err(outputs(plain, calib), dense) > 1e-2


def _unit_bound(ad, m: int) -> float:
    """The largest FLOPs one allocation step can overshoot by: a head unit or m neurons."""
    out = 0.0
    for i in range(ad.num_layers):
        c, s = unit_costs(ad, i, SEQ), ad.layer_shape(i)
        out = max(out, c.group(s.group_size), m * c.neuron)
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.6])
def test_flops_target_met_within_one_unit(family, structure, sparsity):
    model = tiny_model(family)
    ad = get_adapter(model)
    dense, bound = prunable_flops(ad, SEQ), _unit_bound(ad, 8)
    calib = random_calibration()
    res = prune(
        model, calib, Target(sparsity, SEQ), method="flap", options=_opts(family, structure=structure)
    )
    removed = dense - res.flops_pruned
    assert sparsity * dense <= removed < sparsity * dense + bound
    for s, s0 in zip(res.shapes_pruned, res.shapes_dense):
        assert s.intermediate % 8 == 0 or s.intermediate == s0.intermediate
        assert s.num_heads >= 1 and s.num_heads == s.num_kv_heads * s0.group_size  # whole KV groups
    if structure.startswith("UL"):
        heads = {s.num_kv_heads for s in res.shapes_pruned}
        ffn = [s.intermediate for s in res.shapes_pruned]
        assert len(heads) == 1 and max(ffn) - min(ffn) <= 8  # uniform per layer
    assert torch.isfinite(outputs(model, calib)).all()


def test_remove_heads_counts_head_units():
    model = tiny_model("llama", layers=3)
    res = prune(
        model,
        random_calibration(),
        Target(0.3, SEQ),
        method="flap",
        options={**QUIET, "structure": "AL-MM", "remove_heads": 5},
    )
    assert sum(s.num_heads for s in res.shapes_dense) - sum(s.num_heads for s in res.shapes_pruned) == 5
    res = prune(
        tiny_model("llama", layers=3),
        random_calibration(),
        Target(0.3, SEQ),
        method="flap",
        options={**QUIET, "structure": "UL-MM", "remove_heads": 6},
    )
    assert [s.num_heads for s in res.shapes_pruned] == [2, 2, 2]


@pytest.mark.parametrize("family", FAMILIES)
def test_save_reload_gives_the_same_outputs(family, tmp_path):
    model = tiny_model(family)
    calib = random_calibration()
    prune(model, calib, Target(0.3, SEQ), method="flap", options=_opts(family))
    out = outputs(model, calib)
    ad = get_adapter(model)
    if family not in NO_BIAS_SWITCH:
        assert ad.out_proj(0).bias is not None and ad.down_proj(0).bias is not None
    save_pruned(model, None, tmp_path / "flap")
    loaded, _ = load_pruned(tmp_path / "flap")
    assert get_adapter(loaded).shapes() == ad.shapes()
    assert rel_err(outputs(loaded, calib), out) == 0.0
    if family.startswith("llama"):
        assert loaded.config.attention_bias and loaded.config.mlp_bias


def test_llama_biases_switch_on_without_changing_outputs():
    model = tiny_model("llama-gqa")
    calib = random_calibration()
    dense = outputs(model, calib)
    ad = get_adapter(model)
    ad.enable_biases("attention")
    ad.enable_biases("ffn")
    assert all(lin.bias is not None for i in range(ad.num_layers) for lin in ad.prunable_linears(i))
    assert rel_err(outputs(model, calib), dense) == 0.0


def test_bias_compensation_refused_where_the_stock_module_cannot_hold_it():
    from transformers import MistralConfig, MistralForCausalLM

    from statprune.errors import StatpruneError

    cfg = MistralConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = MistralForCausalLM(cfg).eval()
    with pytest.raises(StatpruneError, match="no config switch"):
        prune(model, random_calibration(), Target(0.3, SEQ), method="flap", options=QUIET)
    res = prune(
        model, random_calibration(), Target(0.3, SEQ), method="flap", options={**QUIET, "bias": False}
    )
    assert res.sparsity_achieved >= 0.3


def test_spread_order_is_a_permutation_with_even_prefixes():
    for n in (1, 2, 5, 30):
        order = spread_order(n)
        assert sorted(order) == list(range(n))
    assert spread_order(8)[:4] == [0, 4, 2, 6]


# --- peer check: the released algorithm's definition, written independently -------------------


def _official_flap(model, calib, sparsity: float):
    """FLAP (WIFV, AL-AM) from its definition: hook the dense model's o/down inputs, variance × squared
    column norm (attention squared), standardise per layer and type, heads = mean over head channels,
    remove the lowest globally until the FLOPs target, fold removed means into the biases."""
    ad = get_adapter(model)
    L, hd = ad.num_layers, ad.head_dim
    cons = [m for i in range(L) for m in (ad.out_proj(i), ad.down_proj(i))]
    seen: dict[int, list[torch.Tensor]] = {id(m): [] for m in cons}
    current = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, a: seen[id(mod)].append(a[0][current["mask"]].double()))
        for m in cons
    ]
    with torch.no_grad():
        for b in calib.batches:
            current["mask"] = b["attention_mask"].bool()
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    for hk in hooks:
        hk.remove()
    d = ad.hidden_size
    entries = []  # (score, layer, kind, unit, flops)
    means, scores = {}, {}
    for i in range(L):
        for kind, mod in (("heads", ad.out_proj(i)), ("neurons", ad.down_proj(i))):
            X = torch.cat(seen[id(mod)])
            means[(i, kind)] = X.mean(0)
            wifv = X.var(0, unbiased=False) * mod.weight.detach().double().pow(2).sum(0)
            if kind == "heads":
                wifv = wifv**2
            z = (wifv - wifv.mean()) / wifv.std()
            if kind == "heads":
                z = z.reshape(-1, hd).mean(1)
            scores[(i, kind)] = z
            if kind == "heads":
                flops = SEQ * hd * 4 * d + 2 * SEQ * SEQ * hd  # q, k, v rows + o columns + attention
            else:
                flops = SEQ * d * (len(ad.ffn_in(i)) + 1)
            entries += [(float(z[u]), i, kind, u, flops) for u in range(len(z))]
    target = sparsity * prunable_flops(ad, SEQ)
    removed, total = set(), 0.0
    for _score, i, kind, u, flops in sorted(entries, key=lambda e: e[0]):
        if total >= target:
            break
        removed.add((i, kind, u))
        total += flops
    return removed, means, scores


def _kept_columns(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    d = torch.cdist(after.T.double(), before.T.double())
    return sorted(int(j) for j in d.argmin(1))


@pytest.mark.parametrize("family", ["llama", "bert"])
@pytest.mark.parametrize("sparsity", [0.2, 0.5])
def test_peer_check_against_the_released_definition(family, sparsity):
    model = tiny_model(family, layers=3)
    calib = random_calibration()
    ad = get_adapter(model)
    hd = ad.head_dim
    removed, means, scores = _official_flap(model, calib, sparsity)
    walk = LayerWalk(ad, calib)
    for i in range(ad.num_layers):  # the standardised scores themselves
        h, n, outs = collect_stats(walk, ad, i)
        ours = layer_scores(ad, i, h, n, "WIFV")
        for kind in ("heads", "neurons"):
            assert torch.allclose(ours[kind], scores[(i, kind)], atol=1e-8)
        walk.advance(outs)
    before = {
        (i, kind): (mod.weight.detach().clone(), None if mod.bias is None else mod.bias.detach().clone())
        for i in range(ad.num_layers)
        for kind, mod in (("heads", ad.out_proj(i)), ("neurons", ad.down_proj(i)))
    }
    prune(model, calib, Target(sparsity, SEQ), method="flap", options={**QUIET, "neuron_multiple": 1})
    for (i, kind), (w, b) in before.items():
        mod = ad.out_proj(i) if kind == "heads" else ad.down_proj(i)
        kept_cols = _kept_columns(w, mod.weight.detach())
        width = hd if kind == "heads" else 1
        gone = sorted(u for (li, k, u) in removed if li == i and k == kind)
        assert sorted(set(range(w.shape[1] // width)) - {c // width for c in kept_cols}) == gone
        cols = torch.tensor([c for u in gone for c in range(u * width, (u + 1) * width)], dtype=torch.long)
        expected = (torch.zeros(w.shape[0], dtype=torch.float64) if b is None else b.double()) + (
            w.double()[:, cols] @ means[(i, kind)][cols] if len(cols) else 0.0
        )
        assert torch.allclose(mod.bias.double(), expected, atol=1e-5)
    assert len(removed) > 2
