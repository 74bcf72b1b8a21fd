"""Structured magnitude pruning: FLOPs target, uniform and global rules, exact top-norm selection."""

import pytest
import torch

from statprune.adapters import get_adapter
from statprune.allocation import BlockCurve, uniform_allocation
from statprune.errors import StatpruneError
from statprune.pruner import Target, prune
from tests.unit.analytic import largest_unit, model_macs
from tests.unit.tiny import FAMILIES, outputs, random_calibration, tiny_model

SEQ = 20
D = 64  # hidden size of every tiny model


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("allocation", ["uniform", "global"])
@pytest.mark.parametrize("gqa", ["group", "uniform"])
@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.6])
def test_flops_target_met_within_one_unit(family, allocation, gqa, sparsity):
    """Achieved FLOPs from the recorded shapes by the closed form: target met within one unit."""
    model = tiny_model(family)
    calib = random_calibration()
    opts = {"gqa": gqa, "allocation": allocation}
    res = prune(model, calib, Target(sparsity, SEQ), method="magnitude", options=opts)
    dense = model_macs(res.shapes_dense, D, SEQ, family)
    pruned = model_macs(res.shapes_pruned, D, SEQ, family)
    assert res.flops_dense == pytest.approx(dense, rel=1e-12)
    assert res.flops_pruned == pytest.approx(pruned, rel=1e-12)
    unit = largest_unit(res.shapes_dense[0], D, SEQ, family, neuron_multiple=8)
    assert sparsity * dense <= dense - pruned < sparsity * dense + unit
    for before, after in zip(res.shapes_dense, res.shapes_pruned):  # widths in multiples of 8
        assert after.intermediate in (before.intermediate, *range(8)) or after.intermediate % 8 == 0
    outputs(model, calib)  # the smaller model still runs through the stock modules


@pytest.mark.parametrize("family", ["bert", "llama-gqa"])
@pytest.mark.parametrize("sparsity", [0.25, 0.5])
def test_uniform_rule_takes_the_same_fraction_from_every_block(family, sparsity):
    """neuron_multiple=1: each layer's KV groups and neurons lose the floor or ceiling of s × count."""
    model = tiny_model(family, layers=4)
    res = prune(
        model, random_calibration(), Target(sparsity, SEQ), method="magnitude", options={"neuron_multiple": 1}
    )
    for before, after in zip(res.shapes_dense, res.shapes_pruned):
        for n, k in ((before.num_kv_heads, after.num_kv_heads), (before.intermediate, after.intermediate)):
            assert int(sparsity * n) <= n - k <= int(sparsity * n) + 1, (before, after)


def test_head_share_zero_prunes_only_neurons():
    model = tiny_model("llama", layers=3)
    res = prune(
        model, random_calibration(), Target(0.3, SEQ), method="magnitude", options={"head_share": 0.0}
    )
    assert [s.num_heads for s in res.shapes_pruned] == [s.num_heads for s in res.shapes_dense]
    assert res.sparsity_achieved >= 0.3
    with pytest.raises(StatpruneError, match="head_share"):
        prune(model, random_calibration(), Target(0.3, SEQ), method="magnitude", options={"head_share": 1.5})
    with pytest.raises(StatpruneError, match="neuron_multiple"):
        prune(
            model, random_calibration(), Target(0.3, SEQ), method="magnitude", options={"neuron_multiple": 0}
        )


def _set_neuron_norms(ad, i: int, a: torch.Tensor, b: torch.Tensor, gen: torch.Generator) -> None:
    """Neuron j: producer row(s) of norm a[j] (SwiGLU: each of gate/up has norm √a[j]), W2 column of norm b[j]."""
    producers = ad.ffn_in(i)
    with torch.no_grad():
        for lin in producers:
            rows = torch.randn(lin.weight.shape, generator=gen)
            rows = rows / rows.norm(dim=1, keepdim=True) * a[:, None] ** (1.0 / len(producers))
            lin.weight.copy_(rows)
        cols = torch.randn(ad.down_proj(i).weight.shape, generator=gen)
        ad.down_proj(i).weight.copy_(cols / cols.norm(dim=0, keepdim=True) * b[None, :])


