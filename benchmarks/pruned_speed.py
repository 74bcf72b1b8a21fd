"""Speed of a pruned model the way users run it: reloaded with ``load_pruned`` in a fresh process.

``statprune bench --speed`` times the pruned model inside the process that pruned it; users load the
saved checkpoint in a new process. This script does what they do and compares with the dense model
built in a fresh process too:

    python benchmarks/pruned_speed.py all --shape llama-2-7b --method stat --sparsity 0.3 \\
        --calib-size 32 --seq-len 2048 --work /tmp/ps --out benchmarks/results/pruned_speed_7b.json

``all`` = ``make`` (build ``random:<shape>``, prune, time in-process, save) then ``time`` on the dense
model and on the saved checkpoint, each in its own fresh process, ``--repeats`` times in alternation
(dense, pruned, dense, pruned) so that process-to-process variation shows. Every ``time`` run warms
up and reports medians: the backbone's forward at ``--batches`` × 128 tokens, eager and as a
CUDA-graph replay (with ``--compile`` also ``torch.compile``'d at 32 × 128); for decoders
``generate`` at batch 1 and 16, the decode step (eager and graph) and, with ``--compile``, stock
``generate`` with a static cache (which transformers compiles); plus the facts that decide eager
speed (attention implementation, dtypes, non-contiguous weights, misaligned widths) and one
profiled eager forward at 32 × 128: device time by kernel kind, which separates what pruning
shrinks (GEMMs, per-head work) from fixed per-layer costs. The record holds everything; a table is
printed. ``make`` and ``time`` run the halves alone (one dense process can serve several methods).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from statprune.bench.speed import decode_latency, forward_speed, time_fn
from statprune.models.load import is_decoder


def layout_facts(model: torch.nn.Module) -> dict[str, Any]:
    """What makes eager GEMMs slow: non-contiguous or misaligned weights, mixed dtypes, the attention path."""
    params = list(model.named_parameters())
    return {
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "dtypes": sorted({str(p.dtype) for _, p in params}),
        "non_contiguous": [n for n, p in params if not p.is_contiguous()][:20],
        "misaligned_2d": [n for n, p in params if p.dim() == 2 and any(d % 8 for d in p.shape)][:20],
        "devices": sorted({str(p.device) for _, p in params}),
    }


KINDS = (  # kernel name fragments → kind; first match wins (cuDNN/CUTLASS attention before GEMMs)
    ("attention", ("flash", "fmha", "sdpa", "attention")),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "splitk")),
    ("norm", ("layer_norm", "rms", "MeanOps", "pow_")),
    ("copy", ("copy", "Cat", "Memset", "Memcpy", "gather", "scatter", "index")),
    ("elementwise", ("elementwise", "triton_")),
)


def kernel_kind(name: str) -> str:
    return next((kind for kind, parts in KINDS if any(p in name for p in parts)), "other")


def kernel_table(prof: Any, top: int = 12) -> dict[str, Any]:
    """A torch.profiler trace's CUDA kernels: total device ms and launches, ms by kind, the ``top``."""
    rows = []
    for e in prof.key_averages():
        dev_us = getattr(e, "device_time_total", 0.0) or getattr(e, "cuda_time_total", 0.0)
        if dev_us > 0 and e.device_type.name == "CUDA":
            rows.append({"kernel": e.key[:90], "calls": e.count, "device_ms": dev_us / 1e3})
    rows.sort(key=lambda r: -r["device_ms"])
    by_kind: dict[str, dict[str, float]] = {}
    for r in rows:
        k = by_kind.setdefault(kernel_kind(r["kernel"]), {"device_ms": 0.0, "calls": 0})
        k["device_ms"] += r["device_ms"]
        k["calls"] += r["calls"]
    return {
        "device_ms": sum(r["device_ms"] for r in rows),
        "calls": sum(r["calls"] for r in rows),
        "by_kind": by_kind,
        "top": rows[:top],
    }


def kernel_trace() -> Any:
    """A torch.profiler context recording host and CUDA activity (read it with :func:`kernel_table`)."""
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])


def profile_forward(model: torch.nn.Module, ids: torch.Tensor, top: int = 12) -> dict[str, Any]:
    """Every CUDA kernel of one eager backbone forward: device ms by kind (GEMM, attention, norm,
    copy, element-wise, other) and the ``top`` kernels. What pruning can shrink is the GEMMs and
    the per-head work; the rest is a fixed cost per layer that bounds the speedup."""
    backbone = getattr(model, "base_model", model)
    extra = {"use_cache": False} if is_decoder(model.config) else {}
    with torch.no_grad(), kernel_trace() as prof:
        backbone(input_ids=ids, **extra)
        torch.cuda.synchronize()
    return {"shape": list(ids.shape), **kernel_table(prof, top)}


