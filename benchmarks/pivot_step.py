"""Micro-benchmark: STAT's pivoted Cholesky with the fused Triton step vs the torch step.

For each n, random float64 Grams (G = XᵀX with X = randn(2n, n), and a rank-n/4 case) are factored
over the full curve (and with ``max_steps = 0.7 n``), with the fused step on and off (the
``fused=`` argument of ``pivoted_cholesky``), after a warm-up that compiles the kernels and records
the CUDA graphs. Prints µs per pivot step, the speedup, whether the pivots are identical and the
largest |ΔL|, and writes the rows as JSON (``--out``).

GPU:  python benchmarks/pivot_step.py --out pivot_step.json          (H200: well under 3 minutes)
CPU:  python benchmarks/pivot_step.py --device cpu --sizes 64,128    (torch step only: a smoke test)
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from statprune.stat.id import clear_workspaces, pivoted_cholesky, triton_available


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _time(G: torch.Tensor, kw: dict, reps: int) -> tuple[float, float, object]:
    """(first-call seconds, best-of-reps seconds, result)."""
    _sync(G.device)
    t = time.perf_counter()
    out = pivoted_cholesky(G, **kw)
    _sync(G.device)
    cold = time.perf_counter() - t
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        out = pivoted_cholesky(G, **kw)
        _sync(G.device)
        best = min(best, time.perf_counter() - t)
    return cold, best, out


def _grams(n: int, dev: torch.device, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator(device=dev).manual_seed(seed)
    X = torch.randn(2 * n, n, generator=g, device=dev, dtype=torch.float64)
    full = X.T @ X
    r = max(n // 4, 1)
    del X
    Y = torch.randn(2 * n, r, generator=g, device=dev, dtype=torch.float64)
    Y = Y @ torch.randn(r, n, generator=g, device=dev, dtype=torch.float64)
    return {"full_rank": full, f"rank_{r}": Y.T @ Y}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sizes", default="768,1536,3072,4096,11008,14336")
    ap.add_argument(
        "--block-size", type=int, default=None, help="pivoted_cholesky's block_size (default: its own)"
    )
    ap.add_argument("--reps", type=int, default=2, help="timed runs per setting (best is kept)")
    ap.add_argument("--no-max-steps", action="store_true", help="skip the max_steps = 0.7 n runs")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    dev = torch.device(args.device)
    modes = [False, True] if dev.type == "cuda" and triton_available() else [False]
    if dev.type == "cuda" and len(modes) == 1:
        print("triton unavailable (or STATPRUNE_TRITON=0): timing the torch step only")
    rows = []
    hdr = f"{'n':>6} {'case':<14} {'steps':>6} {'torch µs':>9} {'fused µs':>9} {'speedup':>7} {'perm=':>5} {'max|ΔL|':>9}"
    print(hdr)
    for n in [int(s) for s in args.sizes.split(",")]:
        for name, G in _grams(n, dev, seed=n).items():
            for cap in [None] if args.no_max_steps else [None, int(0.7 * n)]:
                res = {}
                for fused in modes:
                    cold, best, out = _time(
                        G, {"max_steps": cap, "fused": fused, "block_size": args.block_size}, args.reps
                    )
                    res[fused] = (cold, best, out)
                ref = res[False][2]
                row = {
                    "n": n,
                    "case": name,
                    "max_steps": cap,
                    "steps": ref.rank,
                    "torch_us_per_step": 1e6 * res[False][1] / max(ref.rank, 1),
                    "torch_first_call_s": res[False][0],
                }
                if True in res:
                    got = res[True][2]
                    same_rank = got.rank == ref.rank
                    dL = float((got.L - ref.L).abs().max()) if same_rank and ref.rank else float("nan")
                    dres = float((got.residual - ref.residual).abs().max()) if same_rank else float("nan")
                    row |= {
                        "fused_us_per_step": 1e6 * res[True][1] / max(got.rank, 1),
                        "fused_first_call_s": res[True][0],
                        "speedup": res[False][1] / res[True][1],
                        "fused_steps": got.rank,
                        "perm_identical": same_rank and bool(torch.equal(got.perm, ref.perm)),
                        "max_abs_dL": dL,
                        "max_rel_dL": dL / float(ref.L.abs().max()) if ref.rank else 0.0,
                        "max_rel_dresidual": dres / float(ref.residual[0]),
                    }
                rows.append(row)
                label = name if cap is None else f"{name}@{cap}"
                f = (
                    f"{row['fused_us_per_step']:9.1f} {row['speedup']:7.2f} {row['perm_identical']!s:>5} "
                    f"{row['max_abs_dL']:9.1e}"
                    if "speedup" in row
                    else f"{'-':>9} {'-':>7} {'-':>5} {'-':>9}"
                )
                print(f"{n:>6} {label:<14} {row['steps']:>6} {row['torch_us_per_step']:9.1f} {f}", flush=True)
            del G
        clear_workspaces()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    record = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "triton": _triton_version(),
        "fused_available": len(modes) == 2,
        "reps": args.reps,
        "block_size": args.block_size,
        "rows": rows,
    }
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(record, fh, indent=1)
        print(f"wrote {args.out}")


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
