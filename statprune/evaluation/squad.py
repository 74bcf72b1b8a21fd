"""SQuAD evaluation: start/end logits → answer spans → exact match and F1 (official v1.1 / v2.0 rules).

Post-processing (the standard recipe of BERT and transformers' ``run_qa``): per window, the ``n_best``
highest start and end logits form candidate spans; a span is valid when both ends are context tokens,
end ≥ start and it has at most ``max_answer_length`` tokens; its score is start + end logit. An
example's answer is its best valid span over all its windows, cut from the context by character
offsets. The no-answer score is the smallest [CLS] start + end logit over its windows.

Scoring follows the official scripts: answers are normalised (lower case, punctuation and the
articles a/an/the removed, whitespace collapsed); EM and token F1 are the maxima over the gold
answers. v2.0: a question with no gold answer has gold ``""``; the prediction is ``""`` when
null score − best span score > ``null_threshold`` (0 by default), and ``best_*`` report the best
threshold found on the data (as the official script does; that one tunes on the evaluation set, so
the plain numbers are the fair ones). Metrics are fractions (0…1) like every other metric here; the
official scripts print them × 100.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from statprune.errors import StatpruneError

if TYPE_CHECKING:
    from statprune.data.squad import QAFeatures, QATask

N_BEST = 20
MAX_ANSWER_LENGTH = 30
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


# ---- the official answer comparison ---------------------------------------------------------------


def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace (official rule)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token-overlap F1 of normalised answers; an empty side scores 1 only if both are empty (v2 rule)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def gold_answers(answers: Mapping[str, Sequence[Any]]) -> list[str]:
    """Gold texts that are non-empty after normalisation; ``[""]`` for an unanswerable question."""
    golds = [t for t in answers["text"] if normalize_answer(t)]
    return golds or [""]


def best_over_golds(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """(EM, F1) of a prediction: the maximum over the gold answers."""
    return max(exact_match(prediction, g) for g in golds), max(f1_score(prediction, g) for g in golds)


# ---- post-processing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QAPrediction:
    """An example's best non-null span and the scores that decide between it and no answer."""

    id: str
    text: str  # best valid span ("" if no window had a valid span)
    score: float  # its start + end logit (-inf if none)
    null_score: float  # smallest [CLS] start + end logit over the example's windows

    @property
    def null_margin(self) -> float:
        """How much more the model prefers no answer (official v2 'na_prob' when used as a score)."""
        return self.null_score - self.score

    def answer(self, version_2: bool, null_threshold: float = 0.0) -> str:
        if version_2 and self.null_margin > null_threshold:
            return ""
        return self.text


def _best_span(
    start: np.ndarray, end: np.ndarray, offsets: Sequence[tuple[int, int] | None], n_best: int, max_len: int
) -> tuple[float, int, int] | None:
    """(score, start token, end token) of the best valid span among the n-best starts × ends."""
    n = min(len(offsets), len(start))
    is_ctx = np.array([offsets[j] is not None for j in range(n)], dtype=bool)
    top_s = np.argsort(start[:n])[::-1][:n_best]
    top_e = np.argsort(end[:n])[::-1][:n_best]
    s_idx, e_idx = np.meshgrid(top_s, top_e, indexing="ij")
    length = e_idx - s_idx + 1
    valid = is_ctx[s_idx] & is_ctx[e_idx] & (length >= 1) & (length <= max_len)
    if not valid.any():
        return None
    scores = np.where(valid, start[s_idx] + end[e_idx], -np.inf)
    k = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return float(scores[k]), int(s_idx[k]), int(e_idx[k])


def postprocess(
    feats: QAFeatures,
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    *,
    n_best: int = N_BEST,
    max_answer_length: int = MAX_ANSWER_LENGTH,
) -> list[QAPrediction]:
    """One prediction per example (in example order) from per-window start/end logits."""
    if len(start_logits) != len(feats.features) or len(end_logits) != len(feats.features):
        raise ValueError("one start and one end logit vector per window expected")
    best: dict[int, tuple[float, int, int, int]] = {}  # example → (score, window, start tok, end tok)
    null: dict[int, float] = {}
    for w, (f, s, e) in enumerate(zip(feats.features, start_logits, end_logits)):
        s, e = np.asarray(s, dtype=np.float64), np.asarray(e, dtype=np.float64)
        ns = float(s[f.cls_index] + e[f.cls_index])
        null[f.example_index] = min(ns, null.get(f.example_index, np.inf))
        span = _best_span(s, e, f.offsets, n_best, max_answer_length)
        if span is not None and (f.example_index not in best or span[0] > best[f.example_index][0]):
            best[f.example_index] = (span[0], w, span[1], span[2])
    preds = []
    for i, ex in enumerate(feats.examples):
        if i in best:
            score, w, a, b = best[i]
            offsets = feats.features[w].offsets
            text = ex["context"][offsets[a][0] : offsets[b][1]]  # type: ignore[index]
        else:
            score, text = -np.inf, ""
        preds.append(QAPrediction(id=str(ex["id"]), text=text, score=score, null_score=null.get(i, np.inf)))
    return preds


# ---- metrics -----------------------------------------------------------------------------------------


