"""``statprune bench`` on CPU at tiny shapes: the record holds consistent, checkable numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from statprune.cli import main

STAT_STAGES = {"calibration_forward", "gram", "factorization", "allocation", "weight_update"}


def _bench(tmp_path, *extra: str, device: str = "cpu") -> dict:
    rc = main(
        ["bench", "--device", device, "--dtype", "float32", "--calib-size", "8", "--seq-len", "24", "--batch-size", "4",
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
    assert s["dense"]["forward"]["mode"] == s["pruned"]["forward"]["mode"] == "eager"  # the only one here
    assert s["speedup"]["forward"] == s["speedup"]["forward_eager"]
    c = rec["compare_cpu"]
    assert c["same_kept_units"] and c["same_shapes"] and c["max_rel_weight_diff"] == 0.0


def test_same_as_compares_kept_units_with_a_record_of_the_same_run(tmp_path, capsys):
    run = ("--shape", "tiny-llama", "--sparsity", "0.3")
    ref = _bench(tmp_path / "a", *run)
    ref_path = tmp_path / "a" / "rec.json"
    c = _bench(tmp_path / "b", *run, "--opt", "profile=false", "--same-as", str(ref_path))["same_as"]
    assert c["same_kept_units"] and c["differing_units"] == {}
    assert c["output_rel_err"][0] == c["output_rel_err"][1] == ref["result"]["output_rel_err"]
    assert "same kept units True" in capsys.readouterr().out
    # a reference whose kept units differ (as another code's or machine's would): named unit by unit
    n = ref["result"]["kept_units"]["0.neurons"]
    ref["result"]["kept_units"]["0.neurons"] = n + 8
    (tmp_path / "edited.json").write_text(json.dumps(ref))
    c = _bench(tmp_path / "c", *run, "--same-as", str(tmp_path / "edited.json"))["same_as"]
    assert not c["same_kept_units"] and c["differing_units"] == {"0.neurons": [n + 8, n]}
    # another run (or not a record) is refused before any pruning, naming the difference
    other = ["bench", "--shape", "tiny-llama", "--sparsity", "0.4", "--device", "cpu", "--dtype", "float32",
             "--calib-size", "8", "--seq-len", "24", "--batch-size", "4", "--out", ""]  # fmt: skip
    assert main([*other, "--same-as", str(ref_path)]) == 2
    assert "sparsity: 0.3 there, 0.4 here" in capsys.readouterr().err
    assert main([*other, "--same-as", str(tmp_path / "missing.json")]) == 2
    assert "not a readable bench record" in capsys.readouterr().err
    # the reference is never overwritten by the run's own record
    same_place = [*other[:-2], "--sparsity", "0.3", "--out", str(tmp_path / "a"), "--name", "rec"]
    before = ref_path.read_text()
    assert main([*same_place, "--same-as", str(ref_path)]) == 2
    assert "would be overwritten" in capsys.readouterr().err and ref_path.read_text() == before


def test_layer_slice_and_bad_input(tmp_path, capsys):
    rec = _bench(tmp_path, "--shape", "tiny-bert", "--layers", "1", "--sparsity", "0.2")
    assert len(rec["result"]["layers"]) == 1
    assert main(["bench", "--model", "minilm-l6", "--layers", "2", "--device", "cpu"]) == 2
    assert main(["bench", "--shape", "tiny-bert", "--sparsity", "1.5", "--device", "cpu", "--out", ""]) == 2
    assert "sparsity" in capsys.readouterr().err
    assert main(["bench", "--shape", "tiny-bert", "--speed", "--freeze", "--device", "cpu", "--out", ""]) == 2
    assert "--compile" in capsys.readouterr().err
    assert main(["bench", "--shape", "tiny-bert", "--seq-len", "2048", "--device", "cpu", "--out", ""]) == 2
    assert "--seq-len 2048 exceeds the model's 512 positions" in capsys.readouterr().err
    too_long = ["--seq-len", "16", "--speed", "--speed-seq", "600", "--device", "cpu", "--out", ""]
    assert main(["bench", "--shape", "tiny-bert", *too_long]) == 2
    assert "--speed-seq 600 exceeds" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_path_matches_cpu_path(tmp_path):
    rec = _bench(tmp_path, "--shape", "tiny-llama", "--sparsity", "0.3", "--compare-cpu", device="cuda")
    assert rec["compare_cpu"]["same_kept_units"]
    assert rec["compare_cpu"]["max_rel_weight_diff"] < 1e-3


H200_RECORD = "benchmarks/results/h200-2026-12-01/bert-base-stat-s0.5-final-2.json"


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or "H200" not in torch.cuda.get_device_name(),
    reason="the record is an H200's",
)
def test_gpu_path_keeps_the_units_recorded_on_an_h200(tmp_path):
    """A change to the GPU path that moves STAT's kept units fails here, as a refactor of the pivot
    kernels' reductions did (docs/BENCHMARKS.md §3d); the record was reproduced on two H200s."""
    record = Path(__file__).resolve().parents[2] / H200_RECORD
    rc = main(
        ["bench", "--device", "cuda", "--shape", "bert-base", "--sparsity", "0.5", "--calib-size", "512",
         "--seq-len", "128", "--batch-size", "64", "--dtype", "bfloat16", "--opt", "profile=false",
         "--out", str(tmp_path), "--name", "rec", "--same-as", str(record)]
    )  # fmt: skip
    assert rc == 0
    same = json.loads((tmp_path / "rec.json").read_text())["same_as"]
    assert same["same_kept_units"], same["differing_units"]
    assert same["output_rel_err"][0] == same["output_rel_err"][1]


