"""``statprune bench`` on CPU at tiny shapes: the record holds consistent, checkable numbers."""

from __future__ import annotations

import json

import pytest
import torch

from statprune.cli import main

STAT_STAGES = {"calibration_forward", "gram", "factorization", "allocation", "weight_update"}


def _bench(tmp_path, *extra: str, device: str = "cpu") -> dict:
    rc = main(
        ["bench", "--device", device, "--dtype", "float32", "--calib", "8", "--seq-len", "24", "--batch-size", "4",
         "--out", str(tmp_path), "--name", "rec", *extra]
    )  # fmt: skip
    assert rc == 0
    return json.loads((tmp_path / "rec.json").read_text())


def test_record_has_stage_timings_within_wall_time_and_meets_the_target(tmp_path):
    rec = _bench(tmp_path, "--shape", "tiny-llama", "--sparsity", "0.3")
    r = rec["result"]
    assert 0.3 <= r["sparsity_achieved"] < 0.3 + 0.05  # met within about one unit
    assert r["flops_pruned"] < r["flops_dense"] and r["params_pruned"] < r["params_dense"]
    assert r["calib_tokens"] == 8 * 24
    assert set(r["timings"]) >= STAT_STAGES
    assert all(v >= 0 for v in r["timings"].values())
    assert sum(r["timings"].values()) <= r["prune_seconds"] + 1e-6
    assert r["prune_seconds"] <= rec["stages"]["prune"] <= rec["wall_seconds"]
    assert r["peak_memory_bytes"] > 0
    assert 0 < r["output_rel_err"] < 1
    assert sum(v for k, v in r["kept_units"].items() if k.endswith("neurons")) < 2 * 176
    assert rec["environment"]["device"] == "cpu"


def test_speed_and_cpu_comparison_sections(tmp_path):
    rec = _bench(
        tmp_path, "--shape", "tiny-bert", "--sparsity", "0.5", "--speed", "--speed-batch", "2",
        "--speed-seq", "16", "--compare-cpu",
    )  # fmt: skip
    s = rec["speed"]
    assert s["flops_ratio"] > 1.5  # 50% of prunable FLOPs removed
    assert s["speedup"]["forward"] > 0 and s["dense"]["forward"]["ms"] > 0
    assert s["dense"]["forward"]["graph_ms"] is None  # graphs only on CUDA
    c = rec["compare_cpu"]
    assert c["same_kept_units"] and c["same_shapes"] and c["max_rel_weight_diff"] == 0.0


def test_layer_slice_and_bad_input(tmp_path, capsys):
    rec = _bench(tmp_path, "--shape", "tiny-bert", "--layers", "1", "--sparsity", "0.2")
    assert len(rec["result"]["layers"]) == 1
    assert main(["bench", "--model", "minilm-l6", "--layers", "2", "--device", "cpu"]) == 2
    assert main(["bench", "--shape", "tiny-bert", "--sparsity", "1.5", "--device", "cpu", "--out", ""]) == 2
    assert "sparsity" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_path_matches_cpu_path(tmp_path):
    rec = _bench(tmp_path, "--shape", "tiny-llama", "--sparsity", "0.3", "--compare-cpu", device="cuda")
    assert rec["compare_cpu"]["same_kept_units"]
    assert rec["compare_cpu"]["max_rel_weight_diff"] < 1e-3
