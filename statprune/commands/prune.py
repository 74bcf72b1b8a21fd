"""``statprune prune``: prune one model and write the checkpoint plus ``prune_report.json``."""

from __future__ import annotations

import argparse

from statprune.commands.data_args import add_data_arguments, add_random_head_argument, configure_task
from statprune.errors import StatpruneError


def parse_kv(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise StatpruneError(f"--opt expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune",
        help="prune a model and save the smaller checkpoint",
        description="Example: statprune prune --model minilm-l6 --method stat --sparsity 0.4 "
        "--calib-task movie-sentiment --calib-size 512 --out runs/minilm-stat-40",
    )
    p.add_argument("--model", required=True, help="alias, local dir, hub id, or random:<shape>")
    p.add_argument("--method", default="stat")
    p.add_argument(
        "--sparsity", type=float, required=True, help="fraction of prunable FLOPs to remove, in [0, 1)"
    )
    p.add_argument("--calib-task", required=True)
    p.add_argument("--calib-size", type=int, default=512)
    p.add_argument("--calib-split", default="train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="method option (repeatable)")
    p.add_argument(
        "--max-length", type=int, default=None, help="truncation / LM window (default: the task's)"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument(
        "--seq-len", type=float, default=None, help="FLOPs-model sequence length (default: the task's)"
    )
    p.add_argument(
        "--out", required=True, help="checkpoint folder (new, or an existing statprune checkpoint)"
    )
    add_random_head_argument(p)
    add_data_arguments(p, task_flag="--calib-task")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from statprune.adapters import get_adapter
    from statprune.data import get_task
    from statprune.data.local import data_provenance
    from statprune.models.checkpoint import REPORT_NAME, check_output_dir, save_pruned
    from statprune.models.load import check_head, load_model, random_head_keys
    from statprune.pipeline import PruneJob, resolve_device, resolve_dtype, run_prune
    from statprune.provenance import provenance

    configure_task(args, args.calib_task)

    job = PruneJob(
        model=args.model,
        method=args.method,
        sparsity=args.sparsity,
        calib_task=args.calib_task,
        calib_size=args.calib_size,
        seed=args.seed,
        options=parse_kv(args.opt),
        calib_split=args.calib_split,
        max_length=args.max_length,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        seq_len=args.seq_len,
    )
    job.validate()
    check_output_dir(args.out)
    task = get_task(args.calib_task)
    model, tokenizer = load_model(  # here, not in run_prune: a random task head is refused first
        args.model,
        task=task,
        dtype=resolve_dtype(args.dtype),
        device=str(resolve_device(args.device)),
        random_head="allow",
    )
    get_adapter(model)  # an architecture without an adapter is the first thing to say
    policy = "warn" if args.allow_random_head else "refuse"
    check_head(args.model, task, random_head_keys(model), policy)
    model, tokenizer, result = run_prune(job, model=model, tokenizer=tokenizer)
    report = {
        **result.to_dict(),
        "model": args.model,
        "calib_task": args.calib_task,
        "calib_data": data_provenance(task),
        **provenance(),
    }
    save_pruned(model, tokenizer, args.out, report)
    print(
        f"{args.method}: removed {result.sparsity_achieved:.1%} of prunable FLOPs "
        f"(target {args.sparsity:.1%}); params {result.params_dense:,} → {result.params_pruned:,}; "
        f"{result.prune_seconds:.1f} s"
    )
    print(f"wrote {args.out} and {args.out}/{REPORT_NAME}")
    return 0
