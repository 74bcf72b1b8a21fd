"""Tiny job functions used only to probe the SLURM cluster (tests/slurm, cluster smoke checks).

They live in the installed package, not in a test module, because a submitted function must be
importable inside the job. They import nothing heavy so a probe job starts in about a second.
"""

from __future__ import annotations

import os
import socket
import time


def whoami(x: int) -> dict:
    """Return ``x * 2`` and where the job ran: host, SLURM job/array ids, visible GPUs."""
    return {
        "value": x * 2,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "slurm_job_gpus": os.environ.get("SLURM_JOB_GPUS"),
    }


def nap(seconds: float) -> float:
    """Sleep for ``seconds`` (a job to cancel or time out) and return how long it slept."""
    start = time.monotonic()
    time.sleep(seconds)
    return time.monotonic() - start