@pytest.mark.slow  # Inductor compiles C++ on CPU (~20 s per model) and needs a compiler toolchain
def test_compiled_forward_and_decode_step_match_eager():
    from statprune.bench.speed import decode_latency, forward_speed
    from statprune.models.load import build_random

    cpu = torch.device("cpu")
    model, _ = build_random("tiny-llama")
    out = decode_latency(model, prompt=16, new_tokens=2, vocab=1024, device=cpu, compile=True)
    assert "compile_error" not in out
    assert out["compiled_max_abs_diff"] < 1e-4 * max(1.0, out["output_max_abs"])
    assert out["step_compiled_ms"] > 0 and out["step_compiled_graph_ms"] is None  # graphs only on CUDA
    assert out["step_ms"] == min(out["step_eager_ms"], out["step_compiled_ms"])
    assert out["step_mode"] == ("eager" if out["step_ms"] == out["step_eager_ms"] else "compiled")
    encoder, _ = build_random("tiny-bert")
    fwd = forward_speed(encoder, batch=2, seq=16, vocab=1024, device=cpu, compile=True)
    assert "compile_error" not in fwd
    assert fwd["compiled_max_abs_diff"] < 1e-4 * max(1.0, fwd["output_max_abs"])
    assert fwd["ms"] == min(fwd["eager_ms"], fwd["compiled_ms"])
    assert fwd["mode"] == ("eager" if fwd["ms"] == fwd["eager_ms"] else "compiled")


def test_task_loss_method_on_an_encoder_gets_random_labels(tmp_path, capsys):
    # kwon differentiates a task loss: an encoder needs a head and labels, which --num-labels supplies
    args = ["--shape", "tiny-bert", "--method", "kwon", "--sparsity", "0.4", "--layers", "2"]
    assert main(["bench", "--device", "cpu", "--calib-size", "8", "--seq-len", "24", "--out", "", *args]) == 2
    assert "labelled" in capsys.readouterr().err
    rec = _bench(tmp_path, *args, "--num-labels", "3")
    r = rec["result"]
    assert 0.4 <= r["sparsity_achieved"] < 0.4 + 0.05
    assert set(r["timings"]) >= {"fisher", "search", "rearrange", "tune", "weight_update"}
    assert r["diagnostics"]["samples_used"] == 8
    assert 0 < r["output_rel_err"] < 1
