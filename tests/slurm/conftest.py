"""Fixtures for tests against the real single-node SLURM cluster (slurm/cluster-up.sh).

Every test marked ``slurm`` under this folder needs the cluster. When it is not up the test is
skipped with the reason, except under CI (``CI`` set), where a missing cluster is a failure: CI
starts the cluster, so a skip there would hide a broken setup.

The cluster is found through ``SLURM_CONF`` (``source slurm/cluster-env.sh``); when that is unset,
the default state dir (``$STATPRUNE_SLURM_STATE_DIR`` or ``<repo>/.slurm-state``) is tried and
``SLURM_CONF`` is exported for the session, because submitit runs ``sbatch``/``sacct`` as
subprocesses that need it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
LOCAL_PROFILE = REPO / "slurm" / "local.toml"
PROFILE_KEYS = {
    "name": str,
    "partition": str,
    "gpus_per_job": int,
    "cpus_per_task": int,
    "mem_gb": int,
    "time_min": int,
    "array_parallelism": int,
    "setup": list,
    "sbatch_extra": dict,
}
READY_STATES = ("idle", "mixed", "allocated", "completing")


def _load_profile(path: Path) -> dict:
    """Read a cluster profile TOML and check it has exactly the profile keys with the right types."""
    with open(path, "rb") as f:
        profile = tomllib.load(f)
    assert set(profile) == set(PROFILE_KEYS), f"{path}: keys {sorted(profile)} != {sorted(PROFILE_KEYS)}"
    for key, typ in PROFILE_KEYS.items():
        assert isinstance(profile[key], typ), f"{path}: {key} should be {typ.__name__}"
    return profile


@pytest.fixture(scope="session", name="load_profile")
def load_profile_fixture():
    """The profile reader (checks keys and types), for tests of the profile files."""
    return _load_profile


@dataclass(frozen=True)
class SlurmCluster:
    conf: Path
    profile: dict

    @property
    def partition(self) -> str:
        return self.profile["partition"]


def _slurm_cmd(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def _find_cluster() -> tuple[SlurmCluster | None, str]:
    if shutil.which("sbatch") is None:
        return None, "Slurm clients are not installed (run slurm/cluster-up.sh)"
    conf = os.environ.get("SLURM_CONF")
    if not conf:
        state = os.environ.get("STATPRUNE_SLURM_STATE_DIR") or str(REPO / ".slurm-state")
        conf = str(Path(state) / "etc" / "slurm.conf")
    if not Path(conf).is_file():
        return None, f"no cluster config at {conf}: run slurm/cluster-up.sh && source slurm/cluster-env.sh"
    os.environ["SLURM_CONF"] = conf
    port = re.search(r"^SlurmctldPort=(\d+)", Path(conf).read_text(), re.M)
    try:  # fast answer when the controller is down (sinfo retries for about 10 s)
        socket.create_connection(("127.0.0.1", int(port.group(1)) if port else 6817), timeout=2).close()
    except OSError:
        return None, f"slurmctld is not listening (config {conf}); run slurm/cluster-up.sh"
    profile = _load_profile(LOCAL_PROFILE)
    try:
        info = _slurm_cmd("sinfo", "-h", "-N", "-p", profile["partition"], "-o", "%T")
        sacct = _slurm_cmd("sacct", "-n", "-X")
    except subprocess.TimeoutExpired as e:
        return None, f"the cluster does not answer ({e.cmd[0]} timed out); run slurm/cluster-up.sh"
    if info.returncode != 0 or not info.stdout.strip().startswith(READY_STATES):
        why = (info.stderr or info.stdout).strip() or "no node"
        return None, f"cluster not up (sinfo: {why}); run slurm/cluster-up.sh"
    if sacct.returncode != 0:
        return None, f"accounting is down (sacct: {sacct.stderr.strip()}); run slurm/cluster-up.sh"
    return SlurmCluster(conf=Path(conf), profile=profile), ""


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """The running test cluster; skips (fails under CI) when it is not up."""
    cluster, reason = _find_cluster()
    if cluster is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI must run the slurm tests but {reason}", pytrace=False)
        pytest.skip(reason)
    return cluster


@pytest.fixture(autouse=True)
def _needs_cluster(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("slurm") is not None:
        request.getfixturevalue("slurm_cluster")


@pytest.fixture
def make_executor(slurm_cluster: SlurmCluster, tmp_path: Path):
    """Build a submitit SLURM executor from the local profile, in a fresh folder per test.

    A fresh folder matters: job ids restart at 1 with every new cluster, and a reused folder would
    hand back stale results of an earlier cluster's job with the same id.
    """
    import submitit

    def make(**overrides):
        p = slurm_cluster.profile
        executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
        params = {
            "slurm_partition": p["partition"],
            "cpus_per_task": p["cpus_per_task"],
            "timeout_min": p["time_min"],
            "slurm_array_parallelism": p["array_parallelism"],
            "slurm_setup": p["setup"],
            "slurm_additional_parameters": p["sbatch_extra"],
        }
        if p["mem_gb"]:
            params["mem_gb"] = p["mem_gb"]
        if p["gpus_per_job"]:
            params["gpus_per_node"] = p["gpus_per_job"]
        params.update(overrides)
        executor.update_parameters(**params)
        return executor

    return make
