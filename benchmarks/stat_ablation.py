"""STAT ablation on the real packaged models: allocation (greedy | paper) × correction × repropagation.

Measures dense vs STAT on MiniLM-L6 fine-tuned on movie-sentiment (test accuracy) and SmolLM2-135M on
sotu (test perplexity) at several sparsities. The measure walk (per-layer error curves) depends only
on the model and calibration data, so it runs once per (model, repropagate-independent) setting and
each variant then runs its own allocation and apply walk; the reported prune time is measure + apply.

    python benchmarks/stat_ablation.py --model minilm --out benchmarks/results/stat_ablation_minilm.json
    python benchmarks/stat_ablation.py --model smollm2 --calib-size 32 --max-length 256 \
        --out benchmarks/results/stat_ablation_smollm2.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from statprune.adapters import get_adapter
from statprune.calibration import LayerWalk
from statprune.data import get_task
from statprune.evaluation import evaluate
from statprune.flops import prunable_flops
from statprune.io import write_json_atomic
from statprune.models.finetune import finetune
from statprune.models.load import load_model
from statprune.pipeline import DEFAULT_BATCH_SIZE, calibration_for, data_record, flops_seq_len
from statprune.provenance import provenance
from statprune.pruner import Target, parse_options
from statprune.stat.prune import StatOptions, _Timer, allocate, apply_pruning, measure_curves

# every variant names its allocation rule: a variant must not change meaning when a default does
VARIANTS = {
    "greedy": {"allocation": "greedy"},
    "paper": {"allocation": "paper"},
    "greedy, no correction": {"allocation": "greedy", "correction": False},
    "paper, no correction": {"allocation": "paper", "correction": False},
    "greedy, no repropagation": {"allocation": "greedy", "repropagate": False},
    "paper, no repropagation": {"allocation": "paper", "repropagate": False},
}
SETUPS = {
    "minilm": {"model": "minilm-l6", "task": "movie-sentiment", "metric": "accuracy", "finetune": True},
    "smollm2": {"model": "smollm2-135m", "task": "sotu", "metric": "perplexity", "finetune": False},
}


def format_table(rows: list[dict], metric: str) -> str:
    """Markdown: one row per variant, one column per sparsity: metric (achieved sparsity, prune s)."""
    sparsities = sorted({r["sparsity"] for r in rows if r["variant"] != "dense"})
    dense = next(r for r in rows if r["variant"] == "dense")
    lines = [
        f"| variant | {' | '.join(f'{s:.0%} removed' for s in sparsities)} |",
        "|---|" + "---:|" * len(sparsities),
        f"| dense | {dense[metric]:.4g} |" + " |" * (len(sparsities) - 1),
    ]
    for name in dict.fromkeys(r["variant"] for r in rows if r["variant"] != "dense"):
        cells = []
        for s in sparsities:
            hit = [r for r in rows if r["variant"] == name and r["sparsity"] == s]
            cells.append(
                f"{hit[0][metric]:.4g} ({hit[0]['achieved']:.1%}, {hit[0]['prune_seconds']:.0f} s)"
                if hit
                else "–"
            )
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=SETUPS, required=True)
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.4, 0.5])
    ap.add_argument("--calib-size", type=int, default=512)
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", required=True)
    ap.add_argument("--table", action="store_true", help="only print the table of an existing --out record")
    args = ap.parse_args()
    if args.table:
        rec = json.loads(Path(args.out).read_text())
        print(format_table(rec["rows"], rec["setup"]["metric"]))
        return
    setup = SETUPS[args.model]
    task = get_task(setup["task"])
    spec = str(finetune(setup["model"], setup["task"])) if setup["finetune"] else setup["model"]
    dense, tok = load_model(spec, task=task)
    max_length = args.max_length or task.max_length
    calib = calibration_for(
        task, tok, args.calib_size, args.seed, max_length=max_length, batch_size=DEFAULT_BATCH_SIZE
    )
    seq_len = flops_seq_len(task, args.max_length)  # the pipeline's rule, as every entry point
    t0 = time.perf_counter()
    dense_metrics = evaluate(dense, tok, task, "test", max_length=max_length)
    rows = [
        {
            "variant": "dense",
            "sparsity": 0.0,
            "achieved": 0.0,
            **dense_metrics,
            "prune_seconds": 0.0,
            "eval_seconds": time.perf_counter() - t0,
        }
    ]
    print(rows[0], flush=True)

    curves_cache: dict[str, tuple] = {}
    # sparsity-major order: every variant at the first sparsity finishes before the next sparsity starts
    for s in args.sparsities:
        for name in args.variants:
            opts: StatOptions = parse_options(StatOptions, {**VARIANTS[name], "progress": False})
            key = f"{opts.gqa}/{opts.error_norm}"
            if key not in curves_cache:
                model = copy.deepcopy(dense)
                ad = get_adapter(model)
                timer = _Timer(ad.device)
                t0 = time.perf_counter()
                with torch.no_grad():
                    walk = LayerWalk(ad, calib)
                    curves = measure_curves(ad, walk, Target(0.5, seq_len), opts, timer, True)
                curves_cache[key] = (curves, time.perf_counter() - t0)
            curves, measure_s = curves_cache[key]
            model = copy.deepcopy(dense)
            ad = get_adapter(model)
            f_dense = prunable_flops(ad, seq_len)
            timer = _Timer(ad.device)
            t0 = time.perf_counter()
            with torch.no_grad():
                kept = allocate(ad, curves, Target(s, seq_len, f_dense), opts)
                walk = LayerWalk(ad, calib)
                apply_pruning(ad, walk, kept, opts, timer, False)
            apply_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            metrics = evaluate(model, tok, task, "test", max_length=max_length, progress=False)
            row = {
                "variant": name,
                "sparsity": s,
                "achieved": 1 - prunable_flops(ad, seq_len) / f_dense,
                **metrics,
                "prune_seconds": measure_s + apply_s,
                "measure_seconds": measure_s,
                "apply_seconds": apply_s,
                "eval_seconds": time.perf_counter() - t0,
                "layers": [x.to_dict() for x in ad.shapes()],
            }
            rows.append(row)
            print({k: v for k, v in row.items() if k != "layers"}, flush=True)
            write_json_atomic(
                args.out,
                {
                    "setup": setup,
                    "args": vars(args),
                    "calib_tokens": calib.num_tokens,
                    "data": {"calibration": data_record(task, "train", calib)},
                    "seq_len": seq_len,
                    "rows": rows,
                    **provenance(),
                },
            )
    print(format_table(rows, setup["metric"]))


if __name__ == "__main__":
    main()
