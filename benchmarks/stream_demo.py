"""Beyond GPU memory: STAT on a model that does not fit the GPU, streamed one layer at a time.

    python benchmarks/stream_demo.py all --out DIR [--shape llama-2-13b --calib 32 --seq-len 2048
                                                   --sparsity 0.3 --cap-gib 16]

runs, each in a fresh process, (1) the in-memory prune (model on the GPU, no cap) and (2) the same
model in host memory under ``torch.cuda.set_per_process_memory_fraction(cap / total)`` with STAT's
default ``weights=auto`` (which must choose streaming), then prints a table and writes
``DIR/stream_demo.json``. The random model is built on the GPU (fast initialisation, the same
weights in both runs) and, for the streamed run, moved to host memory before the cap is set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def cmd_one(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from statprune.adapters import get_adapter
    from statprune.bench.run import synthetic_calibration
    from statprune.models.load import load_model
    from statprune.pruner import Target, prune

    t0 = time.perf_counter()
    model, _ = load_model(f"random:{args.shape}", dtype=torch.bfloat16, device="cuda")
    total = torch.cuda.get_device_properties(0).total_memory
    if args.mode == "stream":
        model.to("cpu")
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(args.cap_gib * 2**30 / total)
    torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    # weights=auto reads the cap through torch.cuda.get_per_process_memory_fraction (newer PyTorch)
    weights = "auto" if hasattr(torch.cuda, "get_per_process_memory_fraction") else "stream"
    calib = synthetic_calibration(args.calib, args.seq_len, model.config.vocab_size, batch_size=8, seed=0)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res = prune(
        model,
        calib,
        Target(args.sparsity, float(args.seq_len)),
        seed=0,
        options={
            "progress": False,
            "device": "cuda",
            "weights": weights if args.mode == "stream" else "auto",
        },
    )
    torch.cuda.synchronize()
    prune_s = time.perf_counter() - t0
    adapter = get_adapter(model)
    n = adapter.num_layers
    fingerprint = {
        f"{i}.{name}": float(p.detach().double().norm())
        for i in (0, n // 2, n - 1)
        for name, p in adapter.layers()[i].named_parameters()
    }
    return {
        "mode": args.mode,
        "shape": args.shape,
        "calib": [args.calib, args.seq_len],
        "sparsity": args.sparsity,
        "cap_gib": args.cap_gib if args.mode == "stream" else None,
        "gpu_total_gib": total / 2**30,
        "build_seconds": build_s,
        "prune_seconds": prune_s,
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        "weights_option": res.options["weights"],
        "weights_streamed": res.diagnostics["weights_streamed"],
        "hidden_offloaded": res.diagnostics["hidden_offloaded"],
        "model_device_after": str(next(model.parameters()).device),
        "flops_ratio": res.flops_dense / res.flops_pruned,
        "timings": res.timings,
        "kept_units": res.diagnostics["kept_units"],
        "weight_norms": fingerprint,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(),
    }


def cmd_all(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for mode in ("device", "stream"):
        path = out / f"stream_demo_{mode}.json"
        cmd = [sys.executable, __file__, "one", "--mode", mode, "--record", str(path)]
        cmd += ["--shape", args.shape, "--calib", str(args.calib), "--seq-len", str(args.seq_len)]
        cmd += ["--sparsity", str(args.sparsity), "--cap-gib", str(args.cap_gib)]
        print("$", " ".join(cmd), flush=True)
        rc = subprocess.run(cmd, env=os.environ).returncode
        runs[mode] = json.loads(path.read_text()) if path.exists() else {"mode": mode, "returncode": rc}
    record: dict[str, Any] = {"runs": runs}
    dev, st = runs["device"], runs["stream"]
    if "kept_units" in dev and "kept_units" in st:
        record["same_kept_units"] = dev["kept_units"] == st["kept_units"]
        record["max_weight_norm_rel_diff"] = max(
            abs(st["weight_norms"][k] - v) / max(v, 1e-30) for k, v in dev["weight_norms"].items()
        )
        record["stream_over_device_time"] = st["prune_seconds"] / dev["prune_seconds"]
    (out / "stream_demo.json").write_text(json.dumps(record, indent=1))
    print(table(record))
    return record


def table(record: dict[str, Any]) -> str:
    rows = [
        "| run | prune s | forward | gram | factorization | update | transfer | peak alloc GiB | streamed |"
    ]
    rows.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for mode, r in record["runs"].items():
        if "prune_seconds" not in r:
            rows.append(f"| {mode} | failed (rc {r.get('returncode')}) |")
            continue
        t = r["timings"]
        cells = [t.get(k, 0.0) for k in ("calibration_forward", "gram", "factorization", "weight_update")]
        cap = f" (cap {r['cap_gib']} GiB)" if r["cap_gib"] else ""
        rows.append(
            f"| {mode}{cap} | {r['prune_seconds']:.1f} | "
            + " | ".join(f"{c:.1f}" for c in cells)
            + f" | {t.get('weight_transfer', 0.0):.1f} | {r['peak_allocated_gib']:.1f} | {r['weights_streamed']} |"
        )
    extra = {k: v for k, v in record.items() if k != "runs"}
    return "\n".join(rows) + "\n" + json.dumps(extra)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["one", "all"])
    p.add_argument("--mode", choices=["device", "stream"], default="stream")
    p.add_argument("--shape", default="llama-2-13b")
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--sparsity", type=float, default=0.3)
    p.add_argument("--cap-gib", type=float, default=16.0)
    p.add_argument("--record", default=None)
    p.add_argument("--out", default="benchmarks/results/gpu")
    args = p.parse_args(argv)
    if args.command == "one":
        rec = cmd_one(args)
        Path(args.record).write_text(json.dumps(rec, indent=1))
        print(
            json.dumps({k: v for k, v in rec.items() if k not in ("kept_units", "weight_norms")}), flush=True
        )
    else:
        cmd_all(args)


if __name__ == "__main__":
    main()
