"""Baselines (magnitude, kwon, slicegpt) next to STAT on the real packaged MiniLM-L6 and SmolLM2-135M.

Default-run tests use small calibration sets and check the contracts on real weights: FLOPs target,
a runnable smaller stock model, kwon's tuning lowering the reconstruction error against its
search/rearrange-only masks. The ``slow`` tests measure task quality at 30% (fine-tuned MiniLM
accuracy on movie-sentiment, SmolLM2 perplexity on SOTU); each test prints its numbers.
"""

import copy
import time

import pytest
import torch

from statprune.adapters import get_adapter
from statprune.data import get_task
from statprune.errors import StatpruneError
from statprune.flops import prunable_flops, unit_costs
from statprune.pipeline import calibration_for
from statprune.pruner import Target, prune

pytestmark = pytest.mark.integration

SPARSITY = 0.3
QUIET = {"progress": False}


def _output_error(model, ref_model, batches) -> float:
    """Relative error at real tokens: LM logits for decoders (SliceGPT changes the hidden basis),
    the last hidden states for encoders (their fresh classification head carries no information)."""
    num = den = 0.0
    with torch.no_grad():
        for b in batches:
            inputs = {k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in b}
            mask = b["attention_mask"].bool()
            out = model(**inputs, output_hidden_states=True)
            ref = ref_model(**inputs, output_hidden_states=True)
            if out.logits.dim() == 3:
                out, ref = out.logits[mask], ref.logits[mask]
            else:
                out, ref = out.hidden_states[-1][mask], ref.hidden_states[-1][mask]
            num += float((out - ref).pow(2).sum())
            den += float(ref.pow(2).sum())
    return (num / den) ** 0.5


def _largest_unit(model, seq: float) -> float:
    ad = get_adapter(model)
    s = ad.layer_shape(0)
    return max(
        max(c.group(s.group_size), c.neuron) for c in (unit_costs(ad, i, seq) for i in range(ad.num_layers))
    )


def _setup(spec: str, task_name: str, n: int, max_length: int, *, with_head: bool):
    from statprune.models.load import load_model

    task = get_task(task_name)
    torch.manual_seed(0)  # the fresh classification head of the plain MiniLM
    model, tok = load_model(spec, task=task if with_head else None)
    calib = calibration_for(task, tok, n, 0, max_length=max_length, batch_size=8)
    held_out = calibration_for(task, tok, 8, 1, split="dev", max_length=max_length, batch_size=8).batches
    seq = float(max_length) if task.kind == "lm" else task.flops_seq_len
    return model, calib, held_out, seq


@pytest.fixture(scope="module")
def minilm():
    # kwon's Fisher needs a task loss: the plain encoder with a fresh 2-label head (seeded)
    return _setup("minilm-l6", "movie-sentiment", 64, 64, with_head=True)


@pytest.fixture(scope="module")
def smollm2():
    return _setup("smollm2-135m", "sotu", 8, 128, with_head=True)


def _run(setup, method: str, options: dict | None = None):
    dense, calib, held_out, seq = setup
    model = copy.deepcopy(dense)
    res = prune(model, calib, Target(SPARSITY, seq), method=method, options={**QUIET, **(options or {})})
    err = _output_error(model, dense, held_out)
    print(
        f"{method} {options or ''}: sparsity {res.sparsity_achieved:.4f}, output error {err:.4f}, "
        f"{res.prune_seconds:.1f} s, timings { ({k: round(v, 2) for k, v in res.timings.items()}) }"
    )
    return model, res, err


@pytest.mark.parametrize("method", ["magnitude", "kwon", "stat"])
def test_minilm_at_30_percent(minilm, method):
    dense, _, _, seq = minilm
    _, res, err = _run(minilm, method)
    dense_flops = prunable_flops(get_adapter(dense), seq)
    assert (
        SPARSITY * dense_flops
        <= dense_flops - res.flops_pruned
        < SPARSITY * dense_flops + _largest_unit(dense, seq)
    )
    assert 0.0 < err < 1.0