@torch.no_grad()
def generate_ms_per_token(
    model: torch.nn.Module, batch: int, prompt: int, new: int, vocab: int, **generate_kwargs: Any
) -> float:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (batch, prompt), generator=gen).cuda()

    def run() -> Any:
        return model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
            **generate_kwargs,
        )

    return time_fn(run, torch.device("cuda"), warmup=2, reps=5) / new


def measure(
    model: torch.nn.Module, batches: list[int], compile: bool = False, generate: bool = True
) -> dict[str, Any]:
    """Every timing of one model (already on CUDA, eval mode): the backbone's forward at
    ``batches`` × 128 tokens (eager and graph-replayed; with ``compile`` also ``torch.compile``'d at
    32 × 128), one profiled eager forward at 32 × 128, and for decoders (``generate``) the decode paths."""
    dev = torch.device("cuda")
    vocab = model.config.vocab_size
    out: dict[str, Any] = {"layout": layout_facts(model), "forward": {}}
    for b in batches:
        out["forward"][f"{b}x128"] = forward_speed(
            model, batch=b, seq=128, vocab=vocab, device=dev, reps=20, compile=compile and b == 32
        )
    ids = torch.randint(3, vocab, (32, 128), generator=torch.Generator().manual_seed(0)).cuda()
    out["profile"] = profile_forward(model, ids)
    if not (generate and is_decoder(model.config)):
        return out
    out["decode"] = decode_latency(model, prompt=128, new_tokens=32, vocab=vocab, device=dev)
    out["generate_b1_ms_per_token"] = out["decode"]["generate_ms_per_token"]
    out["generate_b16_ms_per_token"] = generate_ms_per_token(model, 16, 128, 32, vocab)
    out["host_ms_per_decode_step"] = host_time_of_step(model, vocab)
    if compile:  # stock generate with a static cache: transformers compiles the decode step itself
        out["generate_b1_static_ms_per_token"] = generate_ms_per_token(
            model, 1, 128, 32, vocab, cache_implementation="static"
        )
    return out


@torch.no_grad()
def host_time_of_step(model: torch.nn.Module, vocab: int, reps: int = 20) -> dict[str, float]:
    """Host (Python + launch) milliseconds of one eager decode step against its device time: when
    host > device, eager decoding measures the interpreter, not the model's size."""
    from transformers import DynamicCache

    ids = torch.randint(3, vocab, (1, 128), generator=torch.Generator().manual_seed(2)).cuda()
    cache = DynamicCache(config=model.config)
    model(input_ids=ids, past_key_values=cache, use_cache=True)
    tok = ids[:, -1:]
    host, device = [], []
    for _ in range(reps):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        start.record()
        model(input_ids=tok, past_key_values=cache, use_cache=True)
        end.record()
        host.append((time.perf_counter() - t0) * 1e3)
        end.synchronize()
        device.append(start.elapsed_time(end))
    return {"host_ms": statistics.median(host), "event_ms": statistics.median(device)}


def cmd_make(args: argparse.Namespace) -> dict[str, Any]:
    from statprune.bench.run import synthetic_calibration
    from statprune.commands.prune import parse_kv
    from statprune.models.checkpoint import save_pruned
    from statprune.models.load import load_model
    from statprune.pruner import Target, prune

    model, tok = load_model(f"random:{args.shape}", dtype=torch.bfloat16, device="cuda")
    calib = synthetic_calibration(
        args.calib_size, args.seq_len, model.config.vocab_size, batch_size=8, seed=args.seed
    )
    options = {"progress": False} if args.method == "stat" else {}
    options.update(parse_kv(args.opt))
    t0 = time.perf_counter()
    res = prune(
        model, calib, Target(args.sparsity, 128.0), method=args.method, seed=args.seed, options=options
    )
    prune_s = time.perf_counter() - t0
    in_process = measure(model, args.batches, compile=False, generate=args.generate)
    save_pruned(model, tok, Path(args.work) / "pruned", report=res.to_dict())
    return {
        "prune_seconds": prune_s,
        "flops_ratio": res.flops_dense / res.flops_pruned,
        "in_process": in_process,
    }


def cmd_time(args: argparse.Namespace) -> dict[str, Any]:
    from statprune.models.load import load_model

    t0 = time.perf_counter()
    model, _ = load_model(args.model, dtype=torch.bfloat16, device="cuda")
    load_s = time.perf_counter() - t0
    return {
        "model": args.model,
        "load_seconds": load_s,
        **measure(model.eval(), args.batches, compile=args.compile, generate=args.generate),
    }


