"""Evaluation of in-memory models (task metrics, LM perplexity) and the metric functions themselves.

``statprune.evaluation.metrics`` itself needs only numpy; this package also exports ``evaluate``
(torch). It is imported eagerly on purpose: the function shares its submodule's name, and only an
import here, after the submodule's, keeps ``statprune.evaluation.evaluate`` bound to the function.
"""

from statprune.evaluation.evaluate import evaluate
from statprune.evaluation.metrics import (
    accuracy,
    classification_metrics,
    f1,
    matthews_correlation,
    pearson,
    perplexity,
    regression_metrics,
    spearman,
)

__all__ = [
    "accuracy",
    "classification_metrics",
    "evaluate",
    "f1",
    "matthews_correlation",
    "pearson",
    "perplexity",
    "regression_metrics",
    "spearman",
]
