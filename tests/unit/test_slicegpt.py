"""SliceGPT: fusion and rotation preserve outputs, FLOPs target within one 8-wide slice, checkpoints."""

import copy
import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from statprune.adapters import get_adapter
from statprune.baselines.slicegpt.fuse import fuse_norms, untie_head
from statprune.baselines.slicegpt.method import WIDTH, sliced_flops
from statprune.baselines.slicegpt.rotate import pca_basis, rotate_and_slice_padded, slice_model
from statprune.calibration import Gram
from statprune.errors import StatpruneError
from statprune.models.checkpoint import load_pruned, save_pruned
from statprune.pruner import Target, prune
from tests.unit.tiny import outputs, random_calibration, rel_err, tiny_model

SEQ = 20
DECODERS = ("llama", "llama-gqa")
QUIET = {"progress": False}


def _decoder(family: str) -> torch.nn.Module:
    """A tiny tied-embedding Llama with non-trivial norm scales (so fusion has something to fold)."""
    model = tiny_model(family)
    ad = get_adapter(model)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        norms = [ad.final_norm()] + [
            f(i) for i in range(ad.num_layers) for f in (ad.input_norm, ad.post_attention_norm)
        ]
        for norm in norms:
            norm.weight.copy_(0.5 + torch.rand(norm.weight.shape, generator=gen))
    return model


@pytest.mark.parametrize("family", DECODERS)
def test_fusion_preserves_outputs(family):
    model = _decoder(family)
    calib = random_calibration()
    ref = outputs(model, calib)
    ad = get_adapter(model)
    assert untie_head(ad)
    fuse_norms(ad)
    assert ad.lm_head().weight is not ad.embeddings().weight
    assert all(bool((ad.input_norm(i).weight == 1).all()) for i in range(ad.num_layers))
    assert rel_err(outputs(model, calib), ref) <= 1e-6


@pytest.mark.parametrize("family", DECODERS)
def test_rotation_without_slicing_reproduces_dense_outputs(family):
    model = _decoder(family)
    calib = random_calibration(n=24)
    ref = outputs(model, calib)
    res = prune(model, calib, Target(0.0, SEQ), method="slicegpt", options={**QUIET, "slicing": 0.0})
    assert res.diagnostics["hidden_size"] == get_adapter(model).hidden_size == 64
    assert rel_err(outputs(model, calib), ref) <= 1e-4
    # the shortcuts are real d × d matrices, counted by the FLOPs model
    assert res.flops_pruned == pytest.approx(
        res.flops_dense + get_adapter(model).num_layers * 2 * SEQ * 64 * 64
    )


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5])
@pytest.mark.parametrize("slice_head", [False, True])
def test_flops_target_met_within_one_slice(family, sparsity, slice_head):
    model = _decoder(family)
    calib = random_calibration()
    ad0 = get_adapter(copy.deepcopy(model))
    opts = {**QUIET, "slice_head": slice_head}
    res = prune(model, calib, Target(sparsity, SEQ), method="slicegpt", options=opts)
    ad = get_adapter(model)
    k, d, L = ad.hidden_size, 64, ad.num_layers
    keep = (1 - sparsity) * res.flops_dense
    assert k % WIDTH == 0 and k == res.diagnostics["hidden_size"]
    # the shapes that were built, counted from scratch: per layer q,k,v,o, gate/up/down, shortcuts
    hd = ad.head_dim
    s = ad.layer_shape(0)
    att = (
        SEQ * k * hd * (2 * s.num_heads + 2 * s.num_kv_heads) + SEQ * (SEQ + 1) * s.num_heads * hd
    )  # causal attention core
    by_hand = L * (att + 3 * SEQ * k * 96 + 2 * SEQ * k * k)
    if not slice_head:  # the last down projection and FFN shortcut write all d coordinates
        by_hand += SEQ * (d - k) * (96 + k)
    assert ad.lm_head().in_features == (k if slice_head else d)
    assert res.flops_pruned == pytest.approx(by_hand)
    assert res.flops_pruned == pytest.approx(sliced_flops(ad0, k, SEQ, slice_head=slice_head))
    nxt = sliced_flops(ad0, k + WIDTH, SEQ, slice_head=slice_head)
    assert res.flops_pruned <= keep < nxt  # within one 8-wide slice
    out = outputs(model, calib)
    assert torch.isfinite(out).all() and out.shape[-1] == 97


@pytest.mark.parametrize("slice_head", [False, True])
def test_sliced_model_equals_the_zero_padded_rotated_model(slice_head):
    """Rotated at full width with the discarded directions zeroed, then physically sliced: same logits."""
    model = _decoder("llama-gqa")
    calib = random_calibration(n=24)
    ad = get_adapter(model)
    for norm in [ad.final_norm(), *(f(i) for i in range(2) for f in (ad.input_norm, ad.post_attention_norm))]:
        norm.variance_epsilon = (
            1e-12  # slicing turns ε into ε·k/d: negligible, but not on tiny random weights
        )
    untie_head(ad)
    fuse_norms(ad)
    k, d, L = 40, 64, ad.num_layers
    rotate_and_slice_padded(ad, calib, k, damping=0.01, progress=False, slice_head=slice_head)
    tails = []
    hooks = [
        ad.layers()[i].register_forward_hook(lambda _m, _a, out, i=i: tails.append((i, out[..., k:])))
        for i in range(L)
    ]
    padded = outputs(model, calib)
    for h in hooks:
        h.remove()
    for i, tail in tails:  # every residual coordinate ≥ k is exactly zero, except a full-width head's
        assert (bool((tail == 0).all()) is True) == (slice_head or i < L - 1)
    slice_model(ad, k, slice_head=slice_head)
    assert ad.hidden_size == k and ad.embeddings().weight.shape[1] == k
    assert ad.final_norm().weight.numel() == (k if slice_head else d)
    assert rel_err(outputs(model, calib), padded) <= 1e-5  # only the norm ε changes (ε·k/d)


