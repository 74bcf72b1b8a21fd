"""Structured magnitude pruning: FLOPs target, exact top-norm selection, option semantics."""

import pytest
import torch

from statprune.adapters import get_adapter
from statprune.flops import prunable_flops, unit_costs
from statprune.pruner import Target, prune
from tests.unit.tiny import FAMILIES, outputs, random_calibration, tiny_model

SEQ = 20


def _largest_unit(ad) -> float:
    s = ad.layer_shape(0)
    costs = [unit_costs(ad, i, SEQ) for i in range(ad.num_layers)]
    return max(max(c.group(s.group_size), s.num_kv_heads * c.q_head, c.neuron) for c in costs)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("gqa", ["group", "uniform"])
@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.6])
def test_flops_target_met_within_one_unit(family, gqa, sparsity):
    model = tiny_model(family)
    ad = get_adapter(model)
    dense, unit = prunable_flops(ad, SEQ), _largest_unit(ad)
    calib = random_calibration()
    res = prune(model, calib, Target(sparsity, SEQ), method="magnitude", options={"gqa": gqa})
    removed = dense - res.flops_pruned
    assert sparsity * dense <= removed < sparsity * dense + unit
    assert res.flops_pruned == prunable_flops(ad, SEQ)
    outputs(model, calib)  # the smaller model still runs through the stock modules


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
def test_keeps_exactly_the_top_norm_neurons(family, score):
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
    prune(model, random_calibration(), Target(0.3, SEQ), method="magnitude", options={"score": score})
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
    # one global ranking: every removed neuron scores below every kept one (normalised scores)
    assert removed_max and max(removed_max) <= min(kept_min)


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
    prune(model, random_calibration(), Target(0.4, SEQ), method="magnitude")
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
