"""Run records on disk: atomic writes, run claims (lock files) and the status of every run.

Layout under ``<results>/<study>/``::

    <run_id>.json          the record (docs/RECORDS.md); written whole by temp file + rename
    .locks/<run_id>.lock   the claim of whoever runs it now (created with O_CREAT|O_EXCL)
    .locks/guard           flock'ed briefly around every claim/release, so that breaking a stale
                           lock and taking it is one step for concurrent launches
    submitit/<launch_id>/  one submitit folder per launch (job ids restart with a fresh cluster)
    outdated/<run_id>.<launch_id>.json
                           a done record made by other code (see :mod:`statprune.sweep.fingerprint`),
                           kept here, with ``outdated`` (why) and ``superseded`` (when), when its
                           run runs again

A run is *done*, *failed* or *cancelled* by its record; *running* while a live holder has its lock;
*stale* when the record says running (or a lock exists) but the holder is gone; *missing* otherwise.
Stale and missing runs are (re)run by the next launch. Whether a done record is *outdated* is
decided by the launch plan (:func:`statprune.sweep.launch.plan`), which knows the method options.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from statprune.io import file_lock as exclusive
from statprune.io import write_json_atomic as atomic_write_json
from statprune.sweep import owners

FINAL = ("done", "failed", "cancelled")
STATES = ("done", "failed", "cancelled", "running", "stale", "missing")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # never happens with atomic writes; a hand-edited file reads as absent


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class RunState:
    status: str  # one of STATES
    record: dict[str, Any] | None
    lock: dict[str, Any] | None
    detail: str = ""


@dataclass
class Claim:
    ok: bool
    lock: dict[str, Any] | None  # ours when ok, the holder's otherwise
    detail: str = ""


class RunStore:
    """The records and claims of one study."""

    def __init__(self, results_dir: str | Path, study: str) -> None:
        self.root = Path(results_dir).absolute()
        self.study = study
        self.dir = self.root / study
        self.lock_dir = self.dir / ".locks"

    # ---- records ----------------------------------------------------------------------------
    def record_path(self, run_id: str) -> Path:
        return self.dir / f"{run_id}.json"

    def read(self, run_id: str) -> dict[str, Any] | None:
        return read_json(self.record_path(run_id))

    def write(self, record: dict[str, Any]) -> Path:
        if record.get("status") not in (*FINAL, "running"):
            raise ValueError(f"bad record status {record.get('status')!r}")
        path = self.record_path(record["run_id"])
        atomic_write_json(path, record)
        return path

    def archive(self, record: dict[str, Any], reason: str) -> Path:
        """Keep a done record that is about to be replaced because it is outdated: nothing is lost."""
        path = self.dir / "outdated" / f"{record['run_id']}.{record.get('launch_id') or 'unknown'}.json"
        atomic_write_json(path, {**record, "outdated": reason, "superseded": now_iso()})
        return path

    def records(self) -> dict[str, dict[str, Any]]:
        out = {}
        for p in sorted(self.dir.glob("*.json")):
            rec = read_json(p)
            if rec is not None and rec.get("run_id") == p.stem:
                out[p.stem] = rec
        return out

    # ---- claims -----------------------------------------------------------------------------
    def lock_path(self, run_id: str) -> Path:
        return self.lock_dir / f"{run_id}.lock"

    def read_lock(self, run_id: str) -> dict[str, Any] | None:
        return read_json(self.lock_path(run_id))

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        with exclusive(self.lock_dir / "guard"):
            yield

    def claim_many(self, run_ids: Iterable[str], me: dict[str, Any]) -> dict[str, Claim]:
        """Claim each run for ``me`` (see :func:`owners.identity`) unless a live holder has it.

        A lock of the same launch (the driver queued it for this job; a requeued job) is taken over;
        a stale one is removed. Creation is ``O_CREAT|O_EXCL``, and the guard serialises the
        check-break-create sequence, so two launches never both get a run.
        """
        run_ids = list(run_ids)
        out: dict[str, Claim] = {}
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        with self.guard():
            existing = {r: self.read_lock(r) for r in run_ids}
            foreign = [r for r, lk in existing.items() if lk is not None and not _same_launch(lk, me)]
            alive = dict(zip(foreign, owners.holders_alive(existing[r] for r in foreign)))
            for r in run_ids:
                lk = existing[r]
                lock = {"run_id": r, **me}
                if lk is not None and _same_launch(lk, me):
                    atomic_write_json(self.lock_path(r), {**lk, **lock})
                    out[r] = Claim(True, lock, "taken over from this launch")
                    continue
                if lk is not None:
                    live, why = alive[r]
                    if live:
                        out[r] = Claim(False, lk, why)
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.lock_path(r))
                try:
                    fd = os.open(self.lock_path(r), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:  # someone outside the guard (should not happen)
                    out[r] = Claim(False, self.read_lock(r), "lock appeared concurrently")
                    continue
                with os.fdopen(fd, "w") as f:
                    json.dump(lock, f, default=str)
                    f.flush()
                    os.fsync(f.fileno())
                out[r] = Claim(True, lock, "stale lock broken" if lk is not None else "")
        return out

    def claim(self, run_id: str, me: dict[str, Any]) -> Claim:
        return self.claim_many([run_id], me)[run_id]

    def update_lock(self, run_id: str, launch_id: str, **fields: Any) -> bool:
        """Add fields (job id) to our lock; False when the lock is no longer this launch's."""
        with self.guard():
            lk = self.read_lock(run_id)
            if lk is None or lk.get("launch_id") != launch_id:
                return False
            atomic_write_json(self.lock_path(run_id), {**lk, **fields, "updated": time.time()})
            return True

    def release(self, run_id: str, launch_id: str) -> bool:
        """Remove the lock if it belongs to ``launch_id``."""
        with self.guard():
            lk = self.read_lock(run_id)
            if lk is None or lk.get("launch_id") != launch_id:
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock_path(run_id))
            return True

    def finalize_lost(self, run_id: str, launch_id: str, record: dict[str, Any]) -> bool:
        """Driver side: record a job that ended without writing its final record (cancelled, killed).

        Writes ``record`` unless the run already has a final record from this launch or a ``done``
        one, or another live launch holds it now; then drops this launch's lock. True if written.
        """
        with self.guard():
            current = self.read(run_id)
            lk = self.read_lock(run_id)
            if lk is not None and lk.get("launch_id") != launch_id:
                live, _ = owners.holders_alive([lk])[0]
                if live:
                    return False
            if current is not None and (
                current.get("status") == "done"
                or (current.get("status") in FINAL and current.get("launch_id") == launch_id)
            ):
                written = False
            else:
                prev = current or {}
                self.write({**prev, **record, "started": prev.get("started", record.get("started"))})
                written = True
            if lk is not None and lk.get("launch_id") == launch_id:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.lock_path(run_id))
            return written

    # ---- status -----------------------------------------------------------------------------
    def states(self, run_ids: Iterable[str]) -> dict[str, RunState]:
        """The state of each run; one sacct call covers every SLURM-held lock."""
        run_ids = list(run_ids)
        recs = {r: self.read(r) for r in run_ids}
        locks = {r: self.read_lock(r) for r in run_ids}
        held = [r for r in run_ids if locks[r] is not None and (recs[r] or {}).get("status") not in FINAL]
        alive = dict(zip(held, owners.holders_alive(locks[r] for r in held)))
        out: dict[str, RunState] = {}
        for r in run_ids:
            rec, lk = recs[r], locks[r]
            status = (rec or {}).get("status")
            if status in FINAL:
                detail = (rec.get("error") or {}).get("message", "") if status != "done" else ""
                out[r] = RunState(status, rec, lk, detail.splitlines()[0] if detail else "")
            elif r in alive:
                live, why = alive[r]
                out[r] = RunState("running" if live else "stale", rec, lk, why)
            elif status == "running":
                out[r] = RunState("stale", rec, None, "record says running but no holder has it")
            else:
                out[r] = RunState("missing", rec, None, "")
        return out


def _same_launch(lock: dict[str, Any], me: dict[str, Any]) -> bool:
    """The driver's claim passes to its job; a requeued job (same pickled task) finds its own."""
    return bool(lock.get("launch_id")) and lock.get("launch_id") == me.get("launch_id")
