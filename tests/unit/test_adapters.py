"""Adapter contract: hook points, shapes, structural operations, save/reload, and refusals."""

import pytest
import torch

from statprune.adapters import Adapter, get_adapter
from statprune.errors import StatpruneError
from statprune.models.checkpoint import load_pruned, save_pruned
from tests.unit.tiny import FAMILIES, GATED, GQA, outputs, random_calibration, rel_err, tiny_model

ENCODERS = ("bert", "distilbert")
TIED = ("llama", "llama-gqa", "opt", "gpt2", "qwen3", "gemma2", "gemma3")


@pytest.mark.parametrize("family", FAMILIES)
def test_hook_points_and_shapes(family):
    model = tiny_model(family)
    ad = get_adapter(model)
    assert ad.num_layers == 2
    assert ad.causal == (family not in ENCODERS)
    s = ad.layer_shape(0)
    assert s.num_heads == 4 and s.head_dim == 16
    assert s.num_kv_heads == GQA.get(family, 4)
    assert ad.out_proj(0).in_features == s.num_heads * s.head_dim
    assert ad.down_proj(0).in_features == s.intermediate
    assert all(lin.out_features == s.intermediate for lin in ad.ffn_in(0))
    assert len(ad.ffn_in(0)) == (2 if family in GATED else 1)
    assert all(type(lin) is torch.nn.Linear for lin in ad.prunable_linears(1))
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
    assert seen["heads"][:-1] == seen["neurons"][:-1] == (4, 20)  # (batch, tokens): OPT's flat FFN too


def _half_heads(family: str) -> torch.Tensor:
    return torch.tensor([0, 1]) if family in GQA else torch.tensor([1, 3])  # GQA: one whole KV group


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_everything_is_identity_and_keep_subset_runs(family):
    model = tiny_model(family)
    ref = outputs(model, random_calibration(n=4))
    ad = get_adapter(model)  # fused/Conv1D families are re-expressed as Linears here: same outputs
    calib = random_calibration(n=4)
    assert rel_err(outputs(model, calib), ref) < 1e-6
    ad.keep_heads(0, torch.arange(4))
    ad.keep_neurons(1, torch.arange(ad.layer_shape(1).intermediate))
    assert rel_err(outputs(model, calib), ref) < 1e-6
    ad.keep_heads(0, _half_heads(family))
    ad.keep_neurons(1, torch.tensor([0, 5, 7]))
    s0, s1 = ad.layer_shape(0), ad.layer_shape(1)
    assert (s0.num_heads, s0.num_kv_heads) == (2, 1 if family in GQA else 2)
    assert s1.intermediate == 3
    out = outputs(model, calib)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert rel_err(out, ref) > 1e-3  # pruning changed something


@pytest.mark.parametrize("family", FAMILIES)
def test_removing_units_equals_zeroing_their_outputs(family):
    """Physically removing heads/neurons = zeroing their columns of the consumer (fused slices, Conv1D
    transposes, cached head counts and per-layer configs must all be right for this to hold)."""
    model = tiny_model(family)
    ad = get_adapter(model)
    heads, neurons = _half_heads(family), torch.tensor([0, 5, 7, 30, 31])
    calib = random_calibration(n=4)
    with torch.no_grad():
        o, d = ad.out_proj(0).weight, ad.down_proj(1).weight
        drop_h = torch.ones(o.shape[1], dtype=torch.bool)
        drop_h[(heads[:, None] * 16 + torch.arange(16)).reshape(-1)] = False
        drop_n = torch.ones(d.shape[1], dtype=torch.bool)
        drop_n[neurons] = False
        o[:, drop_h] = 0.0
        d[:, drop_n] = 0.0
    ref = outputs(model, calib)
    ad.keep_heads(0, heads)
    ad.keep_neurons(1, neurons)
    assert rel_err(outputs(model, calib), ref) < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_save_reload_same_outputs(family, tmp_path):
    model = tiny_model(family)
    ad = get_adapter(model)
    ad.keep_heads(0, _half_heads(family))
    ad.keep_heads(1, torch.tensor([2, 3]))
    ad.keep_neurons(0, torch.tensor([1, 2, 3, 40, 41]))
    ad.keep_neurons(1, torch.arange(0, 90, 3))
    calib = random_calibration(n=4)
    ref = outputs(model, calib)
    save_pruned(model, None, tmp_path / "m")
    loaded, _ = load_pruned(tmp_path / "m")
    assert [s.to_dict() for s in get_adapter(loaded).shapes()] == [s.to_dict() for s in ad.shapes()]
    assert rel_err(outputs(loaded, calib), ref) < 1e-6
    if family in TIED:
        assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight


@pytest.mark.parametrize("family", ["gpt2", "phi3"])
def test_fused_families_keep_stock_checkpoint_layout(family, tmp_path):
    """After the adapter splits fused/Conv1D weights, a dense save still loads in stock transformers."""
    import transformers

    model = tiny_model(family)
    stock_keys = {k: v.shape for k, v in model.state_dict().items()}
    get_adapter(model)
    assert {k: v.shape for k, v in model.state_dict().items()} == stock_keys
    model.save_pretrained(tmp_path / "dense")
    reloaded = getattr(transformers, type(model).__name__).from_pretrained(tmp_path / "dense").eval()
    calib = random_calibration(n=4)
    assert rel_err(outputs(reloaded, calib), outputs(model, calib)) < 1e-6


def test_gqa_rejects_non_uniform_groups():
    ad = get_adapter(tiny_model("llama-gqa"))
    with pytest.raises(ValueError, match="uniform"):
        ad.keep_heads(0, torch.tensor([0, 1, 2]))


def test_unknown_model_type_one_line_lists_supported():
    class Cfg:
        model_type = "roberta"

    class M(torch.nn.Module):
        config = Cfg()

    with pytest.raises(StatpruneError) as e:
        get_adapter(M())
    msg = str(e.value)
    assert "\n" not in msg and "'roberta'" in msg and "Adding a model family" in msg
    for mt in ("bert", "gpt2", "llama", "opt", "phi3", "qwen3", "gemma2", "gemma3_text"):
        assert mt in msg


def test_declared_capabilities_are_enforced():
    assert get_adapter(tiny_model("llama")).prunable == {"heads", "neurons", "hidden"}
    assert get_adapter(tiny_model("gemma2")).prunable == {"heads", "neurons"}
    model = tiny_model("bert")
    ad = get_adapter(model)
    ad.require("heads", "neurons")
    with pytest.raises(
        StatpruneError,
        match=r"slicegpt: cannot remove hidden from model type 'bert'; .*declares prunable: heads, neurons",
    ):
        ad.require("hidden", method="slicegpt")
    ad.prunable = frozenset({"neurons"})  # e.g. a relative-position bias shared across layers
    ad.keep_heads(0, torch.arange(4))  # keeping every head is allowed
    with pytest.raises(StatpruneError, match="layer 0: cannot remove heads from model type"):
        ad.keep_heads(0, torch.tensor([0, 1]))
    assert ad.layer_shape(0).num_heads == 4
    ad.keep_neurons(0, torch.arange(10))
    assert ad.layer_shape(0).intermediate == 10
    with pytest.raises(ValueError, match="unknown capabilities"):
        ad.require("layers")
    assert issubclass(type(ad), Adapter)
