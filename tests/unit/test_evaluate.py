"""evaluate() on tiny random models and small in-memory tasks, checked against independent computations."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from statprune.data.tasks import LMTask, TextTask
from statprune.errors import StatpruneError
from statprune.evaluation import evaluate
from statprune.models import load_model

WORDS = ["the", "movie", "was", "good", "bad", "long", "short", "fun", "dull", "a", "plot", "actor", "scene"]


def _rows(split: str, n: int, num_labels: int) -> list[dict]:
    rng = random.Random(f"{split}-{n}")
    rows = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))  # lengths vary: padding matters
        label = rng.uniform(-4, 4) if num_labels == 1 else rng.randrange(num_labels)
        rows.append({"id": str(i), "text": text, "label": label})
    return rows


def _text_task(kind: str = "classification", num_labels: int = 3, n: int = 37) -> TextTask:
    regression = kind == "regression"
    return TextTask(
        name=f"toy-{kind}",
        kind=kind,  # type: ignore[arg-type]
        num_labels=1 if regression else num_labels,
        metric_names=("pearson", "spearman") if regression else ("accuracy", "f1", "matthews_correlation"),
        flops_seq_len=10.0,
        max_length=32,
        loader=lambda split: _rows(split, n, 1 if regression else num_labels),
    )


def _lm_task() -> LMTask:
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(4)]
    return LMTask(
        name="toy-lm",
        kind="lm",
        num_labels=0,
        metric_names=("perplexity",),
        flops_seq_len=16.0,
        max_length=16,
        loader=lambda split: [{"text": d} for d in docs],
    )


def test_classification_accuracy_matches_unbatched_manual_computation() -> None:
    task = _text_task(num_labels=3)
    model, tok = load_model("random:tiny-bert", task=task)
    out = evaluate(model, tok, task, "dev", batch_size=8, progress=False)
    # one example at a time: no padding, no sorting
    preds, labels, tokens = [], [], 0
    with torch.inference_mode():
        for ex in task.encode(tok, "dev", 32):
            kwargs = {k: v[None] for k, v in ex.items() if k != "labels"}
            preds.append(int(model(**kwargs).logits.argmax(-1)))
            labels.append(int(ex["labels"]))
            tokens += len(ex["input_ids"])
    assert out["num_examples"] == 37 and out["num_tokens"] == tokens
    assert out["accuracy"] == pytest.approx(np.mean(np.array(preds) == np.array(labels)))
    assert 0.0 <= out["accuracy"] <= 1.0 and 0.0 <= out["f1"] <= 1.0
    assert -1.0 <= out["matthews_correlation"] <= 1.0
    # batch size and hence padding/sorting must not change the result
    assert evaluate(model, tok, task, "dev", batch_size=1, progress=False) == pytest.approx(out)
    assert not model.training


def test_regression_metrics_match_numpy() -> None:
    task = _text_task("regression")
    model, tok = load_model("random:tiny-distilbert", task=task)
    out = evaluate(model, tok, task, "test", batch_size=5, progress=False)
    enc = task.encode(tok, "test", 32)
    with torch.inference_mode():
        preds = [float(model(input_ids=e["input_ids"][None]).logits) for e in enc]
    labels = [float(e["labels"]) for e in enc]
    assert out["pearson"] == pytest.approx(np.corrcoef(preds, labels)[0, 1], abs=1e-5)
    assert -1.0 <= out["spearman"] <= 1.0


def test_perplexity_of_random_lm_is_token_weighted_and_near_vocab_size() -> None:
    task = _lm_task()
    model, tok = load_model("random:tiny-llama", task=task)
    out = evaluate(model, tok, task, "test", batch_size=3, max_length=16, progress=False)
    windows = task.encode(tok, "test", 16)
    assert out["window"] == 16 and out["num_examples"] == len(windows)
    assert out["num_tokens"] == len(windows) * 15  # every token but the window's first is predicted
    vocab = model.config.vocab_size
    assert vocab / 2 < out["perplexity"] < 2 * vocab  # a random init is close to uniform
    # independent path: transformers' own shifted mean loss per window (all windows equal length)
    with torch.inference_mode():
        losses = [
            model(input_ids=w["input_ids"][None], labels=w["input_ids"][None]).loss.item() for w in windows
        ]
    assert out["nll"] == pytest.approx(np.mean(losses), rel=1e-5)
    assert out["perplexity"] == pytest.approx(math.exp(np.mean(losses)), rel=1e-5)


def test_device_argument_moves_the_model() -> None:
    task = _text_task(num_labels=2, n=9)
    model, tok = load_model("random:tiny-bert", task=task)
    out = evaluate(model, tok, task, "train", device="cpu", progress=False)
    assert out["num_examples"] == 9


def test_bad_input_is_a_clear_error() -> None:
    task = _text_task(num_labels=2)
    model, tok = load_model("random:tiny-bert", task=task)
    with pytest.raises(StatpruneError, match="no split 'validate'"):
        evaluate(model, tok, task, "validate", progress=False)
    with pytest.raises(StatpruneError, match="unknown task"):
        evaluate(model, tok, "no-such-task", progress=False)
    with pytest.raises(StatpruneError, match="needs \\(batch, 3\\)"):
        evaluate(model, tok, _text_task(num_labels=3), "dev", progress=False)
    with pytest.raises(StatpruneError, match="exceeds"):
        evaluate(model, tok, task, "dev", max_length=10_000, progress=False)
    lm_model, lm_tok = load_model("random:tiny-llama", task=_lm_task())
    with pytest.raises(StatpruneError, match="needs \\(batch, 2\\)"):
        evaluate(lm_model, lm_tok, task, "dev", progress=False)


def test_cli_evaluate_prints_table_and_writes_record(tmp_path, capsys) -> None:
    import dataclasses
    import json

    from statprune.cli import main
    from statprune.data import TASKS

    if "unit-toy-eval" not in TASKS:
        TASKS.add("unit-toy-eval", dataclasses.replace(_text_task(num_labels=2), name="unit-toy-eval"))
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--model", "random:tiny-bert", "--task", "unit-toy-eval", "--split", "dev"]
    assert main([*argv, "--batch-size", "4", "--json", str(out), "--no-progress", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["task"] == "unit-toy-eval" and record["split"] == "dev"
    assert record["metrics"]["num_examples"] == 37 and 0 <= record["metrics"]["accuracy"] <= 1
    assert f"{record['metrics']['accuracy']:.4f}" in printed and "num_examples" in printed
    assert record["config"]["max_length"] == 32 and "versions" in record
    assert main([*argv[:-1], "nope"]) == 2
    assert "no split 'nope'" in capsys.readouterr().err
    assert main(["evaluate", "--model", "random:tiny-bert", "--task", "unit-toy-evl"]) == 2
    assert "did you mean 'unit-toy-eval'" in capsys.readouterr().err
    assert main(["evaluate", "--model", "no-such-model", "--task", "unit-toy-eval"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
