"""Metrics against values computed by hand (and sklearn/scipy as a second opinion)."""

import math

import numpy as np
import pytest

from statprune.errors import StatpruneError
from statprune.evaluation.metrics import (
    accuracy,
    classification_metrics,
    confusion_matrix,
    f1,
    matthews_correlation,
    metric_names_for,
    pearson,
    perplexity,
    regression_metrics,
    spearman,
)

# TP = 3 (idx 0, 3, 5), FP = 1 (idx 2), FN = 1 (idx 4), TN = 1 (idx 1)
BIN_PRED = [1, 0, 1, 1, 0, 1]
BIN_TRUE = [1, 0, 0, 1, 1, 1]


def test_binary_by_hand():
    assert accuracy(BIN_PRED, BIN_TRUE) == pytest.approx(4 / 6)
    assert f1(BIN_PRED, BIN_TRUE) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # 0.75
    # (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (3 − 1) / sqrt(4·4·2·2)
    assert matthews_correlation(BIN_PRED, BIN_TRUE) == pytest.approx(0.25)
    assert confusion_matrix(BIN_PRED, BIN_TRUE).tolist() == [[1, 1], [1, 3]]


def test_multiclass_by_hand():
    pred, true = [0, 1, 2, 2, 1, 0], [0, 1, 1, 2, 2, 0]
    # per-class F1: class 0 = 1, class 1 = 2·1/(2+1+1) = 0.5, class 2 = 0.5 → macro 2/3
    assert f1(pred, true) == pytest.approx(2 / 3)
    # Gorodkin: (c·s − Σ p_k t_k) / sqrt((s² − Σ p_k²)(s² − Σ t_k²)) = (4·6 − 12) / sqrt(24·24)
    assert matthews_correlation(pred, true) == pytest.approx(0.5)


def test_degenerate_cases_are_zero_not_errors():
    assert f1([0, 0, 0], [0, 0, 0]) == 0.0  # no positives anywhere
    assert matthews_correlation([1, 1, 1], [0, 1, 0]) == 0.0  # constant prediction
    assert math.isnan(pearson([1.0, 1.0, 1.0], [0.0, 1.0, 2.0]))


def test_correlations_by_hand():
    # dx = [-1.5, -.5, .5, 1.5], dy = [-3, -1, 0, 4]: Σdxdy = 11, Σdx² = 5, Σdy² = 26
    assert pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(130))
    # ties share their average rank: ranks [1, 2.5, 2.5, 4] vs [1, 3, 2, 4] → 4.5 / sqrt(4.5·5)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([1, 2, 3], [1, 10, 100]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_agrees_with_sklearn_and_scipy():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    from scipy import stats

    rng = np.random.default_rng(0)
    for k in (2, 4):
        y, p = rng.integers(0, k, 200), rng.integers(0, k, 200)
        avg = "binary" if k == 2 else "macro"
        assert f1(p, y, k) == pytest.approx(sklearn_metrics.f1_score(y, p, average=avg))
        assert matthews_correlation(p, y, k) == pytest.approx(sklearn_metrics.matthews_corrcoef(y, p))
    x, z = rng.normal(size=100), rng.normal(size=100)
    z = np.round(z + x, 1)  # ties
    assert pearson(x, z) == pytest.approx(stats.pearsonr(x, z)[0])
    assert spearman(x, z) == pytest.approx(stats.spearmanr(x, z)[0])


def test_perplexity_is_token_weighted():
    assert perplexity(6 * math.log(4.0), 6) == pytest.approx(4.0)
    # windows (NLL sum 2 over 1 token) and (2 over 3 tokens): exp(4/4), not a mean of window perplexities
    assert perplexity(2.0 + 2.0, 1 + 3) == pytest.approx(math.e)
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError):
        perplexity(1.0, 0)


def test_classification_metrics_from_logits():
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 3.0], [0.3, 0.2]])  # argmax 1, 0, 1, 0
    out = classification_metrics(logits, [1, 1, 1, 0], ("accuracy", "f1", "mcc"))
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    assert set(out) == {"accuracy", "f1", "mcc"}
    with pytest.raises(StatpruneError, match="unknown classification metric"):
        classification_metrics(logits, [1, 1, 1, 0], ("bleu",))
    assert regression_metrics([1, 2, 3], [1, 2, 4], ("mse",))["mse"] == pytest.approx(1 / 3)


def test_metric_names_for_keeps_defaults_first():
    assert metric_names_for("classification", ("matthews_correlation", "accuracy")) == (
        "accuracy",
        "f1",
        "matthews_correlation",
    )
    assert metric_names_for("regression", ()) == ("pearson", "spearman")


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        accuracy([1, 0], [1])