def _kept_rows(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    """Indices of ``before`` rows that survive in ``after`` (rows are distinct random vectors)."""
    d = torch.cdist(after.double(), before.double())
    return sorted(int(j) for j in d.argmin(1))


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("score", ["product", "in", "out"])
@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_keeps_exactly_the_top_norm_neurons(family, score, allocation):
    model = tiny_model(family)
    ad = get_adapter(model)
    gen = torch.Generator().manual_seed(1)
    scores = []
    for i in range(ad.num_layers):
        n = ad.layer_shape(i).intermediate
        a = torch.rand(n, generator=gen) + 0.5
        b = torch.rand(n, generator=gen) + 0.5
        _set_neuron_norms(ad, i, a, b, gen)
        scores.append({"product": a * b, "in": a, "out": b}[score])
    before = [ad.ffn_in(i)[0].weight.detach().clone() for i in range(ad.num_layers)]
    opts = {"score": score, "allocation": allocation, "neuron_multiple": 1}
    prune(model, random_calibration(), Target(0.3, SEQ), method="magnitude", options=opts)
    mean = torch.cat(scores).mean()
    kept_min, removed_max = [], []
    for i in range(ad.num_layers):
        kept = _kept_rows(before[i], ad.ffn_in(i)[0].weight.detach())
        k = len(kept)
        top = torch.argsort(scores[i], descending=True)[:k].sort().values.tolist()
        assert kept == top, f"layer {i}: kept neurons are not the top-{k} by {score} norm"
        if k < len(scores[i]):
            rest = torch.ones(len(scores[i]), dtype=torch.bool)
            rest[kept] = False
            kept_min.append(float(scores[i][kept].min() / mean))
            removed_max.append(float(scores[i][rest].max() / mean))
    assert removed_max
    if allocation == "global":  # one ranking: every removed neuron scores below every kept one
        assert max(removed_max) <= min(kept_min)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_keeps_the_top_norm_heads(norm):
    """Heads scaled by distinct factors: the kept heads are the largest ‖QKV‖·‖O‖ ones."""
    model = tiny_model("bert", layers=1)
    ad = get_adapter(model)
    hd, H = ad.head_dim, ad.layer_shape(0).num_heads
    factors = torch.tensor([1.0, 3.0, 0.5, 2.0])
    with torch.no_grad():
        for lin in ad.qkv(0):
            lin.weight.view(H, hd, -1).mul_(factors[:, None, None])
        ad.out_proj(0).weight.view(-1, H, hd).mul_(factors[None, :, None])
    q_before = ad.qkv(0)[0].weight.detach().clone()

    def mass(w: torch.Tensor) -> torch.Tensor:
        return w.pow(2).sum().sqrt() if norm == "l2" else w.abs().sum()

    expected = []
    for h in range(H):
        rows = torch.cat([lin.weight[h * hd : (h + 1) * hd] for lin in ad.qkv(0)])
        o = ad.out_proj(0).weight[:, h * hd : (h + 1) * hd]
        expected.append(float(mass(rows.detach()) * mass(o.detach())))
    prune(model, random_calibration(), Target(0.45, SEQ), method="magnitude", options={"norm": norm})
    kept_heads = ad.layer_shape(0).num_heads
    assert 1 <= kept_heads < H
    kept_rows = _kept_rows(q_before, ad.qkv(0)[0].weight.detach())
    kept = sorted({r // hd for r in kept_rows})
    top = sorted(torch.argsort(torch.tensor(expected), descending=True)[:kept_heads].tolist())
    assert kept == top == sorted([1, 3, 0][:kept_heads])


def test_gqa_group_units_remove_whole_kv_groups():
    model = tiny_model("llama-gqa", layers=1)
    ad = get_adapter(model)
    hd = ad.head_dim
    with torch.no_grad():  # make group 0 (query heads 0, 1; KV head 0) tiny
        ad.qkv(0)[0].weight[: 2 * hd] *= 1e-3
        ad.qkv(0)[1].weight[:hd] *= 1e-3
        ad.qkv(0)[2].weight[:hd] *= 1e-3
        ad.out_proj(0).weight[:, : 2 * hd] *= 1e-3
    v_before = ad.qkv(0)[2].weight.detach().clone()
    prune(model, random_calibration(), Target(0.5, SEQ), method="magnitude")  # 0.5 × 2 = 1 group
    s = ad.layer_shape(0)
    assert (s.num_heads, s.num_kv_heads) == (2, 1)
    assert torch.equal(ad.qkv(0)[2].weight, v_before[hd:])


def test_unknown_option_is_a_user_error():
    from statprune.errors import StatpruneError

    with pytest.raises(StatpruneError, match="score"):
        prune(
            tiny_model("bert"),
            random_calibration(),
            Target(0.3, SEQ),
            method="magnitude",
            options={"score": "sum"},
        )


def _curves(spec):
    """(layer, kind, n_units, unit_flops, error per removed unit) → BlockCurve with a linear error."""
    return [
        BlockCurve(layer, kind, a * (n - torch.arange(n + 1, dtype=torch.float64)), f)
        for layer, kind, n, f, a in spec
    ]


def test_uniform_allocation_worked_by_hand():
    flat = [
        (0, "heads", 4, 10.0, 0.0),
        (0, "neurons", 10, 2.0, 0.0),
        (1, "heads", 4, 10.0, 0.0),
        (1, "neurons", 10, 2.0, 0.0),
    ]
    # 25% of 120: each block loses 25% → heads 1 unit, neurons 2.5 units; floors remove 28, a neuron
    # block (the only fractional ones; equal errors → block order) rounds up
    expected = {(0, "heads"): 3, (0, "neurons"): 7, (1, "heads"): 3, (1, "neurons"): 8}
    assert uniform_allocation(_curves(flat), 30.0) == expected
    # a block at its floor (one head) passes its deficit on: 60% of 40 → heads 12 > cap 10, neurons 14
    capped = _curves([(0, "heads", 2, 10.0, 0.0), (0, "neurons", 10, 2.0, 0.0)])
    assert uniform_allocation(capped, 24.0) == {(0, "heads"): 1, (0, "neurons"): 3}
    # head_share 1 of 40: 20 per heads block = 2 heads each, no neurons
    expected = {(0, "heads"): 2, (0, "neurons"): 10, (1, "heads"): 2, (1, "neurons"): 10}
    assert uniform_allocation(_curves(flat), 40.0, head_share=1.0) == expected
    # head_share 0.5 of 30: 7.5 per block → 0.75 head and 3.75 neurons each, floors remove 12; blocks
    # round up by error per FLOP: layer 1's heads (0.1), the neurons (0.5 each), then layer 0's heads (5)
    costly = [
        (0, "heads", 4, 10.0, 50.0),
        (0, "neurons", 10, 2.0, 1.0),
        (1, "heads", 4, 10.0, 1.0),
        (1, "neurons", 10, 2.0, 1.0),
    ]
    expected = {(0, "heads"): 3, (0, "neurons"): 6, (1, "heads"): 3, (1, "neurons"): 6}
    assert uniform_allocation(_curves(costly), 30.0, head_share=0.5) == expected
    assert uniform_allocation(_curves(flat), 0.0) == {
        (0, "heads"): 4,
        (0, "neurons"): 10,
        (1, "heads"): 4,
        (1, "neurons"): 10,
    }
