"""The sweep driver: plan (what is done, what to run), fine-tune stage, submit, watch, record losses.

Resume is the default: runs with a ``done`` record are skipped, missing or stale ones run again,
``failed``/``cancelled`` ones only with ``retry_failed``. A done record whose fingerprint differs
from what the current code would write for its config (:mod:`statprune.sweep.fingerprint`) is
``outdated`` and runs again, unless ``keep_outdated``. A run without a record first adopts the done
record of a run that computed the same (:mod:`statprune.sweep.adopt`), unless ``adopt`` is off. Before submitting, the driver claims every
run it will launch (lock files, see :mod:`statprune.sweep.store`), so a second launch of the same
spec at the same time waits for those runs instead of running them twice. While waiting it polls
the executor; a job that ends without writing its final record (``scancel``, killed, out of memory)
gets a ``cancelled``/``failed`` record written here. Runs held by another launch are watched until
they finish; if their holder dies, they are run here.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statprune.sweep import owners
from statprune.sweep.adopt import adopt
from statprune.sweep.config import RunSpec, SweepSpec, finetune_key, thaw
from statprune.sweep.executors import ClusterProfile, Item, Outcome, make_executor
from statprune.sweep.fingerprint import Expected, outdated_reason
from statprune.sweep.run import RunJob, RunTask, finetune_stage_job
from statprune.sweep.store import FINAL, RunState, RunStore, now_iso
from statprune.sweep.tracking import TrackingConfig

log = logging.getLogger(__name__)
MAX_RESUBMITS = 2  # per run and launch, for runs whose other holder died


@dataclass
class PlanRow:
    run: RunSpec
    state: RunState
    action: str  # skip | run | retry | wait


def plan(
    store: RunStore,
    runs: Sequence[RunSpec],
    *,
    retry_failed: bool = False,
    keep_outdated: bool = False,
    adoptable: Mapping[str, str] | None = None,
) -> list[PlanRow]:
    """What a launch would do with each run, from the records and locks on disk.

    A done record made by other code becomes state ``outdated`` (action run; the detail says why),
    or stays done with ``keep_outdated`` (the detail still says why). ``adoptable`` (run id → the
    run id whose record it would adopt; :func:`statprune.sweep.adopt.adoptable`) turns those missing
    runs' action into ``adopt``; an adopted done record says so in the detail.
    """
    states = store.states(r.run_id for r in runs)
    expected = Expected()
    rows = []
    for r in runs:
        st = states[r.run_id]
        why = None
        if st.status == "done":
            why = outdated_reason(st.record or {}, expected(r.config.method, thaw(r.config.method_options)))
        if why and not keep_outdated:
            st = RunState("outdated", st.record, st.lock, why)
            action = "run"
        elif st.status == "done":
            action = "skip"
            if why:
                st = RunState("done", st.record, st.lock, f"outdated, kept: {why}")
            elif isinstance(src := (st.record or {}).get("adopted_from"), dict):
                st = RunState("done", st.record, st.lock, f"adopted from {src.get('run_id')}")
        elif st.status in ("failed", "cancelled"):
            action = "retry" if retry_failed else "skip"
        elif st.status == "running":
            action = "wait"
        elif st.status == "missing" and adoptable and r.run_id in adoptable:
            st = RunState("missing", st.record, st.lock, f"adoptable from {adoptable[r.run_id]}")
            action = "adopt"
        else:  # missing, stale
            action = "run"
        rows.append(PlanRow(r, st, action))
    return rows


def format_table(rows: Sequence[PlanRow], *, actions: bool = True) -> str:
    head = ["run_id", "name", "status"] + (["action"] if actions else []) + ["detail"]
    body = [
        [r.run.run_id, r.run.name, r.state.status]
        + ([r.action] if actions else [])
        + [_clip(r.state.detail, 70)]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)] if body else [len(h) for h in head]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [head, *body]]
    return "\n".join(lines)


def _clip(s: str, n: int) -> str:
    s = s.replace("\n", " ")
    return s if len(s) <= n else s[: n - 1] + "…"


def counts(rows: Sequence[PlanRow]) -> dict[str, int]:
    c = Counter(r.state.status for r in rows)
    return {
        k: c.get(k, 0) for k in ("done", "outdated", "running", "failed", "cancelled", "stale", "missing")
    }


# ---- launching -----------------------------------------------------------------------------------


@dataclass
class LaunchOptions:
    executor: str = "local"
    profile: ClusterProfile | None = None
    retry_failed: bool = False
    keep_outdated: bool = False  # done records made by other code count as done
    adopt: bool = True  # runs without a record adopt a done record that computed the same (adopt.py)
    adopt_from: tuple[str, ...] = ()  # more folders of records to adopt from, after the study's own
    tracking: bool = True
    parallel: int | None = None  # local: jobs at once
    threads: int | None = None  # torch threads per run (local/inline); SLURM uses the job's CPUs
    wait: bool = True  # False: submit and return (records appear as jobs finish)
    poll_seconds: float | None = None
    progress: bool = True


@dataclass
class LaunchReport:
    launch_id: str
    folder: Path | None
    planned: dict[str, int]
    submitted: list[str] = field(default_factory=list)
    lost: dict[str, str] = field(default_factory=dict)  # run_id → status written by the driver
    adopted: dict[str, str] = field(default_factory=dict)  # run_id → the run id whose record it adopted
    final: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def new_launch_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{owners.hostname()}-{os.getpid()}"


def launch(
    spec: SweepSpec,
    store: RunStore,
    runs: Sequence[RunSpec],
    opts: LaunchOptions,
    *,
    echo: Callable[[str], None] = print,
) -> LaunchReport:
    """Run every run of ``runs`` that is not done; returns what happened (records are on disk)."""
    t0 = time.monotonic()
    launch_id = new_launch_id()
    adopted = adopt(store, runs, opts.adopt_from) if opts.adopt else {}
    if adopted:
        where = Counter(((store.read(r) or {}).get("adopted_from") or {}).get("source") for r in adopted)
        echo(
            f"adopted {len(adopted)} records (same resolved options, other spelling) from "
            + ", ".join(f"{src} ({n})" for src, n in sorted(where.items(), key=str))
            + "; --status lists them"
        )
    rows = plan(store, runs, retry_failed=opts.retry_failed, keep_outdated=opts.keep_outdated)
    actions = Counter(r.action for r in rows)
    report = LaunchReport(launch_id=launch_id, folder=None, planned=dict(actions), adopted=adopted)
    echo(
        f"sweep {spec.study}: {len(rows)} runs — {actions.get('skip', 0)} skip, {actions.get('run', 0)} run, "
        f"{actions.get('retry', 0)} retry, {actions.get('wait', 0)} running elsewhere"
        + (f" ({n} of the runs outdated: see --status)" if (n := counts(rows)["outdated"]) else "")
    )
    to_run = [r.run for r in rows if r.action in ("run", "retry")]
    watch = {r.run.run_id for r in rows if r.action == "wait"}
    if not to_run and not watch:
        report.final = counts(plan(store, runs, keep_outdated=opts.keep_outdated))
        report.seconds = time.monotonic() - t0
        return report

    folder = store.dir / "submitit" / launch_id  # fresh per launch: job ids restart with a new cluster
    report.folder = folder
    executor = make_executor(
        opts.executor,
        folder,
        profile=opts.profile,
        parallel=opts.parallel,
    )
    echo(f"launch {launch_id} on {executor.describe()}; job logs in {folder}")
    tracking = TrackingConfig(
        enabled=opts.tracking and spec.tracking.enabled,
        project=spec.tracking.project,
        entity=spec.tracking.entity,
        group=spec.study,
        tags=spec.tracking.tags,
        dir=str(store.dir),
    )
    threads = opts.threads
    if threads is None and executor.name == "local":  # share the cores between parallel jobs
        threads = max(1, (os.cpu_count() or 1) // executor.parallel)
    replace = ("failed", "cancelled") if opts.retry_failed else ()
    by_id = {r.run_id: r for r in runs}

    def task_of(run: RunSpec) -> RunTask:
        return RunTask(
            run_id=run.run_id,
            name=run.name,
            study=spec.study,
            config=run.config,
            results_dir=str(store.root),
            launch_id=launch_id,
            tracking=tracking,
            threads=threads,
            replace=replace,
            keep_outdated=opts.keep_outdated,
        )

    driver = owners.identity(launch_id, "driver")
    claims = store.claim_many([r.run_id for r in to_run], driver)
    mine = [r for r in to_run if claims[r.run_id].ok]
    watch |= {r.run_id for r in to_run if not claims[r.run_id].ok}
    mine = _finetune_stage(spec, store, mine, executor, launch_id, report, echo)

    monitor = _Monitor(store, executor, launch_id, by_id, report, echo, opts)
    monitor.submit([task_of(r) for r in mine])
    if not opts.wait:
        if hasattr(executor, "flush"):
            executor.flush()
        monitor.note_started()
        echo(f"submitted {len(mine)} runs; not waiting (statprune sweep {spec.source or ''} --status)")
        report.seconds = time.monotonic() - t0
        return report
    monitor.run(watch, task_of)
    report.final = counts(plan(store, runs, keep_outdated=opts.keep_outdated))
    report.seconds = time.monotonic() - t0
    return report


def _finetune_stage(
    spec: SweepSpec,
    store: RunStore,
    runs: list[RunSpec],
    executor: Any,
    launch_id: str,
    report: LaunchReport,
    echo: Callable[[str], None],
) -> list[RunSpec]:
    """Train each distinct fine-tune once, before the runs that need it; returns the runs to launch.

    Runs whose fine-tune failed get a ``failed`` record naming the stage error and are not launched.
    """
    groups: dict[Any, list[RunSpec]] = {}
    for r in runs:
        key = finetune_key(r.config)
        if key is not None:
            groups.setdefault(key, []).append(r)
    from statprune.sweep.run import finetune_cached

    groups = {k: v for k, v in groups.items() if not finetune_cached(v[0].config)}
    if not groups:
        return runs
    echo(f"fine-tune stage: {len(groups)} distinct fine-tune(s) for {sum(map(len, groups.values()))} runs")
    keys = {f"finetune:{i}": k for i, k in enumerate(groups)}
    executor.submit(
        [Item(name, finetune_stage_job, (groups[k][0].config, str(store.root))) for name, k in keys.items()]
    )
    failed: set[str] = set()
    waiter = _sleeper(executor)
    while executor.active():
        for out in executor.poll():
            k = keys[out.key]
            first = groups[k][0]
            if out.ok:
                echo(
                    f"fine-tune {first.config.model} on {first.config.task}: {out.value.get('path')} ({out.value.get('seconds', 0):.1f}s)"
                )
                continue
            echo(
                f"fine-tune {first.config.model} on {first.config.task} FAILED: {out.message.splitlines()[0] if out.message else out.state}"
            )
            for r in groups[k]:
                failed.add(r.run_id)
                store.finalize_lost(
                    r.run_id,
                    launch_id,
                    _lost_record(r, spec.study, launch_id, "failed", out, stage="finetune"),
                )
                report.lost[r.run_id] = "failed"
        executor.started()
        if executor.active():
            waiter()
    return [r for r in runs if r.run_id not in failed]


def _sleeper(executor: Any, seconds: float | None = None) -> Callable[[], None]:
    from statprune.sweep.executors import Waiter

    return Waiter(executor.poll_seconds if seconds is None else seconds)


def _lost_record(
    run: RunSpec, study: str, launch_id: str, status: str, out: Outcome, *, stage: str | None = None
) -> dict[str, Any]:
    what = f"{stage} stage" if stage else "job"
    return {
        "run_id": run.run_id,
        "name": run.name,
        "study": study,
        "status": status,
        "config": run.config.to_dict(),
        "launch_id": launch_id,
        "slurm_job_id": out.job_id if out.job_id and not out.job_id.startswith("inline") else None,
        "started": None,
        "finished": now_iso(),
        "error": {
            "type": "JobLost" if not stage else "StageFailed",
            "message": f"{what} ended with state {out.state or 'unknown'} without a record"
            if not stage
            else f"fine-tune stage failed: {out.message.splitlines()[0] if out.message else out.state}",
            "traceback": out.message,
            "job_state": out.state,
        },
        "recorded_by": "driver",
    }


class _Monitor:
    """Submits run tasks and waits: outcomes, lost jobs, runs held by other launches, progress."""

    def __init__(
        self,
        store: RunStore,
        executor: Any,
        launch_id: str,
        by_id: dict[str, RunSpec],
        report: LaunchReport,
        echo: Callable[[str], None],
        opts: LaunchOptions,
    ) -> None:
        self.store, self.executor, self.launch_id = store, executor, launch_id
        self.by_id, self.report, self.echo, self.opts = by_id, report, echo, opts
        self.resubmits: Counter[str] = Counter()
        self.results: Counter[str] = Counter()
        self.bar: Any = None
        self._last_post: dict[str, int] = {}
        self.tracked: set[str] = set()

    def submit(self, tasks: list[RunTask]) -> None:
        if not tasks:
            return
        self.executor.submit([Item(t.run_id, RunJob(), t) for t in tasks])
        self.report.submitted += [t.run_id for t in tasks]
        self.note_started()

    def note_started(self) -> None:
        """Put the job id into each run's lock: its liveness then survives the driver."""
        for run_id, job_id in self.executor.started():
            if self.executor.name == "slurm":
                self.store.update_lock(run_id, self.launch_id, slurm_job_id=job_id)
            elif self.executor.name == "local" and job_id.isdigit():
                pid = int(job_id)
                self.store.update_lock(
                    run_id, self.launch_id, job_pid=pid, job_pid_start=owners.proc_start(pid)
                )

    def run(self, watch: set[str], task_of: Callable[[RunSpec], RunTask]) -> None:
        self.tracked = set(self.report.submitted) | watch
        total = len(self.tracked)
        self._open_bar(total)
        waiter = _sleeper(self.executor, self.opts.poll_seconds)
        last_watch_check = 0.0
        try:
            while self.executor.active() or watch:
                for out in self.executor.poll():
                    self._outcome(out, watch)
                self.note_started()
                if watch and time.monotonic() - last_watch_check > max(2.0, self.executor.poll_seconds):
                    last_watch_check = time.monotonic()
                    self._check_watched(watch, task_of)
                self._progress(total, watch)
                if self.executor.active() or watch:
                    waiter()
        finally:
            if self.bar is not None:
                self.bar.close()
        self.echo(self._summary_line(total, watch))

    def _outcome(self, out: Outcome, watch: set[str]) -> None:
        run = self.by_id[out.key]
        if out.ok:
            status = (out.value or {}).get("status", "?")
            if status == "held":  # another launch got it between our claim and the job's start
                watch.add(run.run_id)
            self.results[status] += 1
            return
        status = "cancelled" if out.state.startswith("CANCELLED") else "failed"
        written = self.store.finalize_lost(
            run.run_id, self.launch_id, _lost_record(run, self.store.study, self.launch_id, status, out)
        )
        if written:
            self.report.lost[run.run_id] = status
            self.results[status] += 1
            self._write(f"{run.name} ({run.run_id}): job {out.job_id} {out.state} → {status} record written")
        else:
            rec = self.store.read(run.run_id) or {}
            self.results[rec.get("status", "?")] += 1

    def _check_watched(self, watch: set[str], task_of: Callable[[RunSpec], RunTask]) -> None:
        states = self.store.states(sorted(watch))
        again = []
        for run_id, st in states.items():
            if st.status in FINAL:
                watch.discard(run_id)
                self.results[st.status] += 1
            elif st.status in ("stale", "missing"):
                watch.discard(run_id)
                if self.resubmits[run_id] >= MAX_RESUBMITS:
                    self._write(f"{run_id}: its holder died again; giving up for this launch")
                    continue
                claim = self.store.claim(run_id, owners.identity(self.launch_id, "driver"))
                if claim.ok:
                    self.resubmits[run_id] += 1
                    again.append(self.by_id[run_id])
                else:
                    watch.add(run_id)
        if again:
            self._write(f"{len(again)} run(s) whose holder died: running them here")
            self.submit([task_of(r) for r in again])

    # ---- progress -------------------------------------------------------------------------------
    def _open_bar(self, total: int) -> None:
        if not self.opts.progress:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover
            return
        self.bar = tqdm(
            total=total,
            desc=f"sweep {self.store.study}",
            unit="run",
            file=sys.stderr,
            mininterval=2.0,
            dynamic_ncols=True,
        )

    def _write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            self.echo(msg)

    def _progress(self, total: int, watch: set[str]) -> None:
        """Advance the bar only when a count changes, so job logs and CI output stay short."""
        if self.bar is None:
            return
        finished = sum(v for k, v in self.results.items() if k in (*FINAL, "skipped"))
        running = self.executor.running()
        post = {
            "done": self.results["done"],
            "failed": self.results["failed"] + self.results["cancelled"],
            "running": running,
            "queued": self.executor.active() - running,
            "elsewhere": len(watch),
        }
        self.bar.total = max(self.bar.total, len(self.tracked | set(self.report.submitted)))
        if finished == self.bar.n and post == self._last_post:
            return
        self._last_post = post
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(finished - self.bar.n)
        self.bar.refresh()

    def _summary_line(self, total: int, watch: set[str]) -> str:
        r = self.results
        return (
            f"launch {self.launch_id}: {total} runs watched — done {r['done']}, failed {r['failed']}, "
            f"cancelled {r['cancelled']}, skipped {r['skipped']}"
        )
