"""Task metrics on plain arrays: classification, regression and language-model perplexity.

Pure numpy (scipy only for Spearman's tie-aware ranks, imported on use), so importing this module is
cheap and the numbers do not depend on a metrics library's version. Conventions follow GLUE/sklearn:
F1 is the positive class's F1 for two classes and the unweighted (macro) mean over classes otherwise;
F1 and Matthews correlation are 0 where their denominator vanishes; correlations of a constant
prediction are NaN (undefined, and reported as such rather than hidden).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from statprune.errors import StatpruneError

ArrayLike = Sequence[float] | np.ndarray


def _pair(preds: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(preds), np.asarray(labels)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"predictions {p.shape} and labels {y.shape} must be 1-D of equal length")
    if p.size == 0:
        raise ValueError("no examples to score")
    return p, y


def confusion_matrix(preds: ArrayLike, labels: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """Counts ``C[true, predicted]`` over classes ``0..num_classes-1`` (at least two classes)."""
    p, y = _pair(preds, labels)
    p, y = p.astype(np.int64), y.astype(np.int64)
    k = int(num_classes if num_classes is not None else max(p.max(), y.max(), 1) + 1)
    return np.bincount(y * k + p, minlength=k * k).reshape(k, k)


def accuracy(preds: ArrayLike, labels: ArrayLike) -> float:
    p, y = _pair(preds, labels)
    return float(np.mean(p == y))


def f1(preds: ArrayLike, labels: ArrayLike, num_classes: int | None = None) -> float:
    """Binary F1 of class 1 for two classes; macro F1 (unweighted mean over classes) for more."""
    cm = confusion_matrix(preds, labels, num_classes).astype(np.float64)
    tp = np.diag(cm)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # 2·TP + FP + FN per class
    per_class = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(per_class[1]) if cm.shape[0] <= 2 else float(per_class.mean())


def matthews_correlation(preds: ArrayLike, labels: ArrayLike, num_classes: int | None = None) -> float:
    """Matthews correlation (Gorodkin's multi-class R_K; the phi coefficient for two classes)."""
    cm = confusion_matrix(preds, labels, num_classes).astype(np.float64)
    n = cm.sum()
    correct = np.trace(cm)
    pred_tot, true_tot = cm.sum(axis=0), cm.sum(axis=1)
    cov = correct * n - pred_tot @ true_tot
    denom = math.sqrt((n * n - pred_tot @ pred_tot) * (n * n - true_tot @ true_tot))
    return float(cov / denom) if denom > 0 else 0.0


def pearson(preds: ArrayLike, labels: ArrayLike) -> float:
    p, y = _pair(preds, labels)
    p, y = p.astype(np.float64) - p.mean(), y.astype(np.float64) - y.mean()
    denom = math.sqrt(float(p @ p) * float(y @ y))
    return float(p @ y / denom) if denom > 0 else float("nan")


def spearman(preds: ArrayLike, labels: ArrayLike) -> float:
    """Pearson correlation of the ranks, ties sharing their average rank."""
    from scipy.stats import rankdata

    p, y = _pair(preds, labels)
    return pearson(rankdata(p), rankdata(y))


def mse(preds: ArrayLike, labels: ArrayLike) -> float:
    p, y = _pair(preds, labels)
    return float(np.mean((p.astype(np.float64) - y.astype(np.float64)) ** 2))


def perplexity(total_nll: float, num_tokens: int) -> float:
    """exp(mean token NLL): the *token-weighted* mean over all windows, never a mean of window perplexities."""
    if num_tokens <= 0:
        raise ValueError("perplexity needs at least one scored token")
    mean = total_nll / num_tokens
    return math.inf if mean >= 700 else math.exp(mean)  # a broken model gives inf, not OverflowError


# name -> metric on (predicted class, true class); every classification task reports these two first
CLASSIFICATION_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews_correlation": matthews_correlation,
    "mcc": matthews_correlation,
}
REGRESSION_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "pearson": pearson,
    "spearman": spearman,
    "mse": mse,
}
DEFAULT_METRICS = {"classification": ("accuracy", "f1"), "regression": ("pearson", "spearman")}


def classification_metrics(
    logits: np.ndarray, labels: ArrayLike, names: Sequence[str] = DEFAULT_METRICS["classification"]
) -> dict[str, float]:
    """Metrics of the arg-max class of ``logits`` (examples × classes) against integer labels."""
    logits = np.asarray(logits)
    preds = logits.argmax(axis=-1)
    num_classes = logits.shape[-1]
    out = {}
    for name in names:
        fn = _lookup(CLASSIFICATION_METRICS, name, "classification")
        out[name] = fn(preds, labels, num_classes) if fn in (f1, matthews_correlation) else fn(preds, labels)
    return out


def regression_metrics(
    preds: ArrayLike, labels: ArrayLike, names: Sequence[str] = DEFAULT_METRICS["regression"]
) -> dict[str, float]:
    return {name: _lookup(REGRESSION_METRICS, name, "regression")(preds, labels) for name in names}


def metric_names_for(kind: str, task_metrics: Sequence[str] = ()) -> tuple[str, ...]:
    """The defaults of a task kind followed by the task's own metrics (order kept, no repeats)."""
    return tuple(dict.fromkeys((*DEFAULT_METRICS.get(kind, ()), *task_metrics)))


def _lookup(table: dict[str, Callable], name: str, kind: str) -> Callable:
    try:
        return table[name]
    except KeyError:
        raise StatpruneError(f"unknown {kind} metric {name!r}; known: {', '.join(sorted(table))}") from None