def _fresh(model: str, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    out = Path(args.work) / f"{tag}.json"
    cmd = [sys.executable, __file__, "time", "--model", model, "--json", str(out)]
    cmd += ["--batches", ",".join(map(str, args.batches))]
    cmd += (["--compile"] if args.compile else []) + ([] if args.generate else ["--no-generate"])
    subprocess.run(cmd, check=True, env=os.environ)
    return json.loads(out.read_text())


def cmd_all(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"config": vars(args), "made": cmd_make(args)}
    runs = []
    for rep in range(args.repeats):
        runs.append({"dense": _fresh(f"random:{args.shape}", args, f"dense{rep}")})
        runs[-1]["pruned"] = _fresh(str(work / "pruned"), args, f"pruned{rep}")
    record["fresh"] = runs
    record["gpu"] = torch.cuda.get_device_name()
    record["torch"] = torch.__version__
    record["date"] = time.strftime("%Y-%m-%d")
    return record


DECODE_ROWS = [
    ("decode step eager", lambda r: r.get("decode", {}).get("step_eager_ms")),
    ("decode step graph", lambda r: r.get("decode", {}).get("step_graph_ms")),
    ("generate b1 ms/token", lambda r: r.get("generate_b1_ms_per_token")),
    ("generate b16 ms/token", lambda r: r.get("generate_b16_ms_per_token")),
    ("generate b1 static-cache ms/token", lambda r: r.get("generate_b1_static_ms_per_token")),
    ("decode step host ms", lambda r: r.get("host_ms_per_decode_step", {}).get("host_ms")),
    ("decode step device ms", lambda r: r.get("host_ms_per_decode_step", {}).get("event_ms")),
]
MODES = ("eager_ms", "graph_ms", "compiled_ms", "compiled_graph_ms")


def rows(record: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, getter) of every table row: forward per size and mode, profile by kind, decode."""
    first = record["fresh"][0]["pruned"] if record["fresh"] else record["made"]["in_process"]
    out = [
        (f"forward {size} {mode[:-3]}", lambda r, size=size, mode=mode: r["forward"].get(size, {}).get(mode))
        for size in first["forward"]
        for mode in MODES
    ]
    for kind in sorted(first["profile"]["by_kind"]):
        out.append(
            (
                f"profile 32x128: {kind} ms",
                lambda r, k=kind: r["profile"]["by_kind"].get(k, {}).get("device_ms"),
            )
        )
    out.append(("profile 32x128: all kernels ms", lambda r: r["profile"]["device_ms"]))
    return out + DECODE_ROWS


def table(record: dict[str, Any]) -> str:
    lines = [f"FLOPs ratio {record['made']['flops_ratio']:.3f}; ms (speedup = dense/pruned)"]
    fresh = [f"fresh dense {i} | fresh pruned {i} | speedup {i}" for i in range(len(record["fresh"]))]
    lines.append(" | ".join(["| path", "in-process pruned", *fresh]) + " |")
    for name, get in rows(record):
        cells = [get(record["made"]["in_process"])]
        for run in record["fresh"]:
            d, p = get(run["dense"]), get(run["pruned"])
            cells += [d, p, (d / p if d and p else None)]
        if all(c is None for c in cells):
            continue
        lines.append(f"| {name} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines)


def _batches(text: str) -> list[int]:
    return [int(b) for b in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("make", "all"):
        s = sub.add_parser(name)
        s.add_argument("--shape", default="llama-2-7b")
        s.add_argument("--method", default="stat")
        s.add_argument("--sparsity", type=float, default=0.3)
        s.add_argument("--calib-size", type=int, default=32)
        s.add_argument("--seq-len", type=int, default=2048)
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--opt", action="append", default=[], help="method option key=value")
        s.add_argument("--work", default="/tmp/pruned_speed")
        s.add_argument("--repeats", type=int, default=2)
        s.add_argument("--out", default=None)
    t = sub.add_parser("time")
    t.add_argument("--model", required=True)
    t.add_argument("--json", required=True)
    for s in (*sub.choices.values(),):
        s.add_argument("--batches", type=_batches, default=[8, 32], help="forward batch sizes (× 128 tokens)")
        s.add_argument(
            "--compile",
            action="store_true",
            help="fresh processes also time the torch.compile'd forward (32 × 128) and stock generate "
            "with a static cache (compiled by transformers)",
        )
        s.add_argument("--no-generate", dest="generate", action="store_false", help="skip the decode paths")
    args = p.parse_args(argv)
    if args.cmd == "time":
        Path(args.json).write_text(json.dumps(cmd_time(args), indent=1))
        return
    record = cmd_all(args) if args.cmd == "all" else {"made": cmd_make(args), "fresh": []}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1, default=str))
    print(table(record))


if __name__ == "__main__":
    main()
