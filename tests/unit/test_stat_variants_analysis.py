"""benchmarks/stat_variants_analysis.py on a hand-made records folder: Spearman numbers worked out by
hand, the same-scale subset, per-layer fractions, prune times, and the figure and JSON written."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "stat_variants_analysis.py"
_spec = importlib.util.spec_from_file_location("stat_variants_analysis", SCRIPT)
sva = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sva)

DENSE_PPL = 20.0
DENSE_LAYER = {"num_heads": 9, "num_kv_heads": 3, "head_dim": 64, "intermediate": 100}
# label, options, predicted error, perplexity, prune seconds, kept KV groups / neurons of layer 1
RUNS = [
    # spelled-out residual is on the same scale as the default (a record of the former default)
    ("stat-share", {"error_norm": "residual", "allocation": "share"}, 0.1, 30.0, 10.0, (2, 50)),  # 0.5
    ("stat-reference", {"allocation": "reference"}, 0.2, 24.0, 20.0, (1, 80)),  # 0.2
    ("stat-greedy", {"allocation": "greedy"}, 0.3, 40.0, 30.0, (3, 40)),  # 1.0
    ("stat-rounds2", {"rounds": 2}, 0.05, 50.0, 60.0, (3, 10)),  # 1.5, last round's error only
]


def _write_records(folder: Path) -> None:
    folder.mkdir()
    for i, (label, opts, pred, ppl, secs, (kv, neurons)) in enumerate(RUNS):
        pruned = {**DENSE_LAYER, "num_heads": 3 * kv, "num_kv_heads": kv, "intermediate": neurons}
        rec = {
            "run_id": f"run{i}",
            "name": f"{label}-smollm2-135m-s0.10-n128-seed0-run{i}",
            "status": "done",
            "config": {
                "model": "smollm2-135m",
                "task": "sotu",
                "method": "stat",
                "method_options": opts,
                "sparsity": 0.1,
                "calib_size": 128,
                "seed": 0,
                "max_length": 512,
                "dtype": "float32",
                "eval_split": "test",
            },
            "metrics": {"perplexity": ppl},
            "dense_metrics": {"perplexity": DENSE_PPL},
            "prune": {
                "prune_seconds": secs,
                "layers": [DENSE_LAYER, pruned],
                "layers_dense": [DENSE_LAYER, DENSE_LAYER],
                "diagnostics": {"predicted_error": pred, "kept_units": {}},
            },
        }
        (folder / f"run{i}.json").write_text(json.dumps(rec))


def test_spearman_by_hand():
    assert sva.spearman([1, 2, 3], [2, 1, 3]) == pytest.approx(0.5)  # 1 − 6·2 / (3·8)
    # ties take the average rank: ranks (1.5, 1.5, 3) vs (1, 2, 3) → 1.5 / sqrt(1.5 · 2) = √3 / 2
    assert sva.spearman([0.1, 0.1, 0.3], [5, 6, 7]) == pytest.approx(math.sqrt(3) / 2)
    assert sva.spearman([3, 2, 1], [1, 2, 4]) == pytest.approx(-1.0)
    assert math.isnan(sva.spearman([1, 2], [2, 1]))


def test_analysis_on_fake_records(tmp_path):
    records = tmp_path / "records"
    _write_records(records)
    fig, out = tmp_path / "fig" / "layers.png", tmp_path / "analysis.json"
    rec = sva.main(["--records", str(records), "--figure", str(fig), "--out", str(out)])

    assert fig.is_file() and fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and fig.stat().st_size > 10_000
    assert json.loads(out.read_text())["runs"] == 4
    rho = {(r["variants"], r["sparsity"]): (r["n"], r["spearman"]) for r in rec["rank_correlation"]}
    # all four: predicted ranks (2, 3, 4, 1), increase ranks (2, 1, 3, 4): Σd² = 14 → 1 − 84/60
    assert rho["all", "10%"] == (4, pytest.approx(-0.4))
    assert rho["all", "pooled"] == (4, pytest.approx(-0.4))
    # without rounds2 (its error covers the last round only): ranks (1, 2, 3) vs (2, 1, 3)
    assert rho["same scale", "10%"] == (3, pytest.approx(0.5))
    assert {r["split"] for r in rec["rank_correlation"]} == {"test"}

    layers = {f["variant"]: f for f in rec["layer_fractions"]}
    assert set(layers) == {"stat-share", "stat-reference"}  # the figure's default variants
    assert layers["stat-share"]["attention"] == pytest.approx([1.0, 2 / 3])
    assert layers["stat-reference"]["ffn"] == pytest.approx([1.0, 0.8])

    times = {t["variant"]: t for t in rec["prune_seconds"]}
    assert times["stat-greedy"]["mean"] == 30.0 and times["stat-greedy"]["n"] == 1
    assert [t["variant"] for t in rec["prune_seconds"]][-1] == "stat-rounds2"  # slowest last


def test_error_norm_used_reads_what_auto_became(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"prune": {"diagnostics": {"auto_options": {"error_norm": "loss"}}}}))
    assert sva.error_norm_used(path, {}) == "loss"  # a decoder's default since 2026-12-01
    path.write_text(json.dumps({"method_options_resolved": {"error_norm": "median"}}))
    assert sva.error_norm_used(path, {}) == "median"
    path.write_text(json.dumps({}))
    assert sva.error_norm_used(path, {}) == "residual"  # records older than both fields
    assert sva.error_norm_used(path, {"error_norm": "depth_fit"}) == "depth_fit"
