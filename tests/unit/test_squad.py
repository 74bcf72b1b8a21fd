"""SQuAD v1.1/v2.0 on the local fixtures: rows, windows, answer positions, post-processing, EM/F1, QA models."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from statprune.data import collate, get_task
from statprune.data.squad import answer_positions, squad_task
from statprune.errors import StatpruneError
from statprune.evaluation import evaluate
from statprune.evaluation.squad import (
    QAPrediction,
    best_threshold,
    exact_match,
    f1_score,
    normalize_answer,
    postprocess,
    qa_metrics,
)
from statprune.models import load_model

FIXTURES = Path(__file__).parents[1] / "data" / "fixtures"
WINDOW, STRIDE = 128, 32  # the toy tokenizer is character-level: ~1 token per character


@pytest.fixture
def fixtures_env(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STATPRUNE_DATA_DIR", str(FIXTURES))
    monkeypatch.delenv("STATPRUNE_DATA_SQUAD", raising=False)
    monkeypatch.delenv("STATPRUNE_DATA_SQUAD_V2", raising=False)
    return FIXTURES


@pytest.fixture(scope="module")
def qa_bert():
    return load_model("random:tiny-bert", task=get_task("squad"))


def test_registry_metadata() -> None:
    for name, v2 in (("squad", False), ("squad_v2", True)):
        task = get_task(name)
        assert task.kind == "qa" and task.version_2 is v2
        assert task.flops_seq_len == 170.0 and task.max_length == 384 and task.stride == 128
        assert task.splits == ("train", "dev") and task.metric_names[:2] == ("exact_match", "f1")


def test_rows_hub_jsonl_and_official_json(fixtures_env: Path) -> None:
    v1_train, v1_dev = get_task("squad").examples("train"), get_task("squad").examples("dev")
    v2_dev = get_task("squad_v2").examples("dev")  # the official nested dev-v2.0.json
    assert (len(v1_train), len(v1_dev), len(v2_dev)) == (18, 18, 25)
    assert sum(not r["answers"]["text"] for r in v2_dev) == 7  # unanswerable
    assert all(len(r["answers"]["text"]) == 1 for r in v1_train)  # train: one answer
    assert max(len(r["answers"]["text"]) for r in v1_dev) == 2  # dev: several golds
    for r in v1_train + v1_dev + v2_dev:
        for text, start in zip(r["answers"]["text"], r["answers"]["answer_start"]):
            assert r["context"][start : start + len(text)] == text
    assert set(v2_dev[0]) == {"id", "title", "context", "question", "answers"}


def test_v1_rejects_unanswerable_rows(tmp_path: Path) -> None:
    (tmp_path / "dev.jsonl").write_text(
        '{"id": "x", "context": "abc", "question": "q?", "answers": {"text": [], "answer_start": []}}\n'
    )
    with pytest.raises(StatpruneError, match="squad_v2"):
        squad_task(data_dir=tmp_path).examples("dev")


def test_answer_span_decodes_to_the_answer(fixtures_env: Path, qa_bert) -> None:
    _, tok = qa_bert
    task = get_task("squad")
    feats = task.features(tok, "train", WINDOW, STRIDE)
    inside = 0
    for f in feats.features:
        ex = feats.examples[f.example_index]
        gold, start_char = ex["answers"]["text"][0], ex["answers"]["answer_start"][0]
        assert len(f.input_ids) <= WINDOW and f.input_ids[f.cls_index] == tok.cls_token_id
        if f.start_position == f.cls_index:
            continue
        inside += 1
        a, b = f.offsets[f.start_position], f.offsets[f.end_position]
        assert ex["context"][a[0] : b[1]] == gold and a[0] == start_char
        decoded = tok.decode(f.input_ids[f.start_position : f.end_position + 1])
        assert "".join(decoded.split()) == "".join(gold.lower().split())
    covered = {f.example_index for f in feats.features if f.start_position != f.cls_index}
    assert covered == set(range(len(feats.examples)))  # every answer lies whole in some window
    assert inside >= len(feats.examples)


def test_repeated_answer_text_follows_answer_start(fixtures_env: Path, qa_bert) -> None:
    _, tok = qa_bert
    feats = get_task("squad").features(tok, "train", 384)
    (i,) = [k for k, r in enumerate(feats.examples) if r["question"] == "When does the harvest fair open?"]
    ex = feats.examples[i]
    first = ex["context"].index("May")
    assert ex["answers"]["answer_start"][0] > first  # the second "May"
    (f,) = [f for f in feats.features if f.example_index == i]
    assert f.offsets[f.start_position][0] == ex["answers"]["answer_start"][0]


def test_windows_overlap_by_stride_and_cover_the_context(fixtures_env: Path, qa_bert) -> None:
    _, tok = qa_bert
    feats = get_task("squad").features(tok, "dev", WINDOW, STRIDE)
    by_example: dict[int, list] = {}
    for f in feats.features:
        by_example.setdefault(f.example_index, []).append(f)
    multi = 0
    for i, windows in by_example.items():
        context = feats.examples[i]["context"]
        spans = [[o for o in w.offsets if o is not None] for w in windows]
        assert spans[0][0][0] == 0 and spans[-1][-1][1] == len(context.rstrip())
        for prev, nxt in itertools.pairwise(spans):
            assert prev[-STRIDE:] == nxt[:STRIDE]  # consecutive windows share exactly `stride` tokens
        if len(windows) > 1:
            multi += 1
            labelled = [w.start_position != w.cls_index for w in windows]
            assert any(labelled) and not all(labelled)  # answer in some windows, [CLS] in the others
    assert multi >= 5
    with pytest.raises(StatpruneError, match="stride"):
        get_task("squad").features(tok, "dev", WINDOW, WINDOW // 2)


def test_unanswerable_questions_point_at_cls(fixtures_env: Path, qa_bert) -> None:
    _, tok = qa_bert
    feats = get_task("squad_v2").features(tok, "dev", WINDOW, STRIDE)
    impossible = [f for f in feats.features if not feats.examples[f.example_index]["answers"]["text"]]
    assert impossible
    assert all(f.start_position == f.end_position == f.cls_index == 0 for f in impossible)
    assert answer_positions([None, (0, 3), (4, 7)], {"text": [], "answer_start": []}, 0) == (0, 0)
    # an answer cut by the window's edge is not in the window
    assert answer_positions([None, (0, 3), (4, 7)], {"text": ["abc def"], "answer_start": [4]}, 0) == (0, 0)
    assert answer_positions([None, (0, 3), (4, 7)], {"text": ["de"], "answer_start": [4]}, 0) == (2, 2)


def test_encode_gives_qa_labels_that_collate_stacks(fixtures_env: Path, qa_bert) -> None:
    model, tok = qa_bert
    enc = get_task("squad_v2").encode(tok, "train", WINDOW)
    assert set(enc[0]) == {"input_ids", "token_type_ids", "start_positions", "end_positions"}
    batch = collate(enc[:6], tok.pad_token_id)
    assert batch["start_positions"].shape == (6,) and batch["start_positions"].dtype == torch.long
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
    out = model(**{k: v for k, v in batch.items()})  # the QA head's loss takes the positions
    assert torch.isfinite(out.loss)


# ---- metrics --------------------------------------------------------------------------------------


def test_official_normalisation_em_f1() -> None:
    assert normalize_answer("The  Cat's hat!") == "cats hat"
    assert normalize_answer("an apple, a pie and THE end") == "apple pie and end"
    assert exact_match("the Denver Broncos", "Denver Broncos.") == 1.0
    # F1 on tokens: pred {quick, brown, fox} vs gold {quick, fox, jumps}: P = R = 2/3
    assert f1_score("the quick brown fox", "quick fox jumps") == pytest.approx(2 / 3)
    assert f1_score("in 1642 by", "1642") == pytest.approx(0.5)  # P 1/3, R 1
    assert f1_score("", "") == 1.0 and f1_score("x", "") == 0.0 and f1_score("", "x") == 0.0
    assert f1_score("a", "the") == 1.0  # both normalise to nothing


def _preds() -> tuple[list[QAPrediction], list[dict]]:
    """Four hand-made cases: answered right, null wins, wrong answer to no-answer question, null right."""
    golds = [["Denver Broncos"], ["1642", "in 1642"], [], []]
    preds = [
        QAPrediction("a", "Denver Broncos", score=5.0, null_score=1.0),  # margin −4
        QAPrediction("b", "in 1642 by", score=2.0, null_score=3.0),  # margin 1
        QAPrediction("c", "wool", score=4.0, null_score=2.0),  # margin −2
        QAPrediction("d", "bridge", score=0.0, null_score=6.0),  # margin 6
    ]
    examples = [
        {"id": p.id, "answers": {"text": g, "answer_start": [0] * len(g)}} for p, g in zip(preds, golds)
    ]
    return preds, examples


def test_v2_metrics_with_null_threshold_hand_computed() -> None:
    preds, examples = _preds()
    m = qa_metrics(preds, examples, version_2=True)
    # threshold 0: a answers (EM 1), b → "" (0), c answers "wool" to a no-answer question (0), d → "" (1)
    assert m["exact_match"] == 0.5 and m["f1"] == 0.5
    assert m["has_ans_exact_match"] == 0.5 and m["has_ans_f1"] == 0.5
    assert m["no_ans_exact_match"] == 0.5
    # best threshold: start all-null (2 of 4), switching at margins −4 (+1), −2 (−1), 1 (+0 EM / +0.8 F1), 6 (−1)
    assert m["best_exact_match"] == 0.75 and m["best_exact_match_threshold"] == -4.0
    assert m["best_f1"] == 0.75 and m["best_f1_threshold"] == -4.0
    again = qa_metrics(preds, examples, version_2=True, null_threshold=-4.0)
    assert again["exact_match"] == m["best_exact_match"]
    # v1 rules ignore null scores: a 1; b EM 0, F1 max(1642: P 1/3 R 1 → 0.5, "in 1642": P 2/3 R 1 → 0.8);
    # c and d have gold "" and non-empty spans (0)
    v1 = qa_metrics(preds, examples, version_2=False)
    assert v1["exact_match"] == 0.25 and v1["f1"] == pytest.approx((1 + 0.8) / 4)


def test_best_threshold_ties_switch_together() -> None:
    # two examples with the same margin: one gains 1, the other loses 1; no threshold between them
    value, thresh = best_threshold(np.array([1.0, 1.0]), np.array([1.0, 0.0]), np.array([True, False]))
    assert value == 0.5 and thresh < 1.0  # all-null (1 of 2) is as good as switching both (1 of 2)


def test_postprocess_recovers_gold_spans_from_ideal_logits(fixtures_env: Path, qa_bert) -> None:
    _, tok = qa_bert
    for name in ("squad", "squad_v2"):
        task = get_task(name)
        feats = task.features(tok, "dev", WINDOW, STRIDE)
        starts, ends = [], []
        for f in feats.features:
            s, e = np.zeros(len(f.input_ids)), np.zeros(len(f.input_ids))
            s[f.start_position] += 10.0  # the labelled token (CLS when the answer is not here)
            e[f.end_position] += 10.0
            starts.append(s)
            ends.append(e)
        preds = postprocess(feats, starts, ends)
        m = qa_metrics(preds, feats.examples, version_2=task.version_2)
        assert m["exact_match"] == 1.0 and m["f1"] == 1.0, name


def test_postprocess_respects_validity_and_max_length(fixtures_env: Path, qa_bert) -> None:
    _, tok = qa_bert
    feats = get_task("squad").features(tok, "dev", 384)
    f = feats.features[0]
    ctx = [j for j, o in enumerate(f.offsets) if o is not None]
    s, e = np.full(len(f.input_ids), -100.0), np.full(len(f.input_ids), -100.0)
    s[0], e[0] = 20.0, 20.0  # [CLS] is never a span, only the null score
    s[ctx[20]], e[ctx[10]] = 9.0, 9.0  # the best pair ends before it starts: invalid
    s[ctx[22]], e[ctx[62]] = 5.0, 5.0  # 41 tokens: longer than 30
    s[ctx[12]], e[ctx[14]] = 4.0, 4.0  # the best valid span (every other combination is invalid)
    rest = [np.zeros(len(x.input_ids)) for x in feats.features[1:]]
    context = feats.examples[0]["context"]

    def span(a: int, b: int) -> str:
        return context[f.offsets[ctx[a]][0] : f.offsets[ctx[b]][1]]

    (p, *_) = postprocess(feats, [s, *rest], [e, *rest])
    assert (p.text, p.score, p.null_score) == (span(12, 14), 8.0, 40.0)
    (p2, *_) = postprocess(feats, [s, *rest], [e, *rest], max_answer_length=50)
    assert (p2.text, p2.score) == (span(20, 62), 14.0)  # 43 tokens are allowed now


# ---- models ----------------------------------------------------------------------------------------


def test_evaluate_matches_unbatched_postprocessing(fixtures_env: Path, qa_bert) -> None:
    model, tok = qa_bert
    assert type(model).__name__ == "BertForQuestionAnswering"
    task = get_task("squad_v2")
    out = evaluate(model, tok, task, "dev", batch_size=8, progress=False)  # 384-token windows
    feats = task.features(tok, "dev")
    starts, ends = [], []
    with torch.no_grad():
        for t in feats.tensors():
            o = model(input_ids=t["input_ids"][None], token_type_ids=t["token_type_ids"][None])
            starts.append(o.start_logits[0].numpy())
            ends.append(o.end_logits[0].numpy())
    manual = qa_metrics(postprocess(feats, starts, ends), feats.examples, version_2=True)
    for k, v in manual.items():
        assert out[k] == pytest.approx(v, abs=1e-9) or (math.isnan(v) and math.isnan(out[k])), k
    assert out["num_examples"] == 25 and out["num_windows"] == len(feats.features)


def test_distilbert_qa_head_prunes_through_its_adapter(fixtures_env: Path) -> None:
    import statprune.stat  # noqa: F401  (registers the method)
    from statprune.adapters import get_adapter
    from statprune.pipeline import PruneJob, run_prune

    task = get_task("squad_v2")
    model, tok = load_model("random:tiny-distilbert", task=task)
    assert type(model).__name__ == "DistilBertForQuestionAnswering"
    job = PruneJob(model="random:tiny-distilbert", method="stat", sparsity=0.5, calib_task="squad_v2",
                   calib_size=8, max_length=WINDOW, device="cpu")  # fmt: skip
    result = run_prune(job, model=model, tokenizer=tok).result
    assert abs(result.to_dict()["sparsity_achieved"] - 0.5) < 0.05
    assert sum(s.num_heads for s in get_adapter(model).shapes()) < 8
    out = evaluate(model, tok, task, "dev", max_length=WINDOW, progress=False)
    assert 0.0 <= out["f1"] <= 1.0 and out["num_examples"] == 25


def test_kwon_fisher_uses_the_qa_loss(fixtures_env: Path, qa_bert) -> None:
    from statprune.adapters import get_adapter
    from statprune.baselines.kwon.fisher import collect_mask_grads
    from statprune.calibration import make_calibration

    model, tok = qa_bert
    examples = get_task("squad_v2").encode(tok, "train", WINDOW)
    calib = make_calibration(examples, 8, 0, batch_size=4, pad_token_id=tok.pad_token_id)
    grads = collect_mask_grads(model, get_adapter(model), calib, progress=False)
    assert grads.head[0].shape == (2, 4) and grads.neuron[0].shape == (2, 256)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.head + grads.neuron)
