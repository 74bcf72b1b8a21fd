"""Benchmarks at real model shapes: pruning time per stage, peak memory, speed of the pruned model.

``statprune bench`` (:mod:`statprune.bench.cli`) runs :func:`statprune.bench.run.run_bench` and
writes one JSON record per run under ``benchmarks/results/``; :mod:`statprune.bench.ceilings`
measures the device's copy bandwidth and matrix rates that docs/BENCHMARKS.md compares with.
"""

from statprune.bench.run import BenchConfig, run_bench

__all__ = ["BenchConfig", "run_bench"]