def test_pca_basis_matches_the_official_definition():
    """Official pca_calc: H = Σ XᵀX over unmasked rows, H += 0.01·mean(diag H)·I, eigh, descending."""
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(3, 7, 5, generator=gen, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.2, 2.0, 0.5])
    mask = torch.rand(3, 7, generator=gen) > 0.3
    Xn = X.numpy().copy()
    Xn[~mask.numpy()] = 0.0
    H = sum(x.T @ x for x in Xn)
    H[np.diag_indices(5)] += 0.01 * np.mean(np.diag(H))
    w, V = np.linalg.eigh(H)
    order = np.argsort(w)[::-1]
    w, V = w[order], V[:, order]
    g = Gram(5, torch.device("cpu"))
    g(X, mask)
    Q, ev = pca_basis(g.G, 0.01)
    assert np.allclose(ev.numpy(), w, rtol=1e-12)
    assert np.allclose(np.abs(np.sum(Q.numpy() * V, axis=0)), 1.0, atol=1e-10)  # same columns up to sign


def _odd_heads_llama() -> torch.nn.Module:
    """Hidden 48 with 3 heads: any sliced width that is a multiple of 8 but not of 3 (40, 32…)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=3,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("slice_head", [False, True])
def test_checkpoint_of_any_width_saves_and_reloads(tmp_path, slice_head):
    model = _odd_heads_llama()
    calib = random_calibration()
    opts = {**QUIET, "slicing": 0.1, "slice_head": slice_head}
    prune(model, calib, Target(0.0, SEQ), method="slicegpt", options=opts)
    assert get_adapter(model).hidden_size == 40 and 40 % 3 != 0
    out = outputs(model, calib)
    save_pruned(model, None, tmp_path / "sliced")
    cfg = json.loads((tmp_path / "sliced" / "config.json").read_text())
    assert (
        cfg["hidden_size"] == 48 and cfg["head_dim"] == 16 and cfg["statprune_slicegpt"]["hidden_size"] == 40
    )
    assert model.config.hidden_size == 40  # the in-memory config is back after saving
    loaded, _ = load_pruned(tmp_path / "sliced")
    assert get_adapter(loaded).hidden_size == 40
    assert rel_err(outputs(loaded, calib), out) == 0.0
    save_pruned(loaded, None, tmp_path / "again")  # a reloaded model saves again
    assert rel_err(outputs(load_pruned(tmp_path / "again")[0], calib), out) == 0.0


def test_a_config_that_cannot_be_saved_fails_before_any_work():
    model = _odd_heads_llama()
    model.config.statprune_stored_config = {"hidden_size": 50}  # 50 is not a multiple of 3 heads
    gamma = get_adapter(model).input_norm(0).weight.detach().clone()
    with pytest.raises(StatpruneError, match="could not be saved"):
        prune(model, random_calibration(), Target(0.3, SEQ), method="slicegpt", options=QUIET)
    assert torch.equal(get_adapter(model).input_norm(0).weight, gamma)  # nothing was fused or rotated
    assert get_adapter(model).hidden_size == 48


def test_slicing_reduces_error_with_more_width():
    model = _decoder("llama-gqa")
    calib = random_calibration(n=24)
    ref = outputs(model, calib)
    errs = []
    for slicing in (0.5, 0.25, 0.0):
        m = copy.deepcopy(model)
        prune(m, calib, Target(0.0, SEQ), method="slicegpt", options={**QUIET, "slicing": slicing})
        errs.append(rel_err(outputs(m, calib), ref))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-4


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_post_layernorm_encoders_are_refused(family):
    with pytest.raises(StatpruneError, match="slicegpt is not applicable: post-LayerNorm architecture"):
        prune(tiny_model(family), random_calibration(), Target(0.3, SEQ), method="slicegpt", options=QUIET)


def test_checkpoint_round_trip_and_deepcopy(tmp_path):
    model = _decoder("llama-gqa")
    calib = random_calibration()
    prune(model, calib, Target(0.3, SEQ), method="slicegpt", options={**QUIET, "pca_dtype": "float32"})
    out = outputs(model, calib)
    assert rel_err(outputs(copy.deepcopy(model), calib), out) == 0.0  # hooks follow the copy
    save_pruned(model, None, tmp_path / "sliced")
    loaded, _ = load_pruned(tmp_path / "sliced")
    assert get_adapter(loaded).hidden_size == get_adapter(model).hidden_size
    assert rel_err(outputs(loaded, calib), out) == 0.0


def test_calibration_in_another_dtype_restores_the_model_dtype():
    model = _decoder("llama")
    res = prune(
        model,
        random_calibration(),
        Target(0.3, SEQ),
        method="slicegpt",
        options={**QUIET, "calib_dtype": "bfloat16"},
    )
    assert get_adapter(model).dtype == torch.float32
    assert res.sparsity_achieved >= 0.3
