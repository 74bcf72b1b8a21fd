"""Who holds a run, and whether that holder is still alive.

A run's lock file names its holder: the host and pid of the process that wrote it (the driver while
the run is queued, the job once it starts), the local job's pid or the SLURM job id, and the launch it
belongs to. A lock is *stale* when its holder is gone: the SLURM job has left the queue (accounting
says COMPLETED, CANCELLED, FAILED, TIMEOUT, ...), or, on this host, none of its processes is alive.
Holders on another host without a SLURM job cannot be checked and count as alive.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

# Slurm states in which a job may still run (or be requeued and run again).
ACTIVE_SLURM_STATES = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "COMPLETING",
    "CONFIGURING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "PREEMPTED",
}
# accounting can lag a fresh submission by a few seconds; a lock younger than this is trusted
ACCOUNTING_GRACE_S = 30.0
# a job id reused by a restarted cluster was submitted after the lock was last written
SUBMIT_SLACK_S = 120.0


def hostname() -> str:
    return socket.gethostname()


def slurm_job_id() -> str | None:
    """This process's SLURM job id in the form sacct accepts (``<array>_<task>`` for array tasks)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def proc_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards against pid reuse), None when unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19] if len(fields) > 19 else None


def pid_alive(pid: int, start: str | None = None) -> bool:
    """``pid`` runs on this host (not a zombie) and, if ``start`` is given, is the same process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            after = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True  # no /proc: trust kill(0)
    if after and after[0] == "Z":
        return False
    return start is None or (len(after) > 19 and after[19] == start)


def identity(launch_id: str, role: str) -> dict[str, Any]:
    """The lock fields that describe this process."""
    pid = os.getpid()
    return {
        "launch_id": launch_id,
        "role": role,
        "host": hostname(),
        "pid": pid,
        "pid_start": proc_start(pid),
        "slurm_job_id": slurm_job_id(),
        "updated": time.time(),
    }


def _expand_array(jobid: str) -> list[str]:
    """``12_[3-5,7%2]`` → ``12_3 12_4 12_5 12_7``; plain ids unchanged."""
    if "_[" not in jobid:
        return [jobid]
    base, rest = jobid.split("_[", 1)
    out = []
    for part in rest.rstrip("]").split("%")[0].split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            out += [f"{base}_{i}" for i in range(int(a), int(b) + 1)]
        elif part:
            out.append(f"{base}_{part}")
    return out


class SlurmState(NamedTuple):
    state: str
    submit: float | None


def slurm_states(job_ids: Iterable[str]) -> dict[str, SlurmState] | None:
    """``{job_id: SlurmState}`` from one sacct call; None when sacct cannot be asked."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    if shutil.which("sacct") is None:
        return None
    # a pending array task is listed as its array ("12_[3-5]"): ask for the array ids too
    query = sorted(set(ids) | {i.split("_", 1)[0] for i in ids})
    cmd = ["sacct", "-n", "-X", "-P", "-o", "JobID,State,Submit", "-j", ",".join(query)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return _parse_sacct(out.stdout)


def _parse_sacct(text: str) -> dict[str, SlurmState]:
    """A task's own row wins over its array's range row: after ``scancel 12_2`` sacct lists the
    range ``12_[0-2%2]`` as CANCELLED even though tasks 0 and 1 started and have rows of their own."""
    own: dict[str, SlurmState] = {}
    ranged: dict[str, SlurmState] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 3:
            continue
        state = parts[1].split()[0] if parts[1] else "UNKNOWN"  # "CANCELLED by 0" → CANCELLED
        try:
            submit = datetime.fromisoformat(parts[2]).timestamp()
        except ValueError:
            submit = None
        rows = ranged if "_[" in parts[0] else own
        for jid in _expand_array(parts[0]):
            rows.setdefault(jid, SlurmState(state, submit))
    return {**ranged, **own}


def holders_alive(locks: Iterable[Mapping[str, Any]]) -> list[tuple[bool, str]]:
    """For each lock: (alive, why), asking sacct once for all SLURM holders."""
    locks = list(locks)
    here = hostname()
    slurm = slurm_states(str(lk["slurm_job_id"]) for lk in locks if lk.get("slurm_job_id"))
    out: list[tuple[bool, str]] = []
    now = time.time()
    for lk in locks:
        jid = lk.get("slurm_job_id")
        if jid and slurm is not None:
            state, submit = slurm.get(str(jid), (None, None))
            updated = float(lk.get("updated") or 0)
            if state is None:
                fresh = now - updated < ACCOUNTING_GRACE_S
                out.append(
                    (fresh, f"SLURM job {jid} unknown to accounting" + (" (just submitted)" if fresh else ""))
                )
            elif submit is not None and updated and submit > updated + SUBMIT_SLACK_S:
                out.append((False, f"SLURM job id {jid} now belongs to a later job (cluster restarted)"))
            else:
                out.append((state in ACTIVE_SLURM_STATES, f"SLURM job {jid} {state}"))
            continue
        if lk.get("host") == here:
            pids = [(lk.get("pid"), lk.get("pid_start")), (lk.get("job_pid"), lk.get("job_pid_start"))]
            live = [p for p, s in pids if isinstance(p, int) and pid_alive(p, s)]
            if live:
                out.append((True, f"pid {live[0]} on {here}"))
            else:
                out.append((False, f"pid {lk.get('pid')} on {here} is gone"))
            continue
        if jid:
            out.append((True, f"SLURM job {jid} (sacct unavailable here)"))
        else:
            out.append((True, f"pid {lk.get('pid')} on {lk.get('host')} (another host: cannot check)"))
    return out
