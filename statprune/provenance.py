"""Where a result came from: package versions, git commit, source hash, host, time."""

from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

# what `statprune publish` writes beside a published study's records (who published what, from which code)
PROVENANCE_FILE = "PROVENANCE.json"


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the statprune source tree (``+dirty`` with local changes); None outside git."""
    repo = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


@functools.lru_cache(maxsize=1)
def source_sha256() -> str:
    """sha256 of the statprune package's source (its ``*.py`` and ``*.json`` files, by relative path).

    The code's identity even where git cannot tell it: a copy of the tree whose ``.git`` is stale or
    absent (a remote machine's checkout) records a wrong or no commit, or only ``+dirty``; two
    records with the same source hash ran the same statprune code."""
    from statprune.data.origin import content_sha256

    package = Path(__file__).resolve().parent
    return content_sha256(source_files(package), root=package)


def source_files(root: Path, suffixes: tuple[str, ...] = (".py", ".json")) -> list[Path]:
    """The files under ``root`` with ``suffixes``, bytecode caches left out."""
    return [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in suffixes and "__pycache__" not in p.relative_to(root).parts
    ]


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    import statprune

    out = {"python": platform.python_version(), "statprune": statprune.__version__}
    for mod in ("torch", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = "unavailable"
    return out


def peak_memory_bytes(device: object = None) -> int:
    """Peak CUDA memory allocated on ``device`` (a CUDA device or name), else the process's peak RSS."""
    if str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.max_memory_allocated(device))  # type: ignore[arg-type]
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def provenance() -> dict[str, object]:
    return {
        "versions": versions(),
        "git_commit": git_commit(),
        "source_sha256": source_sha256(),
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
    }