def qa_metrics(
    predictions: Sequence[QAPrediction],
    examples: Sequence[Mapping[str, Any]],
    *,
    version_2: bool,
    null_threshold: float = 0.0,
) -> dict[str, float]:
    """EM and F1 (fractions); v2 adds has/no-answer breakdowns and the best-threshold numbers."""
    if len(predictions) != len(examples) or not examples:
        raise ValueError("one prediction per example (and at least one example) expected")
    golds = [gold_answers(ex["answers"]) for ex in examples]
    em, f1 = zip(
        *(best_over_golds(p.answer(version_2, null_threshold), g) for p, g in zip(predictions, golds))
    )
    out = {"exact_match": float(np.mean(em)), "f1": float(np.mean(f1))}
    if not version_2:
        return out
    has = np.array([g != [""] for g in golds])
    for tag, mask in (("has_ans", has), ("no_ans", ~has)):
        if mask.any():
            out[f"{tag}_exact_match"] = float(np.mean(np.array(em)[mask]))
            out[f"{tag}_f1"] = float(np.mean(np.array(f1)[mask]))
        else:
            out[f"{tag}_exact_match"] = out[f"{tag}_f1"] = float("nan")
    span_scores = [best_over_golds(p.text, g) for p, g in zip(predictions, golds)]
    margins = np.array([p.null_margin for p in predictions])
    for k, metric in enumerate(("exact_match", "f1")):
        value, thresh = best_threshold(margins, np.array([s[k] for s in span_scores]), has)
        out[f"best_{metric}"], out[f"best_{metric}_threshold"] = value, thresh
    return out


def best_threshold(
    margins: np.ndarray, span_scores: np.ndarray, has_answer: np.ndarray
) -> tuple[float, float]:
    """The best mean score over thresholds t (answer with the span when margin ≤ t, else no answer).

    With every question answered "no answer", unanswerable ones score 1 and the others 0. Raising t
    past an example's margin switches it to its span: + its span score if it has an answer, − 1
    otherwise (a non-empty span never matches an empty gold). Ties switch together. Returns (best
    mean, a threshold that achieves it; below every margin when answering nothing is best).
    """
    n = len(margins)
    finite = np.isfinite(margins)
    total = float(np.sum(~has_answer))
    best, thresh = total, (float(margins[finite].min()) - 1.0 if finite.any() else 0.0)
    gain = np.where(has_answer, span_scores, span_scores - 1.0)  # no-answer gold: span scores 1 only if ""
    order = np.argsort(margins, kind="stable")
    i = 0
    while i < n:
        j = i
        while j < n and margins[order[j]] == margins[order[i]]:
            total += float(gain[order[j]])
            j += 1
        if total > best and np.isfinite(margins[order[i]]):
            best, thresh = total, float(margins[order[i]])
        i = j
    return best / n, thresh


# ---- evaluation of a model ------------------------------------------------------------------------


def evaluate_qa(
    model: torch.nn.Module,
    tokenizer: Any,
    task: QATask,
    split: str,
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    progress: bool = True,
    n_best: int = N_BEST,
    max_answer_length: int = MAX_ANSWER_LENGTH,
    null_threshold: float = 0.0,
) -> dict[str, float]:
    """Score a question-answering model (``start_logits``/``end_logits``) on ``split`` of ``task``.

    Runs where the model is; windows are batched longest first (padding is masked, so the order does
    not change the logits). Returns the metrics plus ``num_examples``, ``num_windows``, ``num_tokens``.
    """
    from statprune.evaluation.evaluate import model_device
    from statprune.runtime import pad_token_id

    feats = task.features(tokenizer, split, max_length)
    if not feats.features:
        raise StatpruneError(f"split {split!r} of task {task.name!r} has no examples")
    tensors = feats.tensors()
    dev = model_device(model)
    pad_id = pad_token_id(tokenizer)
    was_training = model.training
    model.eval()
    try:
        starts, ends, num_tokens = _window_logits(
            model, tensors, batch_size, pad_id, dev, f"eval {task.name}/{split}", progress, task.name
        )
    finally:
        model.train(was_training)
    preds = postprocess(feats, starts, ends, n_best=n_best, max_answer_length=max_answer_length)
    metrics = qa_metrics(preds, feats.examples, version_2=task.version_2, null_threshold=null_threshold)
    return {
        **metrics,
        "num_examples": float(len(feats.examples)),
        "num_windows": float(len(tensors)),
        "num_tokens": float(num_tokens),
    }


@torch.inference_mode()
def _window_logits(
    model: torch.nn.Module,
    tensors: list[dict[str, torch.Tensor]],
    batch_size: int,
    pad_id: int,
    dev: torch.device,
    desc: str,
    progress: bool,
    task_name: str,
) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """Each window's start and end logits (unpadded, in window order) and the real tokens seen."""
    from statprune.data.collate import collate
    from statprune.evaluation.evaluate import progress_bar
    from statprune.runtime import MODEL_INPUTS

    order = sorted(range(len(tensors)), key=lambda i: -len(tensors[i]["input_ids"]))
    starts: list[np.ndarray] = [np.empty(0)] * len(tensors)
    ends: list[np.ndarray] = [np.empty(0)] * len(tensors)
    num_tokens = 0
    with progress_bar(len(tensors), desc, progress) as bar:
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            batch = collate([tensors[i] for i in idx], pad_id)
            out = model(**{k: v.to(dev) for k, v in batch.items() if k in MODEL_INPUTS})
            s, e = getattr(out, "start_logits", None), getattr(out, "end_logits", None)
            if s is None or e is None:
                raise StatpruneError(
                    f"model output has no start_logits/end_logits; QA task {task_name!r} needs a "
                    f"question-answering head (load the model with task={task_name!r})"
                )
            s, e = s.float().cpu().numpy(), e.float().cpu().numpy()
            for row, i in enumerate(idx):
                n = len(tensors[i]["input_ids"])
                starts[i], ends[i] = s[row, :n], e[row, :n]
            num_tokens += int(batch["attention_mask"].sum())
            bar.update(len(idx))
    return starts, ends, num_tokens
