"""The README's main job: fine-tune MiniLM-L6 on movie sentiment (cached), prune it with STAT at
several sparsities, evaluate each, and print one table. Every step is a library call that a sweep
uses too; the summary is written as a record next to the printed table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from statprune.provenance import provenance


@dataclass(frozen=True)
class QuickstartConfig:
    model: str = "minilm-l6"
    task: str = "movie-sentiment"
    sparsities: tuple[float, ...] = (0.3, 0.4, 0.5)
    calib_size: int = 512
    seed: int = 0
    out: Path = Path("results/quickstart")


def run_quickstart(cfg: QuickstartConfig = QuickstartConfig()) -> list[dict]:
    from statprune.adapters import get_adapter
    from statprune.data import get_task
    from statprune.evaluation import evaluate
    from statprune.flops import cost_report
    from statprune.io import write_json_atomic
    from statprune.models.finetune import finetune
    from statprune.models.load import load_model
    from statprune.pipeline import PruneJob, resolve_device, run_prune

    task = get_task(cfg.task)
    ckpt = finetune(cfg.model, cfg.task)
    device = str(resolve_device("auto"))
    dense, tok = load_model(str(ckpt), task=task, device=device)
    dense_cost = cost_report(get_adapter(dense), task.flops_seq_len)
    rows = [
        {
            "sparsity": 0.0,
            "flops_kept": 1.0,
            "params": dense_cost.params_total,
            **evaluate(dense, tok, task, "test"),
            "prune_seconds": 0.0,
        }
    ]
    for s in cfg.sparsities:
        model, tok = load_model(str(ckpt), task=task, device=device)
        job = PruneJob(
            model=str(ckpt),
            method="stat",
            sparsity=s,
            calib_task=cfg.task,
            calib_size=cfg.calib_size,
            seed=cfg.seed,
            device=device,
        )
        t0 = time.perf_counter()
        model, tok, res = run_prune(job, model=model, tokenizer=tok)
        rows.append(
            {
                "sparsity": s,
                "flops_kept": res.flops_pruned / res.flops_dense,
                "params": res.params_pruned,
                **evaluate(model, tok, task, "test"),
                "prune_seconds": time.perf_counter() - t0,
            }
        )
    write_json_atomic(
        Path(cfg.out) / "summary.json",
        {"config": {k: str(v) for k, v in vars(cfg).items()}, "rows": rows, **provenance()},
    )
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        "| FLOPs removed (target) | FLOPs kept (achieved) | params | accuracy | F1 | prune s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sparsity']:.0%} | {r['flops_kept']:.1%} | {r['params'] / 1e6:.2f} M | "
            f"{r['accuracy']:.4f} | {r['f1']:.4f} | {r['prune_seconds']:.1f} |"
        )
    return "\n".join(lines)
