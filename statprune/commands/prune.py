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


def method_names() -> list[str]:
    """Registered pruning methods (the name table: no method module is imported)."""
    from statprune.methods import METHOD_PATHS

    return sorted(METHOD_PATHS)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every optional argument's help ends with its default; ``--method`` lists the registered
    methods, read only when help is printed (building the parser imports no method module)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.dest == "method":
            text += " (one of: " + ", ".join(method_names()) + ")"
        shown = not any(action.default is x for x in (None, False, argparse.SUPPRESS))
        if action.option_strings and not action.required and shown and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def register(sub: argparse._SubParsersAction) -> None:
    from statprune.pipeline import DEFAULT_BATCH_SIZE

    p = sub.add_parser(
        "prune",
        help="prune a model and save the smaller checkpoint",
        description="Example: statprune prune --model minilm-l6 --method stat --sparsity 0.4 "
        "--calib-task movie-sentiment --calib-size 512 --out runs/minilm-stat-40",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", required=True, help="alias, local dir, hub id, or random:<shape>")
    p.add_argument("--method", default="stat", help="pruning method")
    p.add_argument(
        "--sparsity", type=float, required=True, help="fraction of prunable FLOPs to remove, in [0, 1)"
    )
    p.add_argument("--calib-task", required=True, help="task whose examples calibrate the pruning")
    p.add_argument("--calib-size", type=int, default=512, help="calibration examples (LM: windows)")
    p.add_argument("--calib-split", default="train", help="split the calibration examples come from")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration draw and the method")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="method option (repeatable)")
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="truncation / LM window; also the FLOPs length (LM) or its cap (None: the task's)",
    )
    p.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="calibration examples per forward batch"
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when visible)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument(
        "--seq-len",
        type=float,
        default=None,
        help="FLOPs-model sequence length override (None: --max-length for LM, else the task's)",
    )
    p.add_argument(
        "--out", required=True, help="checkpoint folder (new, or an existing statprune checkpoint)"
    )
    add_random_head_argument(p)
    add_data_arguments(p, task_flag="--calib-task")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from statprune.models.checkpoint import REPORT_NAME, check_output_dir, save_pruned
    from statprune.pipeline import PruneJob, run_prune
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
        random_head="warn" if args.allow_random_head else "refuse",
    )
    job.validate()
    check_output_dir(args.out)
    run = run_prune(job)
    result = run.result
    report = {**run.report(), "model": args.model, "calib_task": args.calib_task, **provenance()}
    save_pruned(run.model, run.tokenizer, args.out, report)
    print(
        f"{args.method}: removed {result.sparsity_achieved:.1%} of prunable FLOPs "
        f"(target {args.sparsity:.1%}) at seq_len {result.seq_len:g}; params {result.params_dense:,} → "
        f"{result.params_pruned:,}; {result.prune_seconds:.1f} s"
    )
    auto = result.diagnostics.get("auto_options")
    if auto:  # what an option left at `auto` became for this model (STAT: decoder vs encoder defaults)
        print("auto options: " + ", ".join(f"{k}={v}" for k, v in auto.items()))
    print(f"wrote {args.out} and {args.out}/{REPORT_NAME}")
    return 0
