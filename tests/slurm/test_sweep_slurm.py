"""Sweeps on the real single-node SLURM cluster (slurm/cluster-up.sh): job arrays, a run that
fails at run time, resume, ``scancel`` seen and recorded by the driver, and a killed driver whose
jobs keep running while a second launch waits for them instead of running them twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from statprune.sweep.executors import load_profile
from statprune.sweep.launch import LaunchOptions, launch
from statprune.sweep.spec import load_spec
from statprune.sweep.store import RunStore

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "slurm" / "local.toml"

SPEC = """
study = "{study}"
[settings]
batch_size = 8
max_length = 48
eval_limit = 60
[[methods]]
name = "magnitude"
[[grid]]
models = ["random:tiny-bert"]
tasks = ["movie-sentiment"]
sparsities = {sparsities}
calib_sizes = [8]
{extra}
"""
IMPOSSIBLE = """
[[grid]]
models = ["random:tiny-bert"]
tasks = ["movie-sentiment"]
sparsities = [0.3]
calib_sizes = [1000000]
"""
# a run that lasts long enough to be cancelled while it runs: many LM windows to evaluate
SLOW = """
study = "{study}"
[settings]
max_length = 64
calib_limit = 2
eval_limit = {eval_limit}
[[methods]]
name = "magnitude"
[[grid]]
models = ["random:tiny-llama"]
tasks = ["sotu"]
sparsities = {sparsities}
calib_sizes = [4]
"""


def say(capsys: pytest.CaptureFixture, msg: str) -> None:
    with capsys.disabled():
        print(f"\n[sweep-slurm] {msg}", end="")


def slurm_cmd(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=False).stdout.strip()


def driver(spec: Path, results: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "statprune.cli", "sweep", str(spec), "--results", str(results)]
    cmd += ["--executor", "slurm", "--cluster", str(PROFILE), "--quiet"]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(what: str, cond, timeout: float, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(poll)


def job_finish_counts(store: RunStore, ids: list[str]) -> dict[str, int]:
    logs = "".join(p.read_text(errors="replace") for p in store.dir.glob("submitit/*/*_log.out"))
    return {i: logs.count(f"({i}): done in") for i in ids}


def test_slurm_array_failure_and_resume(slurm_cluster, tmp_path, capsys):
    path = tmp_path / "arr.toml"
    path.write_text(SPEC.format(study="arr", sparsities=[0.2], extra=IMPOSSIBLE))
    spec = load_spec(path)
    store = RunStore(tmp_path / "results", spec.study)
    runs = spec.runs()
    opts = LaunchOptions(executor="slurm", profile=load_profile(PROFILE), progress=False)
    t0 = time.monotonic()
    report = launch(spec, store, runs, opts, echo=lambda _: None)
    took = time.monotonic() - t0
    recs = store.records()
    assert report.final == {
        "done": 1,
        "outdated": 0,
        "running": 0,
        "failed": 1,
        "cancelled": 0,
        "stale": 0,
        "missing": 0,
    }
    array_ids = {r["slurm_job_id"].split("_")[0] for r in recs.values()}
    assert len(array_ids) == 1 and all("_" in r["slurm_job_id"] for r in recs.values())  # one job array
    failed = next(r for r in recs.values() if r["status"] == "failed")
    assert (
        "larger than the split" in failed["error"]["message"] and "Traceback" in failed["error"]["traceback"]
    )
    for r in recs.values():
        assert r["threads"] == 1  # torch threads = the job's cpus_per_task
        assert r["wandb_run"] and r["wandb_run"].startswith("statprune/")  # offline mirror (WANDB_MODE)
    assert list(store.dir.glob("wandb/offline-run-*"))
    assert report.folder is not None and report.folder.parent == store.dir / "submitit"

    again = launch(spec, store, runs, opts, echo=lambda _: None)
    assert again.submitted == [] and again.folder is None  # nothing to do: no job submitted
    say(capsys, f"array of 2 (1 done, 1 failed with traceback) in {took:.1f}s; resume submitted 0 jobs")


def test_scancel_is_detected_and_recorded(slurm_cluster, tmp_path, capsys):
    """scancel a pending array task (the driver sees it in sacct and records it) and a running one
    (the job turns SIGTERM into a ``cancelled`` record); the third run completes."""
    path = tmp_path / "cancel.toml"
    path.write_text(SLOW.format(study="cancel", sparsities=[0.2, 0.3, 0.4], eval_limit=40))
    spec = load_spec(path)
    store = RunStore(tmp_path / "results", spec.study)
    ids = [r.run_id for r in spec.runs()]
    proc = driver(path, tmp_path / "results", tmp_path / "driver.log")
    try:
        locks = wait_for("job ids in the locks", lambda: _all_job_ids(store, ids), 60)
        array = next(iter(locks.values())).split("_")[0]

        def pending_and_running():
            out = slurm_cmd("squeue", "-h", "-r", "-j", array, "-o", "%i %T")
            states = dict(line.split() for line in out.splitlines())
            pending = [i for i in ids if states.get(locks[i]) == "PENDING"]
            # the driver's claim already reads "running"; the job has started once it holds the lock
            running = [
                i
                for i in ids
                if states.get(locks[i]) == "RUNNING" and (store.read_lock(i) or {}).get("role") == "job"
            ]
            return (pending[0], running[0]) if pending and running else None

        queued, active = wait_for("one pending and one running task", pending_and_running, 120)
        cmd = [
            sys.executable,
            "-m",
            "statprune.cli",
            "sweep",
            str(path),
            "--results",
            str(tmp_path / "results"),
        ]

        def status_shows_running():
            out = subprocess.run([*cmd, "--status"], capture_output=True, text=True, timeout=120).stdout
            return out if f"SLURM job {locks[active]} RUNNING" in out else None

        # sacct (what --status asks) can trail squeue by a moment after a task starts
        wait_for("--status to show the running task", status_shows_running, 30, 0.5)
        seconds = {}
        for run_id in (queued, active):
            t = time.monotonic()
            assert subprocess.run(["scancel", locks[run_id]], timeout=30).returncode == 0
            wait_for(
                f"the cancelled record of {run_id}",
                lambda r=run_id: (store.read(r) or {}).get("status") == "cancelled",
                60,
                0.05,
            )
            seconds[run_id] = time.monotonic() - t
        rc = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert rc == 1  # not every run is done
    recs = store.records()
    by_driver, by_job = recs[queued], recs[active]
    assert by_driver["recorded_by"] == "driver" and by_driver["error"]["job_state"].startswith("CANCELLED")
    assert by_driver["slurm_job_id"] == locks[queued]
    assert by_job["recorded_by"] == "job" and by_job["error"]["type"] == "JobTerminated"
    assert by_job["slurm_job_id"] == locks[active] and by_job["started"]
    (third,) = set(ids) - {queued, active}
    assert recs[third]["status"] == "done"
    assert not list(store.lock_dir.glob("*.lock"))
    say(
        capsys,
        f"scancel: pending task {locks[queued]} → cancelled record by the driver after {seconds[queued]:.1f}s; "
        f"running task {locks[active]} → cancelled record by the job after {seconds[active]:.1f}s",
    )
    assert max(seconds.values()) < 15


def _all_job_ids(store: RunStore, ids: list[str]) -> dict[str, str] | None:
    locks = {i: (store.read_lock(i) or {}).get("slurm_job_id") for i in ids}
    return locks if all(locks.values()) else None


def test_killed_driver_and_killed_job_resume(slurm_cluster, tmp_path, capsys):
    """SIGKILL the driver and one running job's process; a second launch waits for the jobs still
    running (no second copy), re-runs the killed one, and every run finishes exactly once."""
    path = tmp_path / "resume.toml"
    path.write_text(SLOW.format(study="resume", sparsities=[0.2, 0.3, 0.4], eval_limit=4))
    spec = load_spec(path)
    results = tmp_path / "results"
    store = RunStore(results, spec.study)
    ids = [r.run_id for r in spec.runs()]
    t0 = time.monotonic()
    first = driver(path, results, tmp_path / "driver1.log")

    def running_job():
        for i in ids:
            lk = store.read_lock(i)
            if lk and lk.get("role") == "job" and (store.read(i) or {}).get("status") == "running":
                return lk
        return None

    victim = wait_for("a running job", running_job, 120)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    os.kill(victim["pid"], signal.SIGKILL)  # the job's python process (this one node runs the jobs)
    wait_for(
        "the killed job to leave the queue",
        lambda: (
            slurm_cmd("sacct", "-n", "-X", "-P", "-j", victim["slurm_job_id"], "-o", "State")
            not in ("RUNNING", "")
        ),
        60,
    )
    second = driver(path, results, tmp_path / "driver2.log")
    rc = second.wait(timeout=300)
    log2 = (tmp_path / "driver2.log").read_text()
    assert rc == 0, log2
    recs = store.records()
    assert sorted(recs) == sorted(ids) and all(r["status"] == "done" for r in recs.values())  # 0 lost
    assert recs[victim["run_id"]]["launch_id"] != victim["launch_id"]  # the killed run was re-run
    others = [i for i in ids if i != victim["run_id"]]
    assert all(
        recs[i]["launch_id"] == victim["launch_id"] for i in others
    )  # first launch's jobs finished them
    assert job_finish_counts(store, ids) == dict.fromkeys(ids, 1)  # 0 duplicated
    assert "running elsewhere" in log2
    say(
        capsys,
        f"killed driver + job {victim['slurm_job_id']}: re-run waited for {len(others)} live jobs, "
        f"re-ran 1; {len(recs)}/{len(ids)} done, 0 lost, 0 duplicated, {time.monotonic() - t0:.0f}s",
    )
