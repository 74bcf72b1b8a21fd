"""``statprune finetune``: fine-tune an encoder on a classification/regression task (cached)."""

from __future__ import annotations

import argparse
from pathlib import Path

from statprune.commands.data_args import add_data_arguments, configure_task

# FinetuneConfig field → (type, help); unset flags keep FinetuneConfig's defaults (not imported here:
# statprune.models pulls in torch, and building the CLI parser must stay fast)
_CONFIG_FLAGS = {
    "epochs": (int, "training epochs (default 2)"),
    "lr": (float, "peak learning rate (default 1e-4)"),
    "batch_size": (int, "training batch size (default 32)"),
    "max_length": (int, "truncation length in tokens (default 64)"),
    "warmup_ratio": (float, "fraction of steps with linear warmup (default 0.1)"),
    "weight_decay": (float, "AdamW weight decay on matrices (default 0.01)"),
    "seed": (int, "seed of the head init and data order (default 0)"),
    "dtype": (str, "float32 | bfloat16 | float16 (default float32)"),
    "eval_limit": (int, "score only the first N dev examples after each epoch (default: all)"),
}


def register(sub: argparse._SubParsersAction) -> None:
    from statprune.commands.prune import HelpFormatter

    p = sub.add_parser(
        "finetune",
        help="fine-tune an encoder on a task; prints the (cached) checkpoint folder",
        description="Example: statprune finetune --model minilm-l6 --task movie-sentiment. The checkpoint "
        "is cached by (model, task, data content hash, config, version): asking again returns it "
        "without training; changed data trains again.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", required=True, help="alias, local dir, hub id, or random:<shape>")
    p.add_argument("--task", required=True, help="a classification or regression task")
    p.add_argument("--out", default=None, help="checkpoint folder (None: the cache, by key hash)")
    for name, (typ, help_) in _CONFIG_FLAGS.items():
        flags = ["--" + name.replace("_", "-")] + (["--limit"] if name == "eval_limit" else [])
        p.add_argument(*flags, dest=name, type=typ, default=None, help=help_)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when visible)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_data_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from statprune.models.finetune import FinetuneConfig, finetune, read_report

    configure_task(args, args.task)
    given = {name: getattr(args, name) for name in _CONFIG_FLAGS if getattr(args, name) is not None}
    config = FinetuneConfig(**given)
    path = finetune(
        args.model,
        args.task,
        config,
        out_dir=Path(args.out) if args.out else None,
        device=args.device,
        progress=not args.no_progress,
    )
    report = read_report(path) or {}
    dev = report.get("dev_metrics", {})
    metric = report.get("primary_metric", "accuracy")
    summary = ", ".join(f"{k} {v:.4f}" for k, v in dev.items() if k not in ("num_examples", "num_tokens"))
    print(f"checkpoint: {path}")
    print(
        f"dev {metric}: {dev.get(metric, float('nan')):.4f} (best epoch {report.get('best_epoch')} of "
        f"{len(report.get('epochs', []))}; {summary}; trained in {report.get('seconds', 0.0):.0f} s)"
    )
    return 0
