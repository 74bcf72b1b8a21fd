"""SliceGPT: fusion and rotation preserve outputs, FLOPs target within one 8-wide slice, checkpoints."""

import copy

import pytest
import torch

from statprune.adapters import get_adapter
from statprune.baselines.slicegpt.fuse import fuse_norms, untie_head
from statprune.baselines.slicegpt.method import WIDTH, sliced_flops
from statprune.errors import StatpruneError
from statprune.pruner import Target, prune
from tests.unit.analytic import model_macs
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
def test_flops_target_met_within_one_slice(family, sparsity):
    model = _decoder(family)
    calib = random_calibration()
    dense_model = copy.deepcopy(model)
    ad0 = get_adapter(dense_model)
    res = prune(model, calib, Target(sparsity, SEQ), method="slicegpt", options=QUIET)
    ad = get_adapter(model)
    k = ad.hidden_size
    keep = (1 - sparsity) * res.flops_dense
    assert k % WIDTH == 0 and k == res.diagnostics["hidden_size"]
    # closed form of the recorded shapes at hidden size k, plus two k × k shortcuts per layer
    analytic = model_macs(res.shapes_pruned, k, SEQ, family) + ad.num_layers * 2 * SEQ * k * k
    assert res.flops_pruned == pytest.approx(analytic, rel=1e-12)
    assert sliced_flops(ad0, k, SEQ) == pytest.approx(analytic, rel=1e-12)
    assert res.flops_pruned <= keep < sliced_flops(ad0, k + WIDTH, SEQ)  # within one 8-wide slice
    out = outputs(model, calib)
    assert torch.isfinite(out).all() and out.shape[-1] == 97


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
    from statprune.models.checkpoint import load_pruned, save_pruned

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
