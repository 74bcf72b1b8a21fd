"""Regenerate the fixed analysis test records from the fixture specs next to this file.

The metric values, timings and per-layer shapes below are hand-chosen and fixed; run ids, names and
configs come from expanding the specs with the real sweep code, so the records look exactly like
the sweep's. Run it (``python tests/data/records/make_records.py``) only when the record format or
the run-id hash changes; the golden tables in ``expected/`` must then be unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

from statprune.sweep.spec import load_spec

HERE = Path(__file__).parent
VERSIONS = {"python": "3.11.9", "torch": "2.13.0", "transformers": "5.17.0", "statprune": "0.1.0"}


def layers(heads, kv, head_dim, neurons):
    return [
        {"num_heads": h, "num_kv_heads": k, "head_dim": head_dim, "intermediate": n}
        for h, k, n in zip(heads, kv, neurons)
    ]


def done_record(
    run, i, *, metrics, dense, achieved, seq_len, flops_dense, params_dense, prune_s, lay, lay_dense
):
    cfg = run.config.to_dict()
    params_pruned = int(params_dense * (1 - 0.7 * achieved))
    prunable = int(params_dense * 0.7)
    return {
        **_base(run, i, "done"),
        "metrics": metrics,
        "dense_metrics": dense,
        "prune": {
            "method": cfg["method"],
            "options": cfg["method_options"],
            "sparsity_target": cfg["sparsity"],
            "sparsity_achieved": achieved,
            "seq_len": seq_len,
            "flops_dense": flops_dense,
            "flops_pruned": flops_dense * (1 - achieved),
            "params_dense": params_dense,
            "params_pruned": params_pruned,
            "params_prunable_dense": prunable,
            "params_prunable_pruned": prunable - (params_dense - params_pruned),
            "layers": lay,
            "layers_dense": lay_dense,
            "seed": cfg["seed"],
            "calib_size": cfg["calib_size"],
            "calib_tokens": cfg["calib_size"] * int(seq_len),
            "prune_seconds": prune_s,
            "peak_memory_bytes": 2_000_000_000,
            "timings": {"calibration": round(prune_s * 0.4, 4), "select": round(prune_s * 0.6, 4)},
            "diagnostics": {},
        },
        "timings": {
            "total_seconds": round(prune_s + 20.0, 3),
            "finetune_seconds": 0.0,
            "prune_seconds": prune_s,
            "eval_seconds": 15.0,
        },
        "peak_memory_bytes": 2_000_000_000,
    }


def _base(run, i, status):
    return {
        "run_id": run.run_id,
        "name": run.name,
        "study": None,  # filled by write()
        "status": status,
        "config": run.config.to_dict(),
        "versions": VERSIONS,
        "git_commit": "1ec6b42",
        "host": "node01",
        "slurm_job_id": str(1000 + i),
        "wandb_run": None,
        "started": f"2025-01-01T10:{i:02d}:00+0000",
        "finished": f"2025-01-01T11:{i:02d}:00+0000",
    }


def write(spec_path: Path, records: list[dict]) -> None:
    spec = load_spec(spec_path)
    folder = HERE / spec.study
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.json"):
        old.unlink()
    for rec in records:
        rec["study"] = spec.study
        (folder / f"{rec['run_id']}.json").write_text(json.dumps(rec, indent=1) + "\n")


def toy_cls() -> None:
    spec_path = HERE / "toy_cls.toml"
    dense = {"accuracy": 0.8810, "f1": 0.8790}
    lay_dense = layers([12] * 6, [12] * 6, 32, [1536] * 6)
    # (method, sparsity, seed) -> accuracy, f1, achieved sparsity, prune seconds, heads, neurons per layer
    values = {
        ("stat", 0.3, 0): (
            0.8720,
            0.8700,
            0.2990,
            12.4,
            [12, 12, 11, 10, 8, 6],
            [1480, 1400, 1210, 1040, 880, 700],
        ),
        ("stat", 0.3, 1): (
            0.8680,
            0.8650,
            0.2995,
            12.9,
            [12, 12, 11, 9, 8, 7],
            [1470, 1390, 1220, 1050, 870, 690],
        ),
        ("stat", 0.5, 0): (
            0.8410,
            0.8380,
            0.4985,
            11.8,
            [12, 11, 9, 7, 5, 3],
            [1300, 1100, 850, 650, 450, 300],
        ),
        ("stat", 0.5, 1): (
            0.8350,
            0.8330,
            0.4990,
            12.1,
            [12, 10, 9, 7, 6, 3],
            [1290, 1110, 860, 640, 440, 310],
        ),
        ("magnitude", 0.3, 0): (0.8120, 0.8010, 0.3010, 0.52, [10] * 6, [1075] * 6),
        ("magnitude", 0.3, 1): (0.8060, 0.7990, 0.3010, 0.49, [10] * 6, [1075] * 6),
        ("magnitude", 0.5, 0): (0.6230, 0.5800, 0.5005, 0.51, [8, 7, 7, 7, 7, 8], [770] * 6),
        ("magnitude", 0.5, 1): (0.6410, 0.6100, 0.5005, 0.50, [8, 7, 7, 7, 7, 8], [770] * 6),
    }
    records = []
    for i, run in enumerate(load_spec(spec_path).runs()):
        c = run.config
        key = (c.method, c.sparsity, c.seed)
        if key not in values:  # stat at 70%: the failed run
            rec = _base(run, i, "failed")
            rec["error"] = {
                "type": "OutOfMemoryError",
                "message": "CUDA out of memory. Tried to allocate 2.00 GiB",
                "traceback": "Traceback (most recent call last):\n  ...\ntorch.OutOfMemoryError: CUDA out of memory",
            }
            rec["timings"] = {"total_seconds": 3.0}
            records.append(rec)
            continue
        acc, f1, achieved, prune_s, heads, neurons = values[key]
        records.append(
            done_record(
                run, i, metrics={"accuracy": acc, "f1": f1}, dense=dense, achieved=achieved, seq_len=25.2,
                flops_dense=1.2e9, params_dense=22_713_216, prune_s=prune_s,
                lay=layers(heads, heads, 32, neurons), lay_dense=lay_dense,
            )
        )  # fmt: skip
    write(spec_path, records)


def toy_lm() -> None:
    spec_path = HERE / "toy_lm.toml"
    ppl = {  # (model, method, sparsity, calib size) -> perplexity
        ("random:tiny-llama", "stat", 0.2, 32): 1071.0,
        ("random:tiny-llama", "stat", 0.2, 128): 1049.0,
        ("random:tiny-llama", "stat", 0.4, 32): 1160.0,
        ("random:tiny-llama", "stat", 0.4, 128): 1118.0,
        ("random:tiny-llama", "magnitude", 0.2, 32): 1240.0,
        ("random:tiny-llama", "magnitude", 0.2, 128): 1240.0,
        ("random:tiny-llama", "magnitude", 0.4, 32): 1630.0,
        ("random:tiny-llama", "magnitude", 0.4, 128): 1630.0,
        ("smollm2-135m", "stat", 0.2, 32): 29.84,
        ("smollm2-135m", "stat", 0.2, 128): 27.51,
        ("smollm2-135m", "stat", 0.4, 32): 48.02,
        ("smollm2-135m", "stat", 0.4, 128): 41.27,
        ("smollm2-135m", "magnitude", 0.2, 32): 181.3,
        ("smollm2-135m", "magnitude", 0.2, 128): 181.3,
        ("smollm2-135m", "magnitude", 0.4, 32): 2304.0,
        ("smollm2-135m", "magnitude", 0.4, 128): 2304.0,
    }
    dense = {"random:tiny-llama": 1012.0, "smollm2-135m": 23.12}
    seconds = {
        ("random:tiny-llama", "stat"): 0.81,
        ("random:tiny-llama", "magnitude"): 0.05,
        ("smollm2-135m", "stat"): 95.3,
        ("smollm2-135m", "magnitude"): 2.1,
    }
    shapes = {  # model -> flops_dense, params_dense, dense layers
        "random:tiny-llama": (2.6e7, 1_254_400, layers([4] * 2, [2] * 2, 16, [128] * 2)),
        "smollm2-135m": (4.3e10, 134_515_008, layers([9] * 30, [3] * 30, 64, [1536] * 30)),
    }
    records = []
    for i, run in enumerate(load_spec(spec_path).runs()):
        c = run.config
        flops, params, lay_dense = shapes[c.model]
        keep = 1 - c.sparsity
        if c.model == "random:tiny-llama":
            heads, kv = ([4, 2], [2, 1]) if c.sparsity > 0.3 else ([4, 4], [2, 2])
            lay = layers(heads, kv, 16, [int(128 * keep)] * 2)
        else:
            heads = [9] * 10 + [6] * 10 + ([3] * 10 if c.sparsity > 0.3 else [6] * 10)
            lay = layers(heads, [h // 3 for h in heads], 64, [int(1536 * keep)] * 30)
        achieved = round(
            c.sparsity + (0.003 if c.method == "stat" else -0.002) * (1 if c.calib_size == 128 else 2), 4
        )
        prune_s = round(
            seconds[(c.model, c.method)]
            * (1.0 if c.calib_size == 128 else 0.4)
            * (1.05 if c.sparsity > 0.3 else 1.0),
            3,
        )
        records.append(
            done_record(
                run, i, metrics={"perplexity": ppl[(c.model, c.method, c.sparsity, c.calib_size)]},
                dense={"perplexity": dense[c.model]}, achieved=achieved, seq_len=512.0, flops_dense=flops,
                params_dense=params, prune_s=prune_s, lay=lay, lay_dense=lay_dense,
            )
        )  # fmt: skip
    write(spec_path, records)


if __name__ == "__main__":
    toy_cls()
    toy_lm()
    print(f"wrote {HERE}/toy_cls and {HERE}/toy_lm")
