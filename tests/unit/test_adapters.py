"""Adapter contract: hook points, shapes, structural operations, and the unsupported-type error."""

import pytest
import torch

from statprune.adapters import get_adapter
from statprune.errors import StatpruneError
from tests.unit.tiny import FAMILIES, outputs, random_calibration, rel_err, tiny_model


@pytest.mark.parametrize("family", FAMILIES)
def test_hook_points_and_shapes(family):
    model = tiny_model(family)
    ad = get_adapter(model)
    assert ad.num_layers == 2
    s = ad.layer_shape(0)
    assert s.num_heads == 4 and s.head_dim == 16
    assert s.num_kv_heads == (2 if family == "llama-gqa" else 4)
    assert ad.out_proj(0).in_features == s.num_heads * s.head_dim
    assert ad.down_proj(0).in_features == s.intermediate
    assert all(lin.out_features == s.intermediate for lin in ad.ffn_in(0))
    assert len(ad.ffn_in(0)) == (2 if family.startswith("llama") else 1)
    seen = {}
    calib = random_calibration(n=4)
    hooks = [
        ad.out_proj(1).register_forward_pre_hook(lambda m, a: seen.__setitem__("heads", a[0].shape)),
        ad.down_proj(1).register_forward_pre_hook(lambda m, a: seen.__setitem__("neurons", a[0].shape)),
    ]
    outputs(model, calib)
    for h in hooks:
        h.remove()
    assert seen["heads"][-1] == s.num_heads * s.head_dim and seen["neurons"][-1] == s.intermediate


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_everything_is_identity_and_keep_subset_runs(family):
    model = tiny_model(family)
    ad = get_adapter(model)
    calib = random_calibration(n=4)
    ref = outputs(model, calib)
    ad.keep_heads(0, torch.arange(4))
    ad.keep_neurons(1, torch.arange(ad.layer_shape(1).intermediate))
    assert rel_err(outputs(model, calib), ref) < 1e-6
    heads = torch.tensor([0, 1]) if family == "llama-gqa" else torch.tensor([1, 3])  # one whole KV group
    ad.keep_heads(0, heads)
    ad.keep_neurons(1, torch.tensor([0, 5, 7]))
    s0, s1 = ad.layer_shape(0), ad.layer_shape(1)
    assert (s0.num_heads, s0.num_kv_heads) == (2, 1 if family == "llama-gqa" else 2)
    assert s1.intermediate == 3
    out = outputs(model, calib)
    assert out.shape == ref.shape and torch.isfinite(out).all()


def test_gqa_rejects_non_uniform_groups():
    ad = get_adapter(tiny_model("llama-gqa"))
    with pytest.raises(ValueError, match="uniform"):
        ad.keep_heads(0, torch.tensor([0, 1, 2]))


def test_unknown_model_type_lists_supported():
    class Cfg:
        model_type = "gpt2"

    class M(torch.nn.Module):
        config = Cfg()

    with pytest.raises(StatpruneError) as e:
        get_adapter(M())
    assert "gpt2" in str(e.value) and "bert" in str(e.value) and "llama" in str(e.value)
