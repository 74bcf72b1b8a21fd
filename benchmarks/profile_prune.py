"""Where a prune's host time goes: cProfile of repeated prunes of one random-weight shape in one process.

Run 1 pays for what a fresh process pays (Triton kernels loaded or compiled, CUDA graphs captured);
later runs show the steady state. Each run prunes a fresh copy of the same dense model, so the kept
units must agree between runs (checked). Prints per run the wall time, the method's stage timings
and the functions with the most own time (cProfile ``tottime``, which charges waiting for the GPU to
the call that synchronises), and writes them as JSON (``--out``). ``--top 0``: no cProfile, so the
times are clean (e.g. a second prune in one process, without start-up costs). ``--kernels N``: the
last run is also traced by torch.profiler, and its CUDA kernels' device time is recorded (total,
by kind and the N largest): whether a prune waits for the GPU or the GPU for the host, and on what.
``--pstats DIR`` keeps each run's whole cProfile (``python -m pstats DIR/run1.pstats``: callers).
``--group-tokens N[,M,…]`` sets the walk's group limit (``statprune.calibration.GROUP_TOKENS``; 0:
one forward per batch), run r taking the r-th value in turn, to measure in one process what
grouping the walk's batches buys.

    PYTHONPATH=$PWD python3 benchmarks/profile_prune.py --shape bert-base --sparsity 0.5 \\
        --calib-size 512 --seq-len 128 --batch-size 64 --runs 2 --out profile_bert.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import io
import json
import pstats
import time
from pathlib import Path

import torch
from pruned_speed import kernel_table, kernel_trace

from statprune import calibration
from statprune.bench.run import BenchConfig, build_model, synthetic_calibration
from statprune.commands.prune import parse_kv
from statprune.pruner import Target, prune
from statprune.runtime import resolve_device, resolve_dtype


def _top(prof: cProfile.Profile, n: int) -> list[dict]:
    stats = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (file, line, fn), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():
        rows.append(
            {
                "function": f"{file.rsplit('/', 2)[-1]}:{line}({fn})",
                "calls": calls,
                "tottime": tottime,
                "cumtime": cumtime,
            }
        )
    return sorted(rows, key=lambda r: -r["tottime"])[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="bert-base")
    ap.add_argument("--method", default="stat")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--calib-size", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--opt", action="append", metavar="KEY=VALUE")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--top", type=int, default=25, help="functions listed per run (0: no cProfile)")
    ap.add_argument("--pstats", default=None, help="directory for each run's raw profile (run<N>.pstats)")
    ap.add_argument("--kernels", type=int, default=0, help="kernels listed for the last run (0: no trace)")
    ap.add_argument(
        "--group-tokens", default=None, help="the walk's GROUP_TOKENS per run, cycled (0: no groups)"
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    limits = [int(v) for v in args.group_tokens.split(",")] if args.group_tokens else []

    cfg = BenchConfig(model=f"random:{args.shape}", layers=args.layers, device=args.device, dtype=args.dtype)
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    dense, _ = build_model(cfg, device, dtype)
    calib = synthetic_calibration(
        args.calib_size, args.seq_len, dense.config.vocab_size, batch_size=args.batch_size, seed=0
    )
    options = {"progress": False, **parse_kv(args.opt)}
    record: dict = {"config": vars(args), "device": str(device), "runs": []}
    kept0 = None
    for r in range(args.runs):
        if limits:
            calibration.GROUP_TOKENS = limits[r % len(limits)]
        model = copy.deepcopy(dense)
        prof = cProfile.Profile() if args.top > 0 else None
        trace = kernel_trace() if args.kernels > 0 and r == args.runs - 1 else contextlib.nullcontext()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        if prof is not None:
            prof.enable()
        with trace:
            target = Target(args.sparsity, args.seq_len)
            res = prune(model, calib, target, method=args.method, seed=0, options=options)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        if prof is not None:
            prof.disable()
            if args.pstats:
                Path(args.pstats).mkdir(parents=True, exist_ok=True)
                prof.dump_stats(Path(args.pstats) / f"run{r + 1}.pstats")
        wall = time.perf_counter() - t
        kept = res.diagnostics.get("kept_units")
        kept0 = kept if kept0 is None else kept0
        run = {"run": r + 1, "wall_s": wall, "timings": res.timings, "same_kept_as_run_1": kept == kept0}
        if limits:
            run["group_tokens"] = calibration.GROUP_TOKENS
        if r == 0:
            run["kept_units"] = kept
        run["top"] = _top(prof, args.top) if prof is not None else []
        if not isinstance(trace, contextlib.nullcontext):
            run["kernels"] = kernel_table(trace, args.kernels)
            print(
                f"kernels: {run['kernels']['device_ms']:.1f} device ms in {run['kernels']['calls']} launches"
            )
            for row in run["kernels"]["top"]:
                print(f"{row['device_ms']:9.1f} {row['calls']:7d}  {row['kernel']}")
        record["runs"].append(run)
        how = "profiled" if prof is not None else "not profiled"
        group = f", group_tokens {calibration.GROUP_TOKENS}" if limits else ""
        print(
            f"\n=== run {r + 1}: {wall:.2f} s ({how}{group}), same kept units as run 1: {run['same_kept_as_run_1']}"
        )
        print("timings:", {k: round(v, 3) for k, v in res.timings.items()})
        if prof is not None:
            print(f"{'tottime':>8} {'cumtime':>8} {'calls':>8}  function")
            for row in run["top"]:
                print(f"{row['tottime']:8.3f} {row['cumtime']:8.3f} {row['calls']:8d}  {row['function']}")
        del model
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
