"""Measured ceilings of the device, and micro-benchmarks of STAT's two hot kernels.

The ceilings (copy bandwidth; matrix rates in bf16, tf32, fp32, fp64; launch and graph-replay cost
of a tiny kernel) are what every stage time in docs/BENCHMARKS.md is compared with. The
micro-benchmarks time the pivoted Cholesky (per pivot step, eager vs CUDA-graph replay, and check
that both give identical factors) and the Gram accumulation (float64 GEMM vs the half-precision
GEMM with float32 output, with its error against the float64 result).
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from statprune.bench.speed import time_fn


def _rate(flops: float, ms: float) -> float:
    return flops / (ms / 1e3) / 1e12


@torch.no_grad()
def measure_ceilings(device: torch.device, *, size: int = 8192, copy_gib: float = 4.0) -> dict[str, Any]:
    """Copy bandwidth (GB/s, bytes read + written), matmul TFLOP/s per dtype, per-kernel launch cost."""
    out: dict[str, Any] = {}
    g = torch.Generator(device=device).manual_seed(0)
    n_el = int(copy_gib * 2**30 / 4)
    src = torch.rand(n_el, generator=g, device=device)
    dst = torch.empty_like(src)
    ms = time_fn(lambda s=src, d=dst: d.copy_(s), device, reps=10)
    out["copy_GBps"] = 2 * src.numel() * 4 / (ms / 1e3) / 1e9
    del src, dst
    old_tf32 = torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None
    for name, dtype, tf32 in [
        ("bf16", torch.bfloat16, False),
        ("tf32", torch.float32, True),
        ("fp32", torch.float32, False),
        ("fp64", torch.float64, False),
    ]:
        if device.type != "cuda" and name == "tf32":
            continue
        n = size if device.type == "cuda" else 1024
        a = torch.randn(n, n, generator=g, device=device).to(dtype)
        b = torch.randn(n, n, generator=g, device=device).to(dtype)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            ms = time_fn(lambda a=a, b=b: a @ b, device, reps=10)
        finally:
            if device.type == "cuda":
                torch.backends.cuda.matmul.allow_tf32 = old_tf32
        out[f"matmul_{name}_TFLOPs"] = _rate(2.0 * n**3, ms)
        del a, b
    if device.type == "cuda":
        x = torch.randn(16384, 11008, generator=g, device=device).to(torch.bfloat16)
        try:
            ms = time_fn(lambda: torch.mm(x.T, x, out_dtype=torch.float32), device, reps=5)
            out["gram_bf16_fp32out_TFLOPs"] = _rate(2.0 * x.shape[0] * x.shape[1] ** 2, ms)
        except (RuntimeError, TypeError) as e:
            out["gram_bf16_fp32out_TFLOPs"] = f"unsupported: {e}"
        del x
        out.update(_launch_costs(device))
    return out


def _launch_costs(device: torch.device, n_ops: int = 2000) -> dict[str, float]:
    """Microseconds per tiny kernel: eager launches (host-bound) and CUDA-graph replay."""
    v = torch.zeros(1, device=device)

    def ops() -> None:
        for _ in range(n_ops):
            v.add_(1.0)

    eager = time_fn(ops, device, warmup=1, reps=5)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops()
    replay = time_fn(graph.replay, device, warmup=1, reps=5)
    return {"launch_eager_us": eager * 1e3 / n_ops, "launch_graph_us": replay * 1e3 / n_ops}


def _spd(n: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    X = torch.randn(2 * n, n, generator=g, device=device, dtype=torch.float64)
    X = X * torch.logspace(0, -3, n, device=device, dtype=torch.float64)  # a decaying spectrum
    return X.T @ X


@torch.no_grad()
def bench_factorization(n: int, device: torch.device, *, head_dim: int | None = None) -> dict[str, Any]:
    """Pivoted Cholesky of an n × n SPD matrix: seconds eager and graph-replayed, and their agreement."""
    from statprune.stat import id as idmod

    G = _spd(n, device)
    blocks = None
    if head_dim:
        blocks = [torch.arange(h * head_dim, (h + 1) * head_dim, device=device) for h in range(n // head_dim)]
    out: dict[str, Any] = {"n": n, "blocks": None if blocks is None else len(blocks)}
    results = {}
    for mode in ("0", "1"):
        if mode == "1" and device.type != "cuda":
            continue
        old = os.environ.get("STATPRUNE_CUDA_GRAPHS")
        os.environ["STATPRUNE_CUDA_GRAPHS"] = mode
        try:
            idmod.pivoted_cholesky(G, blocks=blocks)  # warm-up (captures the graphs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            chol = idmod.pivoted_cholesky(G, blocks=blocks)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
        finally:
            if old is None:
                os.environ.pop("STATPRUNE_CUDA_GRAPHS", None)
            else:
                os.environ["STATPRUNE_CUDA_GRAPHS"] = old
        key = "graph" if mode == "1" else "eager"
        out[f"{key}_s"] = dt
        out[f"{key}_us_per_step"] = dt / max(chol.rank, 1) * 1e6
        out["rank"] = chol.rank
        results[key] = chol
    if "graph" in results:
        a, b = results["eager"], results["graph"]
        out["graph_equals_eager"] = bool(torch.equal(a.perm, b.perm) and torch.equal(a.L, b.L))
    idmod.clear_workspaces()
    return out


@torch.no_grad()
def bench_gram(tokens: int, dim: int, device: torch.device, *, reps: int = 3) -> dict[str, Any]:
    """One Gram update of ``tokens × dim`` bf16 activations: float64 path vs the fast path."""
    from statprune.calibration import Gram

    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(tokens, dim, generator=g, device=device).to(torch.bfloat16)
    mask = torch.ones(tokens, dtype=torch.bool, device=device)
    ref = Gram(dim, device)
    x64 = x.double()
    ms64 = time_fn(lambda x64=x64: ref.G.addmm_(x64.T, x64), device, warmup=1, reps=reps)
    ref.G.zero_()
    ref.G.addmm_(x64.T, x64)
    del x64
    fast = Gram(dim, device)
    ms_fast = time_fn(lambda: fast(x, mask), device, warmup=1, reps=reps)
    fast.G.zero_()
    fast(x, mask)
    err = float((fast.G - ref.G).norm() / ref.G.norm())
    flops = 2.0 * tokens * dim * dim
    return {
        "tokens": tokens,
        "dim": dim,
        "fp64_ms": ms64,
        "fp64_TFLOPs": _rate(flops, ms64),
        "fast_ms": ms_fast,
        "fast_TFLOPs": _rate(flops, ms_fast),
        "fast_rel_err": err,
    }
