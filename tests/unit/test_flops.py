"""The FLOPs model against closed-form MAC counts of real shapes, and unit costs against layer deltas.

Expected numbers are written from the closed form (Kwon et al.'s ``mac.py`` for encoders; causal
attention counts only the lower triangle), never computed with ``statprune.flops``. Real shapes are
built on the ``meta`` device: no weights are allocated.
"""

import pytest
import torch
from transformers import AutoModel

from statprune.adapters import get_adapter
from statprune.flops import layer_flops, prunable_flops, unit_costs
from statprune.models.shapes import shape_config
from tests.unit.tiny import FAMILIES, tiny_model


def _meta_adapter(shape: str):
    with torch.device("meta"):
        model = AutoModel.from_config(shape_config(shape))
    return get_adapter(model)


def _encoder_macs(L, d, H, ff, s):
    """Per layer: Q, K, V, O (4·s·d²), FFN up/down (2·s·d·ff), scores + weighted sum 2·s²·d_h per head."""
    return L * (4 * s * d * d + 2 * s * d * ff + H * 2 * s * s * (d // H))


def _decoder_macs(L, d, H, kv, ff, s):
    """Per layer: Q, O (2·s·d²), K, V (2·s·d·kv·d_h), SwiGLU gate/up/down (3·s·d·ff), causal core s(s+1)·d_h per head."""
    dh = d // H
    return L * (2 * s * d * d + 2 * s * d * kv * dh + 3 * s * d * ff + H * s * (s + 1) * dh)


CASES = [
    # shape, closed form, the same number written out
    ("bert-base", _encoder_macs(12, 768, 12, 3072, 128), 11_173_625_856),
    ("llama-2-7b", _decoder_macs(32, 4096, 32, 32, 11008, 2048), 13_812_883_259_392),
    ("llama-3-8b", _decoder_macs(32, 4096, 32, 8, 14336, 2048), 14_843_675_410_432),
]


@pytest.mark.parametrize(("shape", "closed_form", "written"), CASES)
def test_prunable_flops_match_the_closed_form(shape, closed_form, written):
    assert closed_form == written
    ad = _meta_adapter(shape)
    seq = {"bert-base": 128}.get(shape, 2048)
    assert prunable_flops(ad, seq) == written


def test_causal_core_is_the_lower_triangle():
    """Llama-2-7B's attention core at s = 2048 is s(s+1)/s² ≈ 0.5 of the bidirectional count."""
    ad = _meta_adapter("llama-2-7b")
    s, d = 2048, 4096
    att, ffn = layer_flops(ad, 0, s)
    assert ad.causal and not _meta_adapter("bert-base").causal
    assert att == 4 * s * d * d + s * (s + 1) * d
    assert ffn == 3 * s * d * 11008


def _changes(ad, i, seq, prune_step) -> float:
    before = sum(layer_flops(ad, i, seq))
    prune_step()
    return before - sum(layer_flops(ad, i, seq))


@pytest.mark.parametrize("family", FAMILIES)
def test_unit_costs_are_the_layer_flops_of_one_unit(family):
    seq = 20
    ad = get_adapter(tiny_model(family, layers=1))
    shape = ad.layer_shape(0)
    costs = unit_costs(ad, 0, seq)
    H, g = shape.num_heads, shape.group_size
    # one neuron
    n = shape.intermediate
    assert _changes(ad, 0, seq, lambda: ad.keep_neurons(0, torch.arange(n - 1))) == costs.neuron
    # one KV group (its g query heads and its KV head); MHA: one head
    costs = unit_costs(ad, 0, seq)
    assert _changes(ad, 0, seq, lambda: ad.keep_heads(0, torch.arange(g, H))) == costs.group(g)
    if g > 1:  # GQA: one query head of every remaining group, KV heads stay
        model = tiny_model(family, layers=1)
        ad = get_adapter(model)
        costs = unit_costs(ad, 0, seq)
        keep = torch.tensor([h for h in range(H) if h % g])
        assert _changes(ad, 0, seq, lambda: ad.keep_heads(0, keep)) == shape.num_kv_heads * costs.q_head
