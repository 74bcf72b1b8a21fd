"""``statprune bench``: time STAT (or a baseline) at a real model shape and write a JSON record.

Example (Llama-2-7B shape on one GPU)::

    statprune bench --shape llama-2-7b --method stat --sparsity 0.3 --calib-size 128 --seq-len 2048 \\
        --device cuda --dtype bfloat16 --speed
"""

from __future__ import annotations

import argparse
import json
import sys

from statprune.errors import StatpruneError


def register(sub: argparse._SubParsersAction) -> None:
    from statprune.commands.prune import HelpFormatter
    from statprune.pipeline import DEFAULT_BATCH_SIZE

    p = sub.add_parser(
        "bench",
        help="time pruning at a model shape (stages, memory, speed of the pruned model)",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--shape", help="a named shape (random weights), e.g. bert-base, llama-2-7b")
    src.add_argument("--model", help="any model spec: alias, local dir, hub id, random:<shape>")
    p.add_argument("--method", default="stat", help="pruning method")
    p.add_argument("--sparsity", type=float, default=0.3, help="fraction of prunable FLOPs to remove")
    p.add_argument("--calib-size", type=int, default=128, help="calibration sequences")
    p.add_argument(
        "--calib", type=int, dest="calib_deprecated", default=None, help="deprecated spelling of --calib-size"
    )
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per calibration sequence")
    p.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="calibration sequences per forward batch"
    )
    p.add_argument(
        "--flops-seq-len",
        type=float,
        default=None,
        help="FLOPs-model length override (None: --seq-len, capped at the task's mean for non-LM tasks)",
    )
    p.add_argument(
        "--calib-task", default=None, help="real calibration data (a task name) instead of random ids"
    )
    p.add_argument(
        "--num-labels",
        type=int,
        default=0,
        help="encoders: add a random N-class head and random labels (for kwon, which needs a task loss)",
    )
    p.add_argument("--layers", type=int, default=None, help="keep only the first N layers (shape slice)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", default="bfloat16", help="float32, bfloat16 or float16")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration draw and the method")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="method option (repeatable)")
    p.add_argument("--speed", action="store_true", help="measure dense vs pruned inference speed")
    p.add_argument("--speed-batch", type=int, default=32, help="batch of the forward-speed measurement")
    p.add_argument(
        "--speed-seq", type=int, default=128, help="sequence length of the forward-speed measurement"
    )
    p.add_argument("--gen-tokens", type=int, default=32, help="decoder: tokens generated per latency run")
    p.add_argument(
        "--compile",
        action="store_true",
        help="with --speed: also time the torch.compile'd forward (and decode step), direct and graph-replayed",
    )
    p.add_argument(
        "--freeze",
        action="store_true",
        help="with --compile: Inductor freezing (same-input GEMMs such as q/k/v and gate/up fused into one)",
    )
    p.add_argument("--compare-cpu", action="store_true", help="also prune on the CPU and compare the results")
    p.add_argument(
        "--same-as",
        metavar="RECORD",
        default=None,
        help="a bench record of the same run (other code or machine): compare kept units and output error",
    )
    p.add_argument("--ceilings", action="store_true", help="measure copy bandwidth and matmul rates first")
    p.add_argument("--out", default="benchmarks/results", help="folder for the JSON record ('' = none)")
    p.add_argument("--name", default=None, help="record name (None: from the configuration)")
    p.add_argument("--json", action="store_true", help="print the whole record instead of the table")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from statprune.bench.run import BenchConfig, format_table, run_bench
    from statprune.commands.prune import parse_kv

    if args.calib_deprecated is not None:
        print("statprune bench: --calib is deprecated; use --calib-size", file=sys.stderr)
        args.calib_size = args.calib_deprecated
    if args.layers is not None and args.model and not args.model.startswith("random:"):
        raise StatpruneError("--layers needs --shape (or --model random:<shape>)")
    cfg = BenchConfig(
        model=args.model or f"random:{args.shape}",
        method=args.method,
        sparsity=args.sparsity,
        calib_size=args.calib_size,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
        options=parse_kv(args.opt),
        layers=args.layers,
        flops_seq_len=args.flops_seq_len,
        calib_task=args.calib_task,
        num_labels=args.num_labels,
        speed=args.speed,
        speed_batch=args.speed_batch,
        speed_seq=args.speed_seq,
        gen_tokens=args.gen_tokens,
        compile=args.compile,
        freeze=args.freeze,
        compare_cpu=args.compare_cpu,
        same_as=args.same_as,
        ceilings=args.ceilings,
        out_dir=args.out or None,
        name=args.name,
    )
    record = run_bench(cfg)
    print(json.dumps(record, indent=2, default=str) if args.json else format_table(record))
    if "path" in record:
        print(f"record: {record['path']}")
    return 0
