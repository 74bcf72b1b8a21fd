"""One sweep run → one record: load, fine-tune (cached), calibrate, prune, evaluate, write.

This module holds the function every executor runs (in-process, a local process or a SLURM job),
so it must be importable from the installed package. A run first claims its lock (see
:mod:`statprune.sweep.store`); a run someone else holds is not run twice. Any exception inside the
run becomes a ``failed`` record with the traceback: a sweep never stops for one bad run. A ``done``
record whose fingerprint does not match the current code (:mod:`statprune.sweep.fingerprint`) is
moved to ``outdated/`` and the run runs again, unless the launch keeps outdated records.

The dense model's metrics are cached per (model, fine-tune, task, data hash, split, length, batch, dtype) under
``<results>/.dense/`` behind a file lock, so a hundred runs of one model evaluate it once; the
fine-tuned checkpoint is cached by :func:`statprune.models.finetune.finetune` and trained under a
file lock, so two runs never train the same fine-tune.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from statprune import __version__
from statprune.errors import StatpruneError
from statprune.methods import METHODS
from statprune.provenance import git_commit, peak_memory_bytes, source_sha256, versions
from statprune.sweep import owners
from statprune.sweep import tracking as tracking_mod
from statprune.sweep.config import RunConfig, thaw
from statprune.sweep.fingerprint import RECORD_FORMAT, expected_stamp, outdated_reason, stamp, without_neutral
from statprune.sweep.store import FINAL, RunStore, atomic_write_json, exclusive, now_iso, read_json
from statprune.sweep.tracking import TrackingConfig

try:  # submitit is there wherever jobs are submitted; in-process runs do not need it
    from submitit.helpers import Checkpointable
except ImportError:  # pragma: no cover
    Checkpointable = object  # type: ignore[assignment,misc]


@dataclass(frozen=True)
class RunTask:
    """What a job needs: the run, where its record goes, and how this launch runs it."""

    run_id: str
    name: str
    study: str
    config: RunConfig
    results_dir: str  # absolute results root; the record is <results_dir>/<study>/<run_id>.json
    launch_id: str
    tracking: TrackingConfig = TrackingConfig(enabled=False)  # noqa: RUF009  (frozen: safe to share)
    threads: int | None = None  # torch threads; None = the job's CPUs (SLURM_CPUS_PER_TASK) if known
    replace: tuple[str, ...] = ()  # final statuses this launch may overwrite (--retry-failed)
    keep_outdated: bool = False  # a done record made by other code counts as done (--keep-outdated)


class JobTerminated(BaseException):
    """SIGTERM reached the job (scancel, preemption, node shutdown): stop and record ``cancelled``.

    A BaseException, so library code catching Exception does not swallow it.
    """


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """While the run computes, turn SIGTERM into :class:`JobTerminated`.

    submitit ignores SIGTERM (it checkpoints on USR2), so without this a cancelled job would keep
    computing until SLURM kills it, with its helpers (wandb) already gone, and end as ``failed``.
    Only in jobs (SLURM or submitit local), only in the main thread; the previous handler returns
    afterwards, so writing the record is never interrupted.
    """
    import signal
    import threading

    in_job = bool(os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID"))
    if not in_job or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise JobTerminated("the job received SIGTERM (scancel, preemption or shutdown)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class RunJob(Checkpointable):
    """The submitted callable; checkpointable so a SLURM timeout/preemption requeues the run."""

    def __call__(self, task: RunTask) -> dict[str, Any]:
        return run_task(task)


def _say(task: RunTask, msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {task.name} ({task.run_id}): {msg}", flush=True)


def run_task(task: RunTask) -> dict[str, Any]:
    """Claim, run and record one run. Returns ``{run_id, status}``; status ``held``/``skipped``
    means this job did nothing because another launch holds the run or it is already final."""
    store = RunStore(task.results_dir, task.study)
    claim = store.claim(task.run_id, owners.identity(task.launch_id, "job"))
    if not claim.ok:
        _say(task, f"held elsewhere ({claim.detail}); not running it")
        return {"run_id": task.run_id, "status": "held", "detail": claim.detail}
    current = store.read(task.run_id) or {}
    status = current.get("status")
    same_launch = current.get("launch_id") == task.launch_id
    outdated = None
    if status == "done" and not task.keep_outdated:
        try:
            expected = expected_stamp(task.config.method, thaw(task.config.method_options))
        except StatpruneError as e:  # an option removed since: the record is outdated, the run fails
            outdated = f"its method options no longer parse: {e}"
        else:
            outdated = outdated_reason(current, expected)
    if (status == "done" and not outdated) or (
        status in FINAL
        and status != "done"
        # another launch's final record (unless retrying), or this launch's driver gave up on it;
        # this launch's own job-written "cancelled" (a preempted job, now requeued) is run again
        and (
            (not same_launch and status not in task.replace)
            or (same_launch and current.get("recorded_by") == "driver")
        )
    ):
        store.release(task.run_id, task.launch_id)
        _say(task, f"already {current['status']}; not running it")
        return {"run_id": task.run_id, "status": "skipped", "detail": f"already {current['status']}"}

    if outdated:
        path = store.archive(current, outdated)
        _say(task, f"outdated record ({outdated}) moved to {path}; running it again")

    threads = _set_threads(task.threads)
    base: dict[str, Any] = {
        "run_id": task.run_id,
        "name": task.name,
        "study": task.study,
        "status": "running",
        "record_format": RECORD_FORMAT,
        "config": task.config.to_dict(),
        "launch_id": task.launch_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": owners.slurm_job_id(),
        "threads": threads,
        "versions": versions(),
        "git_commit": git_commit(),
        "source_sha256": source_sha256(),
        "started": now_iso(),
        "attempt": int(current.get("attempt") or 0) + 1,  # starts of this run, this one included
    }
    tracker = tracking_mod.Tracker()
    t0 = time.perf_counter()
    try:
        with _stop_on_sigterm():
            store.write(base)
            tracker = tracking_mod.start(
                task.tracking, name=task.name, run_id=task.run_id, config=task.config.to_dict()
            )
            _say(task, f"started on {base['host']} (threads={threads}, job={base['slurm_job_id']})")
            result = execute(task.config, store, lambda msg: _say(task, msg))
        record = {**base, **result, **stamp(result["method_options_resolved"]), "status": "done"}
    except JobTerminated as e:
        record = {
            **base,
            "status": "cancelled",
            "error": {
                "type": "JobTerminated",
                "message": str(e),
                "traceback": traceback.format_exc(),
                "job_state": "SIGTERM",
            },
            "recorded_by": "job",
        }
    except Exception as e:
        tb = traceback.format_exc()
        print(tb, file=sys.stderr, flush=True)
        record = {
            **base,
            "status": "failed",
            "error": {"type": type(e).__name__, "message": str(e), "traceback": tb},
        }
    total = time.perf_counter() - t0
    _free_memory()  # inline sweeps run many models in one process
    record["timings"] = {"total_seconds": total, **record.get("timings", {})}
    record["finished"] = now_iso()
    record.setdefault("peak_memory_bytes", peak_memory_bytes(None))
    record["wandb_run"] = tracker.path
    tracker.log_result(record)
    tracker.finish(failed=record["status"] != "done")
    store.write(record)
    store.release(task.run_id, task.launch_id)
    _say(task, f"{record['status']} in {total:.1f}s")
    return {"run_id": task.run_id, "status": record["status"]}


# ---- the run itself -------------------------------------------------------------------------------


def execute(cfg: RunConfig, store: RunStore, say: Any = print) -> dict[str, Any]:
    """Run one config; returns the record fields metrics, dense_metrics, prune, data, timings, ..."""
    import torch

    from statprune.data import get_task
    from statprune.data.local import data_identity
    from statprune.evaluation import evaluate
    from statprune.models.load import load_model
    from statprune.pipeline import data_record, limited, resolve_device, resolve_dtype, run_prune
    from statprune.timing import StageTimer

    job = cfg.prune_job()
    job.validate()
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timer = StageTimer()
    task = get_task(cfg.task)
    eval_task = limited(task, cfg.eval_split, cfg.eval_limit)

    model_spec = cfg.model
    if cfg.finetune is not None:
        with timer("finetune"):
            say("fine-tune (cached)")
            model_spec = str(finetuned_model(cfg, str(device)))
    with timer("load"):
        say(f"load {model_spec} ({cfg.dtype}, {device})")
        model, tokenizer = load_model(
            model_spec, task=task, dtype=resolve_dtype(cfg.dtype), device=str(device), random_head="refuse"
        )

    def run_eval() -> dict[str, float]:
        return evaluate(
            model,
            tokenizer,
            eval_task,
            cfg.eval_split,
            batch_size=cfg.eval_batch_size,
            max_length=cfg.max_length,
            device=str(device),
            limit=cfg.limit,
        )

    with timer("dense_eval"):
        dense, dense_cached = dense_metrics(cfg, store.root, run_eval, data_identity(task))
        say(f"dense {cfg.task}/{cfg.eval_split}: {_fmt(dense)}" + (" (cached)" if dense_cached else ""))
    run = run_prune(job, model=model, tokenizer=tokenizer, timer=timer, say=say)
    report = run.result.to_dict()
    # one copy in the record: method_options_resolved (less options at a neutral default, as the
    # fingerprint that resumes compare against)
    resolved = without_neutral(METHODS.get(cfg.method)[1], report.pop("options"))
    with timer("eval"):
        metrics = run_eval()
        say(
            f"pruned {cfg.task}/{cfg.eval_split}: {_fmt(metrics)} (sparsity {report['sparsity_achieved']:.3f})"
        )
    return {
        "metrics": metrics,
        "dense_metrics": dense,
        "dense_cached": dense_cached,
        "prune": report,
        "method_options_resolved": resolved,
        "data": {**run.data, "evaluation": data_record(eval_task, cfg.eval_split)},
        "timings": {f"{stage}_seconds": s for stage, s in timer.totals.items()},
        "peak_memory_bytes": peak_memory_bytes(str(device)),
        "device": str(device),
        "model_path": model_spec if model_spec != cfg.model else None,
        "examples_scored": int(metrics["num_examples"]),
    }


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def _key_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dense_metrics(
    cfg: RunConfig, results_root: Path, evaluate_dense: Any, data: Any = None
) -> tuple[dict[str, float], bool]:
    """The dense model's metrics for this (model, fine-tune, task, split, ...), computed once.

    Concurrent jobs needing the same entry wait on a file lock instead of evaluating twice. ``data``
    identifies local data by content, so an edited file is evaluated again.
    """
    from statprune.data import get_task

    key = {
        "model": cfg.model,
        "finetune": thaw(cfg.finetune),
        "task": cfg.task,
        "split": cfg.eval_split,
        "limit": cfg.eval_limit,
        "max_length": cfg.max_length,
        "batch_size": cfg.eval_batch_size,
        "dtype": cfg.dtype,
        "data_sha256": get_task(cfg.task).provenance().get("content_sha256"),  # changed data: evaluate again
        "statprune": __version__,  # a release may change data preparation: never reuse across versions
    }
    if cfg.limit is not None:  # set only: the keys of earlier entries stay valid
        key["examples"] = cfg.limit
    if data is not None:
        key["data"] = data
    h = _key_hash(key)
    path = results_root / ".dense" / f"{h}.json"
    with exclusive(results_root / ".dense" / f"{h}.lock"):
        hit = read_json(path)
        if hit is not None and hit.get("key") == key:
            return hit["metrics"], True
        t0 = time.perf_counter()
        metrics = evaluate_dense()
        atomic_write_json(
            path, {"key": key, "metrics": metrics, "seconds": time.perf_counter() - t0, "created": now_iso()}
        )
        return metrics, False


def finetuned_model(cfg: RunConfig, device: str | None = None) -> Path:
    """The fine-tuned checkpoint for this run, trained at most once.

    :func:`statprune.models.finetune.finetune` caches by (model, task, config) and trains under a
    file lock, so a second job needing the same fine-tune waits and then finds it in the cache.
    """
    from statprune.models.finetune import finetune

    return Path(finetune(cfg.model, cfg.task, finetune_config(cfg), device=device))


def finetune_cached(cfg: RunConfig) -> bool:
    """Whether this run's fine-tune is already in the cache (the driver then skips the stage job)."""
    from statprune.models.finetune import finetune_key, finetuned_path, read_report

    config = finetune_config(cfg)
    report = read_report(finetuned_path(cfg.model, cfg.task, config))
    return report is not None and report.get("key") == finetune_key(cfg.model, cfg.task, config)


def finetune_config(cfg: RunConfig) -> Any:
    """The spec's ``[finetune]`` table as :class:`statprune.models.finetune.FinetuneConfig`."""
    from statprune.models.finetune import FinetuneConfig
    from statprune.pruner import parse_options

    return parse_options(FinetuneConfig, thaw(cfg.finetune) or {})


def finetune_stage_job(arg: tuple[RunConfig, str]) -> dict[str, Any]:
    """The fine-tune stage job, ``(RunConfig, results_dir)`` → ``{path, seconds}``: train (or find
    cached) one fine-tune before the runs that need it."""
    cfg, _results_dir = arg
    _set_threads(None)
    t0 = time.perf_counter()
    from statprune.runtime import resolve_device

    path = finetuned_model(cfg, str(resolve_device(cfg.device)))
    return {"path": str(path), "seconds": time.perf_counter() - t0}


# ---- environment ------------------------------------------------------------------------------


def _set_threads(threads: int | None) -> int | None:
    """Use the job's CPUs: an explicit count, else SLURM_CPUS_PER_TASK; otherwise leave torch alone."""
    import torch

    if threads is None:
        env = os.environ.get("SLURM_CPUS_PER_TASK")
        threads = int(env) if env and env.isdigit() else None
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _free_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass
