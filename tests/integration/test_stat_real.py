"""STAT on the real packaged models (MiniLM-L6, SmolLM2-135M) and data (movie-sentiment, sotu).

Measured numbers behind the tolerances are in README/docs/RESULTS.md; each test prints its numbers.
"""

import copy

import pytest
import torch

from statprune.data import get_task
from statprune.pipeline import calibration_for
from statprune.pruner import Target, prune

pytestmark = pytest.mark.integration


def _hidden_error(model, ref_model, batches) -> float:
    """Relative error of the last hidden states at real tokens (head-free: no fine-tune needed)."""
    num = den = 0.0
    with torch.no_grad():
        for b in batches:
            inputs = {k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in b}
            mask = b["attention_mask"].bool()
            out = model(**inputs, output_hidden_states=True).hidden_states[-1][mask]
            ref = ref_model(**inputs, output_hidden_states=True).hidden_states[-1][mask]
            num += float((out - ref).pow(2).sum())
            den += float(ref.pow(2).sum())
    return (num / den) ** 0.5


def _correction_gap(spec: str, task_name: str, n: int, max_length: int, sparsity: float) -> dict[str, float]:
    from statprune.models.load import load_model

    task = get_task(task_name)
    dense, tok = load_model(spec)
    calib = calibration_for(task, tok, n, 0, max_length=max_length, batch_size=8)
    held_out = calibration_for(task, tok, 8, 1, split="dev", max_length=max_length, batch_size=8).batches
    seq = float(max_length) if task.kind == "lm" else task.flops_seq_len
    errs = {}
    for corr in (True, False):
        model = copy.deepcopy(dense)
        prune(model, calib, Target(sparsity, seq), options={"correction": corr, "progress": False})
        errs["corrected" if corr else "selection_only"] = _hidden_error(model, dense, held_out)
    print(spec, errs)
    return errs


# Calibration needs more tokens than the widest layer (1,536 neurons): with fewer, the least-squares
# correction interpolates the calibration set exactly and generalises badly (measured: with 8 × 128
# SmolLM2 tokens the corrected error on held-out windows was 1.41 against 0.65 for selection alone).


def test_correction_beats_selection_only_on_minilm():
    errs = _correction_gap("minilm-l6", "movie-sentiment", 256, 64, 0.4)
    assert errs["corrected"] < errs["selection_only"]


def test_correction_beats_selection_only_on_smollm2():
    errs = _correction_gap("smollm2-135m", "sotu", 32, 128, 0.3)
    assert errs["corrected"] < errs["selection_only"]