@pytest.mark.parametrize("method", ["magnitude", "kwon", "stat", "slicegpt"])
def test_smollm2_at_30_percent(smollm2, method):
    dense, _, _, seq = smollm2
    _, res, err = _run(smollm2, method)
    dense_flops = prunable_flops(get_adapter(dense), seq)
    removed = dense_flops - res.flops_pruned
    if method == "slicegpt":
        from statprune.baselines.slicegpt.method import sliced_flops

        k = res.diagnostics["hidden_size"]
        assert k % 8 == 0 and res.flops_pruned <= (1 - SPARSITY) * dense_flops < sliced_flops(
            get_adapter(dense), k + 8, seq
        )
    else:
        assert SPARSITY * dense_flops <= removed < SPARSITY * dense_flops + _largest_unit(dense, seq)
    assert 0.0 < err < 2.0


@pytest.mark.parametrize("setup_name", ["minilm", "smollm2"])
def test_kwon_tuning_lowers_reconstruction_error(setup_name, request):
    setup = request.getfixturevalue(setup_name)
    _, res_r, err_rearranged = _run(setup, "kwon", {"stop_after": "rearrange"})
    _, res_t, err_tuned = _run(setup, "kwon", {"stop_after": "tune", "teacher": "dense"})
    assert res_r.shapes_pruned == res_t.shapes_pruned
    fits = res_t.diagnostics["tune"]["attention"] + res_t.diagnostics["tune"]["ffn"]
    # the released LSMR solve (default) converges on real layers (a fit may still be abandoned
    # for a scale outside [-10, 10], which ends tuning as released)
    assert fits[0]["status"] == "ok"
    if setup_name == "minilm":
        assert err_tuned < err_rearranged
    # SmolLM2 on 8 x 128 tokens: layer-wise tuning toward the dense model raises the held-out error
    # with either solver (2026-12-01, 16 dev windows: rearrange-only 0.538, released LSMR 0.544,
    # ridge 0.549) -- too few tokens for ~1,000 scales per FFN; printed, not asserted


def test_slicegpt_refuses_minilm(minilm):
    dense, calib, _, seq = minilm
    with pytest.raises(StatpruneError, match="post-LayerNorm"):
        prune(copy.deepcopy(dense), calib, Target(SPARSITY, seq), method="slicegpt", options=QUIET)


# ------------------------------------------------------------------------------ task quality (slow)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_finetuned_minilm_accuracy_at_30_percent():
    from statprune.evaluation import evaluate
    from statprune.models.finetune import finetune
    from statprune.models.load import load_model

    task = get_task("movie-sentiment")
    model0, tok = load_model(str(finetune("minilm-l6", "movie-sentiment", progress=False)), task=task)
    calib = calibration_for(task, tok, 512, 0, max_length=64, batch_size=32)
    dense_acc = evaluate(model0, tok, task, "dev", progress=False)["accuracy"]
    accs = {}
    for method in ("magnitude", "kwon", "stat"):
        model = copy.deepcopy(model0)
        t = time.perf_counter()
        prune(model, calib, Target(SPARSITY, task.flops_seq_len), method=method, options=QUIET)
        seconds = time.perf_counter() - t
        accs[method] = evaluate(model, tok, task, "dev", progress=False)["accuracy"]
        print(f"{method}: dev accuracy {accs[method]:.4f} (dense {dense_acc:.4f}), {seconds:.1f} s")
    assert dense_acc > 0.75
    assert accs["stat"] > dense_acc - 0.1 and accs["kwon"] > dense_acc - 0.1
    assert accs["magnitude"] < max(accs["stat"], accs["kwon"])


@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_smollm2_perplexity_at_30_percent():
    from statprune.evaluation import evaluate
    from statprune.models.load import load_model

    task = get_task("sotu")
    model0, tok = load_model("smollm2-135m", task=task)
    calib = calibration_for(task, tok, 32, 0, batch_size=8)
    dense_ppl = evaluate(model0, tok, task, "dev", batch_size=8, progress=False)["perplexity"]
    ppl = {}
    for method in ("magnitude", "kwon", "stat", "slicegpt"):
        model = copy.deepcopy(model0)
        options = {**QUIET, "batch_size": 8} if method == "kwon" else QUIET
        t = time.perf_counter()
        prune(model, calib, Target(SPARSITY, task.flops_seq_len), method=method, options=options)
        seconds = time.perf_counter() - t
        ppl[method] = evaluate(model, tok, task, "dev", batch_size=8, progress=False)["perplexity"]
        print(f"{method}: dev perplexity {ppl[method]:.2f} (dense {dense_ppl:.2f}), {seconds:.1f} s")
    assert all(p > dense_ppl for p in ppl.values())
    assert min(ppl["stat"], ppl["kwon"], ppl["slicegpt"]) < ppl["magnitude"]
