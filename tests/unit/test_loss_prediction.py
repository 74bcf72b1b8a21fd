"""benchmarks/loss_prediction.py on hand-made records: which runs count, the per-token prediction,
the seed means and the JSON written."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "loss_prediction.py"
_spec = importlib.util.spec_from_file_location("loss_prediction", SCRIPT)
lp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lp)


def _record(run_id, *, seed, options, auto, predicted, tokens, nll, status="done", method="stat"):
    return {
        "run_id": run_id,
        "study": "s",
        "status": status,
        "config": {
            "method": method,
            "method_options": options,
            "task": "sotu",
            "eval_split": "test",
            "sparsity": 0.2,
            "calib_size": 128,
            "seed": seed,
        },
        "method_options_resolved": {"error_norm": options.get("error_norm", "auto"), "allocation": "auto"},
        "prune": {
            "calib_tokens": tokens,
            "diagnostics": {"predicted_error": predicted, "auto_options": auto},
        },
        "metrics": {"nll": nll},
        "dense_metrics": {"nll": 3.0},
    }


def test_prediction_per_token_against_the_measured_increase(tmp_path):
    folder = tmp_path / "records"
    folder.mkdir()
    loss = {"error_norm": "loss", "allocation": "greedy"}
    recs = [
        _record("a", seed=0, options={}, auto=loss, predicted=300.0, tokens=1000, nll=3.4),
        _record("b", seed=1, options={}, auto=loss, predicted=500.0, tokens=1000, nll=3.6),
        # not counted: the residual scale, two rounds, a failed run, another method
        _record(
            "c", seed=2, options={"error_norm": "residual"}, auto={}, predicted=9.0, tokens=1000, nll=3.5
        ),
        _record(
            "d",
            seed=3,
            options={"error_norm": "loss", "rounds": 2},
            auto={},
            predicted=1.0,
            tokens=1,
            nll=9.0,
        ),
        _record("e", seed=4, options={}, auto=loss, predicted=1.0, tokens=1, nll=9.0, status="failed"),
        _record("f", seed=5, options={}, auto=loss, predicted=1.0, tokens=1, nll=9.0, method="flap"),
    ]
    for r in recs:
        (folder / f"{r['run_id']}.json").write_text(json.dumps(r))
    out = tmp_path / "lp.json"
    rec = lp.main(["--records", str(folder), "--out", str(out)])

    assert sorted(r["run_id"] for r in rec["runs"]) == ["a", "b"]
    (row,) = rec["table"]
    assert row["allocation"] == "greedy" and row["runs"] == 2
    assert row["predicted"] == pytest.approx(0.4)  # (0.3 + 0.5) / 2 per token
    assert row["measured"] == pytest.approx(0.5)  # (0.4 + 0.6) / 2
    assert row["ratio"] == pytest.approx(1.25)
    assert math.isnan(rec["spearman"]["all runs"])  # two runs give no rank correlation
    assert json.loads(out.read_text())["table"][0]["runs"] == 2
