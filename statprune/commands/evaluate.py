"""``statprune evaluate``: score one model (dense, fine-tuned or pruned) on a task split."""

from __future__ import annotations

import argparse
import time
from typing import Any

from statprune.commands.data_args import add_data_arguments, add_random_head_argument, configure_task


def register(sub: argparse._SubParsersAction) -> None:
    from statprune.commands.prune import HelpFormatter

    p = sub.add_parser(
        "evaluate",
        help="score a model on a task split (accuracy/F1, correlations or perplexity)",
        description="Example: statprune evaluate --model runs/minilm-stat-40 --task movie-sentiment "
        "--split test --json runs/minilm-stat-40/eval.json",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--model", required=True, help="alias, local dir (incl. pruned checkpoints), hub id, random:<shape>"
    )
    p.add_argument("--task", required=True, help="task to score on (statprune assets list shows the data)")
    p.add_argument(
        "--split", default="test", help="split to score (train, dev, test; aliases validation/val)"
    )
    p.add_argument("--batch-size", type=int, default=32, help="evaluation examples per batch")
    p.add_argument("--max-length", type=int, default=None, help="truncation / LM window (None: the task's)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when visible)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument(
        "--json", default=None, metavar="OUT", help="also write the result record here (atomically)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="score only the first N examples of the split (LM tasks: the first N windows); default: all",
    )
    add_random_head_argument(p)
    add_data_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from statprune.data import get_task
    from statprune.errors import StatpruneError
    from statprune.evaluation import evaluate
    from statprune.evaluation.evaluate import SUPPORTED_KINDS
    from statprune.io import write_json_atomic
    from statprune.models import load_model
    from statprune.pipeline import data_record
    from statprune.provenance import provenance
    from statprune.runtime import resolve_device, resolve_dtype

    if args.batch_size < 1:
        raise StatpruneError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise StatpruneError(f"--limit must be ≥ 1, got {args.limit}")
    configure_task(args, args.task)
    task = get_task(args.task)
    split = task.canonical_split(args.split)  # bad input fails before the model loads
    if task.kind not in SUPPORTED_KINDS:
        raise StatpruneError(
            f"evaluation supports {', '.join(SUPPORTED_KINDS)} tasks; {task.name!r} is {task.kind!r}"
        )
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    t0 = time.perf_counter()
    model, tokenizer = load_model(
        args.model,
        task=task,
        dtype=dtype,
        device=str(device),
        random_head="warn" if args.allow_random_head else "refuse",
    )
    t1 = time.perf_counter()
    metrics = evaluate(
        model,
        tokenizer,
        task,
        split,
        batch_size=args.batch_size,
        max_length=args.max_length,
        progress=not args.no_progress,
        limit=args.limit,
    )
    eval_seconds = time.perf_counter() - t1
    print(format_table(args.model, task.name, split, metrics, eval_seconds))
    if args.json:
        record: dict[str, Any] = {
            "model": args.model,
            "task": task.name,
            "split": split,
            "metrics": metrics,
            "limit": args.limit,
            "examples_scored": int(metrics["num_examples"]),
            "config": {
                "batch_size": args.batch_size,
                "max_length": args.max_length if args.max_length is not None else task.max_length,
                "device": str(device),
                "dtype": args.dtype,
            },
            "data": {"evaluation": data_record(task, split)},
            "timings": {"load_seconds": t1 - t0, "eval_seconds": eval_seconds},
            **provenance(),
        }
        write_json_atomic(args.json, record)
        print(f"wrote {args.json}")
    return 0


def format_table(model: str, task: str, split: str, metrics: dict[str, float], seconds: float) -> str:
    """A small two-column table: metrics first, then counts."""
    counts = ("num_examples", "num_tokens", "window")
    rows = [("model", model), ("task", f"{task} ({split})")]
    rows += [(k, f"{v:.4f}") for k, v in metrics.items() if k not in counts]
    rows += [(k, f"{int(v):,}") for k, v in metrics.items() if k in counts]
    rows.append(("seconds", f"{seconds:.1f}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
