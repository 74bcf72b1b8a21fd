"""The real single-node SLURM cluster works the way the sweeps need it to (submitit, arrays,
GPU gres, cancellation seen through accounting). Start it with slurm/cluster-up.sh."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import submitit
from submitit.core.utils import UncompletedJobError

from statprune.sweep import slurm_probe

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]


def slurm_cmd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)


def report(capsys: pytest.CaptureFixture, msg: str) -> None:
    with capsys.disabled():
        print(f"\n[slurm] {msg}", end="")


def sacct_field(job_id: str, field: str, *, timeout: float = 20, until: tuple[str, ...] = ()) -> str:
    """One accounting field of a job (allocation line), waiting until slurmdbd has the record (and,
    with ``until``, until the field takes one of those values: accounting trails the job's result
    file, so a finished job can still read RUNNING for a moment on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while True:
        out = slurm_cmd("sacct", "-n", "-X", "-P", "-j", job_id, "-o", field).stdout.strip()
        value = out.splitlines()[0] if out else ""
        if (value and (not until or value.startswith(until))) or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def wait_done(job: submitit.Job, timeout: float) -> float:
    """Poll like ``job.result()`` does, but give up after ``timeout`` s instead of blocking forever."""
    start = time.monotonic()
    while not job.done():
        if time.monotonic() - start > timeout:
            pytest.fail(f"job {job.job_id} not done after {timeout}s (state {job.state})")
        time.sleep(0.5)
    return time.monotonic() - start


def test_profiles_parse(load_profile):
    local = load_profile(REPO / "slurm" / "local.toml")
    gpu = load_profile(REPO / "slurm" / "gpu-example.toml")
    assert local["gpus_per_job"] == 0 and local["cpus_per_task"] == 1
    assert gpu["gpus_per_job"] == 1


def test_partition_from_profile_exists(slurm_cluster):
    out = slurm_cmd("sinfo", "-h", "-o", "%P").stdout.split()
    assert f"{slurm_cluster.partition}*" in out or slurm_cluster.partition in out


def test_single_job(make_executor, capsys):
    executor = make_executor()
    start = time.monotonic()
    job = executor.submit(slurm_probe.whoami, 21)
    result = job.result()
    report(capsys, f"single job {job.job_id}: submit -> result {time.monotonic() - start:.1f}s")
    assert result["value"] == 42
    assert result["slurm_job_id"] == job.job_id
    assert sacct_field(job.job_id, "State", until=("COMPLETED", "FAILED", "CANCELLED")) == "COMPLETED"


def test_map_array(make_executor, capsys):
    executor = make_executor()
    start = time.monotonic()
    jobs = executor.map_array(slurm_probe.whoami, [1, 2, 3])
    results = [job.result() for job in jobs]
    report(capsys, f"array of 3 ({jobs[0].job_id}): submit -> results {time.monotonic() - start:.1f}s")
    assert [r["value"] for r in results] == [2, 4, 6]
    assert sorted(r["slurm_array_task_id"] for r in results) == ["0", "1", "2"]
    assert len({r["slurm_job_id"] for r in results}) == 3
    assert len({r["slurm_array_job_id"] for r in results}) == 1


def test_gpu_gres(make_executor, capsys):
    executor = make_executor(gpus_per_node=1)
    start = time.monotonic()
    job = executor.submit(slurm_probe.whoami, 1)
    result = job.result()
    report(
        capsys,
        f"gpu job {job.job_id}: CUDA_VISIBLE_DEVICES={result['cuda_visible_devices']}, "
        f"submit -> result {time.monotonic() - start:.1f}s",
    )
    assert result["cuda_visible_devices"] in ("0", "1")
    assert "gres/gpu=1" in sacct_field(job.job_id, "AllocTRES")


def test_scancel_raises_uncompleted(make_executor, capsys):
    executor = make_executor()
    job = executor.submit(slurm_probe.nap, 600)
    deadline = time.monotonic() + 60
    while slurm_cmd("squeue", "-h", "-j", job.job_id, "-o", "%T").stdout.strip() != "RUNNING":
        assert time.monotonic() < deadline, f"job {job.job_id} never started running"
        time.sleep(0.2)
    start = time.monotonic()
    assert slurm_cmd("scancel", job.job_id).returncode == 0
    seen = wait_done(job, timeout=60)  # sacct reports CANCELLED
    with pytest.raises(UncompletedJobError):
        job.result()  # then submitit waits _results_timeout_s (15 s) for a result file that never comes
    raised = time.monotonic() - start
    report(capsys, f"scancel {job.job_id}: done() after {seen:.1f}s, UncompletedJobError after {raised:.1f}s")
    assert raised < 40, "sacct should show the cancel within seconds (+15 s submitit grace)"
    assert sacct_field(job.job_id, "State", until=("CANCELLED", "COMPLETED", "FAILED")).startswith(
        "CANCELLED"
    )
