"""Where runs execute: ``inline`` (this process), ``local`` (submitit local processes) or ``slurm``.

Every executor takes (key, callable, argument) items and reports back one :class:`Outcome` per
item: the callable's return value, or ``lost`` when the job ended without one (cancelled, killed,
out of memory, timed out for good) together with the scheduler's state, so the driver can record it
instead of waiting forever. SLURM jobs are seen through accounting (one ``sacct`` for all jobs per
poll), which is why a cancelled job is noticed within a poll interval.

Cluster profiles (``slurm/*.toml``) hold the site's sbatch settings; see slurm/gpu-example.toml.
"""

from __future__ import annotations

import dataclasses
import os
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statprune.errors import StatpruneError
from statprune.io import load_toml
from statprune.registry import Registry
from statprune.sweep import owners

# Scheduler states after which a job without a result will never produce one.
INCOMPLETE = {"READY", "PENDING", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING", "PREEMPTED", "CONFIGURING"}


@dataclass(frozen=True)
class Item:
    key: str  # run_id, or "finetune:<hash>" for a stage job
    fn: Callable[[Any], Any]
    arg: Any


@dataclass(frozen=True)
class Outcome:
    key: str
    ok: bool  # the callable returned
    value: Any = None  # what it returned (ok) or None
    state: str = ""  # scheduler state when lost / failed
    message: str = ""  # why it is lost: state, exception, log tail
    job_id: str | None = None


@dataclass(frozen=True)
class ClusterProfile:
    """A SLURM cluster's job settings (the keys of slurm/local.toml)."""

    name: str = "cluster"
    partition: str | None = None
    gpus_per_job: int = 0
    cpus_per_task: int = 1
    mem_gb: int = 0  # 0 = partition default
    time_min: int = 60
    array_parallelism: int = 64
    setup: tuple[str, ...] = ()
    sbatch_extra: tuple[tuple[str, Any], ...] = ()
    source: str | None = None


def load_profile(path: str | Path) -> ClusterProfile:
    """Read a cluster profile TOML; unknown keys and wrong types are errors naming the key."""
    p = Path(path)
    raw = load_toml(p, what="cluster profile", hint=" (see slurm/local.toml for the format)")
    fields = {f.name: f for f in dataclasses.fields(ClusterProfile) if f.name != "source"}
    values: dict[str, Any] = {"source": str(p)}
    for key, v in raw.items():
        if key not in fields:
            raise StatpruneError(f"{p}: {key}: unknown key; valid: {', '.join(sorted(fields))}")
        if key in ("gpus_per_job", "cpus_per_task", "mem_gb", "time_min", "array_parallelism"):
            if (
                isinstance(v, bool)
                or not isinstance(v, int)
                or v < (1 if key in ("cpus_per_task", "time_min", "array_parallelism") else 0)
            ):
                raise StatpruneError(f"{p}: {key}: expected a non-negative integer, got {v!r}")
            values[key] = v
        elif key == "setup":
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise StatpruneError(f"{p}: setup: expected a list of shell lines, got {v!r}")
            values[key] = tuple(v)
        elif key == "sbatch_extra":
            if not isinstance(v, dict):
                raise StatpruneError(f"{p}: sbatch_extra: expected a table, got {v!r}")
            values[key] = tuple(sorted(v.items()))
        else:
            if not isinstance(v, str):
                raise StatpruneError(f"{p}: {key}: expected a string, got {v!r}")
            values[key] = v
    return ClusterProfile(**values)


class Executor(ABC):
    """Submit items, then poll for outcomes until :meth:`active` is zero."""

    name = ""
    poll_seconds = 1.0

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.job_ids: dict[str, str] = {}  # key → scheduler job id, once known
        self._new_ids: list[tuple[str, str]] = []

    @abstractmethod
    def submit(self, items: Sequence[Item]) -> None: ...

    @abstractmethod
    def poll(self) -> list[Outcome]:
        """Outcomes of items that finished since the last call (may start queued ones)."""

    @abstractmethod
    def active(self) -> int:
        """Items submitted and not yet reported."""

    def running(self) -> int:
        """Items started and not yet reported (``active`` also counts queued ones)."""
        return self.active()

    def started(self) -> list[tuple[str, str]]:
        """(key, job id) pairs that got a job id since the last call."""
        out, self._new_ids = self._new_ids, []
        return out

    def _got_id(self, key: str, job_id: str) -> None:
        self.job_ids[key] = job_id
        self._new_ids.append((key, job_id))

    def describe(self) -> str:
        return self.name


EXECUTORS: Registry[Callable[..., Executor]] = Registry("executor")


@EXECUTORS.register("inline")
class InlineExecutor(Executor):
    """Runs items one by one in this process (debugging; the driver's progress advances per run)."""

    name = "inline"
    poll_seconds = 0.0

    def __init__(self, folder: Path, **_: Any) -> None:
        super().__init__(folder)
        self._queue: list[Item] = []

    def submit(self, items: Sequence[Item]) -> None:
        self._queue.extend(items)

    def active(self) -> int:
        return len(self._queue)

    def running(self) -> int:
        return 0

    def poll(self) -> list[Outcome]:
        if not self._queue:
            return []
        item = self._queue.pop(0)
        self._got_id(item.key, f"inline-{os.getpid()}")
        try:
            return [Outcome(item.key, True, item.fn(item.arg), job_id=self.job_ids[item.key])]
        except Exception as e:
            return [
                Outcome(
                    item.key,
                    False,
                    state="EXCEPTION",
                    message=f"{type(e).__name__}: {e}\n{traceback.format_exc()}",
                )
            ]


class _SubmititExecutor(Executor):
    """Shared polling of submitit jobs: result file first, else the scheduler's state."""

    wait_for_result = False  # a cleanly ended job may show its result file late (shared file systems)

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self._jobs: dict[str, Any] = {}  # key → submitit Job

    def active(self) -> int:
        return len(self._jobs)

    def _refresh(self) -> None:
        """Hook: bring scheduler states up to date (one sacct call for all jobs)."""

    def _state(self, job: Any) -> str:
        return str(job.state).upper()

    def poll(self) -> list[Outcome]:
        self._refresh()
        out = []
        for key, job in list(self._jobs.items()):
            if job.paths.result_pickle.exists():
                out.append(self._returned(key, job))
                del self._jobs[key]
                continue
            state = self._state(job)
            if state.split()[0] in INCOMPLETE:
                continue
            if self.wait_for_result and state.startswith("COMPLETED"):
                # the job ended cleanly: give a slow shared file system time to show the result
                exc = job.exception()  # waits up to submitit's result timeout
                if exc is None:
                    out.append(self._returned(key, job))
                    del self._jobs[key]
                    continue
            out.append(
                Outcome(key, False, state=state, message=self._lost_message(job, state), job_id=job.job_id)
            )
            del self._jobs[key]
        return out

    def _returned(self, key: str, job: Any) -> Outcome:
        try:
            return Outcome(key, True, job.result(), job_id=job.job_id)
        except Exception as e:  # the callable raised (submitit FailedJobError) or the pickle is bad
            return Outcome(key, False, state="FAILED", message=f"{type(e).__name__}: {e}", job_id=job.job_id)

    @staticmethod
    def _lost_message(job: Any, state: str) -> str:
        tail = ""
        for path in (job.paths.stderr, job.paths.stdout):
            try:
                text = Path(path).read_text(errors="replace")
            except OSError:
                continue
            if text.strip():
                tail = "\n".join(text.strip().splitlines()[-30:])
                break
        msg = f"job {job.job_id} ended with state {state} without a result"
        return f"{msg}\n--- log tail ({path}) ---\n{tail}" if tail else msg


@EXECUTORS.register("local")
class LocalExecutor(_SubmititExecutor):
    """submitit local processes, at most ``parallel`` at once (more wait in a queue here)."""

    name = "local"
    poll_seconds = 0.5

    def __init__(
        self,
        folder: Path,
        *,
        parallel: int | None = None,
        gpus_per_job: int | None = None,
        timeout_min: int = 24 * 60,
        **_: Any,
    ) -> None:
        super().__init__(folder)
        import submitit

        self.parallel = max(1, parallel or min(4, os.cpu_count() or 1))
        if gpus_per_job is None:
            gpus_per_job = 1 if _cuda_count() else 0
        self.gpus_per_job = gpus_per_job
        self._gpu_count = _cuda_count()
        self._executor = submitit.LocalExecutor(folder=folder)
        self._executor.update_parameters(timeout_min=timeout_min)
        self._queue: list[Item] = []
        self._submitted = 0

    def describe(self) -> str:
        return f"local ({self.parallel} at once)"

    def submit(self, items: Sequence[Item]) -> None:
        self._queue.extend(items)
        self._start_some()

    def active(self) -> int:
        return len(self._jobs) + len(self._queue)

    def running(self) -> int:
        return len(self._jobs)

    def _start_some(self) -> None:
        while self._queue and len(self._jobs) < self.parallel:
            item = self._queue.pop(0)
            if self.gpus_per_job and self._gpu_count:
                first = (self._submitted * self.gpus_per_job) % self._gpu_count
                gpus = tuple((first + k) % self._gpu_count for k in range(self.gpus_per_job))
                self._executor.update_parameters(gpus_per_node=self.gpus_per_job, visible_gpus=gpus)
            job = self._executor.submit(item.fn, item.arg)
            self._submitted += 1
            self._jobs[item.key] = job
            self._got_id(item.key, job.job_id)

    def poll(self) -> list[Outcome]:
        out = super().poll()
        self._start_some()
        return out

    def flush(self) -> None:
        """Start every queued item now (``--no-wait``: nobody will be polling to start them later)."""
        self.parallel = max(self.parallel, len(self._jobs) + len(self._queue))
        self._start_some()


@EXECUTORS.register("slurm")
class SlurmExecutor(_SubmititExecutor):
    """sbatch through submitit; each submit() call is one job array (``map_array``)."""

    name = "slurm"
    poll_seconds = 2.0
    wait_for_result = True

    def __init__(self, folder: Path, *, profile: ClusterProfile | None = None, **_: Any) -> None:
        super().__init__(folder)
        import shutil

        import submitit

        if profile is None:
            raise StatpruneError("--executor slurm needs a cluster profile: --cluster slurm/<profile>.toml")
        if shutil.which("sbatch") is None:
            raise StatpruneError("--executor slurm: sbatch is not on PATH (is this a SLURM login node?)")
        self.profile = profile
        self._states: dict[str, owners.SlurmState] | None = {}
        self._executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params: dict[str, Any] = {
            "cpus_per_task": profile.cpus_per_task,
            "timeout_min": profile.time_min,
            "slurm_array_parallelism": profile.array_parallelism,
            "slurm_setup": list(profile.setup),
            "slurm_additional_parameters": dict(profile.sbatch_extra),
            "name": "statprune",
        }
        if profile.partition:
            params["slurm_partition"] = profile.partition
        if profile.mem_gb:
            params["mem_gb"] = profile.mem_gb
        if profile.gpus_per_job:
            params["gpus_per_node"] = profile.gpus_per_job
        self._executor.update_parameters(**params)

    def describe(self) -> str:
        return f"slurm (profile {self.profile.name}, partition {self.profile.partition or 'default'})"

    def submit(self, items: Sequence[Item]) -> None:
        by_fn: dict[str, list[Item]] = {}  # one array per kind of job (stage, run)
        for it in items:
            kind = getattr(it.fn, "__qualname__", None) or type(it.fn).__qualname__
            by_fn.setdefault(kind, []).append(it)
        for group in by_fn.values():
            jobs = self._executor.map_array(group[0].fn, [it.arg for it in group])
            for it, job in zip(group, jobs):
                self._jobs[it.key] = job
                self._got_id(it.key, job.job_id)

    def _refresh(self) -> None:
        # our own sacct reading, not submitit's watcher: that one lets an array's range row
        # ("12_[0-2%2] CANCELLED" after scancel of pending task 2) overwrite the rows of tasks 0 and 1
        self._states = owners.slurm_states(job.job_id for job in self._jobs.values()) if self._jobs else {}

    def _state(self, job: Any) -> str:
        if self._states is None:  # sacct cannot be asked here: fall back to submitit's watcher
            return str(job.watcher.get_state(job.job_id, mode="standard")).upper()
        known = self._states.get(job.job_id)
        return known.state if known else "UNKNOWN"  # not in accounting yet


def _cuda_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def make_executor(name: str, folder: Path, **kwargs: Any) -> Executor:
    """Build the executor ``name`` (inline | local | slurm); unknown names list the choices."""
    return EXECUTORS.get(name)(folder, **kwargs)


@dataclass
class Waiter:
    """Sleeps between polls without oversleeping short inline work."""

    seconds: float
    _last: float = field(default_factory=time.monotonic)

    def __call__(self) -> None:
        left = self.seconds - (time.monotonic() - self._last)
        if left > 0:
            time.sleep(left)
        self._last = time.monotonic()
