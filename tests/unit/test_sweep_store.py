"""Run records and claims: atomic writes, exclusive claims across processes, stale locks, status,
and the plan a launch makes from them."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import stat
import subprocess
import sys

import pytest

from statprune.sweep import owners
from statprune.sweep.fingerprint import expected_stamp
from statprune.sweep.launch import format_table, plan
from statprune.sweep.spec import parse_spec
from statprune.sweep.store import RunStore, atomic_write_json

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SPEC = """
study = "s"
[[methods]]
name = "magnitude"
[[grid]]
models = ["random:tiny-bert"]
tasks = ["movie-sentiment"]
sparsities = [0.1, 0.2, 0.3, 0.4, 0.5]
calib_sizes = [4]
"""


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def record(run_id: str, status: str, **extra) -> dict:
    return {"run_id": run_id, "name": run_id, "study": "s", "status": status, **extra}


def test_atomic_write_leaves_whole_readable_files(tmp_path):
    path = tmp_path / "a" / "r.json"
    atomic_write_json(path, {"x": list(range(1000))})
    atomic_write_json(path, {"x": [1]})
    assert json.loads(path.read_text()) == {"x": [1]}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp files left behind
    assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044  # readable by the group and others


def test_claim_is_exclusive_between_launches_and_shared_within_one(tmp_path):
    store = RunStore(tmp_path, "s")
    a = owners.identity("launch-a", "driver")
    b = owners.identity("launch-b", "driver")
    assert store.claim("r1", a).ok
    held = store.claim("r1", b)
    assert not held.ok and held.lock["launch_id"] == "launch-a" and "pid" in held.detail
    job = owners.identity("launch-a", "job")  # the job of launch a takes its driver's claim over
    assert store.claim("r1", job).ok
    assert store.read_lock("r1")["role"] == "job"
    assert not store.release("r1", "launch-b")
    assert store.release("r1", "launch-a")
    assert store.read_lock("r1") is None
    assert store.claim("r1", b).ok


def test_stale_lock_of_a_dead_process_is_broken(tmp_path):
    store = RunStore(tmp_path, "s")
    gone = {**owners.identity("old", "job"), "pid": dead_pid(), "pid_start": None}
    assert store.claim("r1", gone).ok
    st = store.states(["r1"])["r1"]
    assert st.status == "stale" and "gone" in st.detail
    claim = store.claim("r1", owners.identity("new", "driver"))
    assert claim.ok and claim.detail == "stale lock broken"
    assert store.read_lock("r1")["launch_id"] == "new"


def test_lock_on_another_host_counts_as_alive(tmp_path):
    store = RunStore(tmp_path, "s")
    assert store.claim("r1", {**owners.identity("x", "job"), "host": "elsewhere", "pid": 1}).ok
    assert store.states(["r1"])["r1"].status == "running"
    assert not store.claim("r1", owners.identity("y", "driver")).ok


def _claimer(args):
    root, launch, run_ids, barrier = args
    store = RunStore(root, "s")
    barrier.wait()
    claims = store.claim_many(run_ids, owners.identity(launch, "driver"))
    won = [r for r, c in claims.items() if c.ok]
    barrier.wait()  # stay alive until every process has claimed: our locks must look live
    return won


@pytest.mark.parametrize("stale_locks", [False, True])
def test_concurrent_launches_never_claim_the_same_run(tmp_path, stale_locks):
    run_ids = [f"r{i:02d}" for i in range(40)]
    if stale_locks:  # every run starts with a dead holder: all launches try to break the same locks
        store = RunStore(tmp_path, "s")
        gone = {**owners.identity("dead", "job"), "pid": dead_pid(), "pid_start": None}
        store.claim_many(run_ids, gone)
    n = 4
    ctx = mp.get_context("fork")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(n)
        with ctx.Pool(n) as pool:
            wins = pool.map(
                _claimer, [(str(tmp_path), f"launch-{k}", run_ids[k % 3 :], barrier) for k in range(n)]
            )
    claimed = [r for w in wins for r in w]
    assert sorted(claimed) == sorted(set(claimed))  # nobody claimed a run twice
    assert set(claimed) == set(run_ids)


def test_states_and_plan(tmp_path):
    spec = parse_spec(tomllib.loads(SPEC))
    runs = spec.runs()
    ids = [r.run_id for r in runs]
    store = RunStore(tmp_path, "s")
    store.write(record(ids[0], "done", **expected_stamp("magnitude", {})))  # made by this code
    store.write(
        record(ids[1], "failed", error={"type": "ValueError", "message": "boom\nmore", "traceback": "tb"})
    )
    store.write(record(ids[2], "running"))  # no lock: its holder died without cleaning up
    store.claim(ids[3], owners.identity("live", "job"))  # held by this (live) process
    states = store.states(ids)
    assert [states[i].status for i in ids] == ["done", "failed", "stale", "running", "missing"]
    assert states[ids[1]].detail == "boom"

    rows = plan(store, runs)
    assert [r.action for r in rows] == ["skip", "skip", "run", "wait", "run"]
    rows = plan(store, runs, retry_failed=True)
    assert [r.action for r in rows] == ["skip", "retry", "run", "wait", "run"]
    table = format_table(rows)
    assert table.splitlines()[0].split() == ["run_id", "name", "status", "action", "detail"]
    assert ids[1] in table and "retry" in table


def test_records_ignores_foreign_files(tmp_path):
    store = RunStore(tmp_path, "s")
    store.write(record("abc", "done"))
    (store.dir / "notes.json").write_text("{}")
    (store.dir / "broken.json").write_text("{")
    assert list(store.records()) == ["abc"]


def test_driver_records_a_lost_job_but_never_overwrites_done(tmp_path):
    store = RunStore(tmp_path, "s")
    me = owners.identity("L", "driver")
    store.claim("r1", me)
    store.write(record("r1", "running", started="t0", host="h"))
    lost = record("r1", "cancelled", launch_id="L", error={"message": "job 7 CANCELLED"})
    assert store.finalize_lost("r1", "L", lost)
    rec = store.read("r1")
    assert rec["status"] == "cancelled" and rec["started"] == "t0" and rec["host"] == "h"
    assert store.read_lock("r1") is None

    store.write(record("r2", "done"))
    assert not store.finalize_lost("r2", "L", record("r2", "failed", launch_id="L"))
    assert store.read("r2")["status"] == "done"


def test_finalize_lost_leaves_runs_of_live_other_launches_alone(tmp_path):
    store = RunStore(tmp_path, "s")
    store.claim("r1", owners.identity("other", "job"))
    store.write(record("r1", "running"))
    assert not store.finalize_lost("r1", "mine", record("r1", "cancelled", launch_id="mine"))
    assert store.read("r1")["status"] == "running"


def test_slurm_array_ids_expand():
    assert owners._expand_array("12_[3-5,7%2]") == ["12_3", "12_4", "12_5", "12_7"]
    assert owners._expand_array("12_4") == ["12_4"]


def test_task_row_wins_over_cancelled_array_range():
    """sacct after ``scancel 37_2``: the range row says CANCELLED for 0-2, but 37_1 has its own row."""
    text = (
        "37_0|CANCELLED by 0|2026-11-29T01:06:07\n"
        "37_[0-2%2]|CANCELLED by 0|2026-11-29T01:06:07\n"
        "37_1|RUNNING|2026-11-29T01:06:07\n"
    )
    states = owners._parse_sacct(text)
    assert {k: v.state for k, v in states.items()} == {
        "37_0": "CANCELLED",
        "37_1": "RUNNING",
        "37_2": "CANCELLED",
    }


def test_pid_alive_checks_start_time():
    me = os.getpid()
    assert owners.pid_alive(me, owners.proc_start(me))
    assert not owners.pid_alive(me, "1")  # same pid, other process (pid reuse)
    assert not owners.pid_alive(dead_pid())


@pytest.mark.parametrize("bad", ["partition = 3", "cpus_per_task = 0", "colour = 'red'", "setup = 'x'"])
def test_cluster_profile_errors_name_the_key(tmp_path, bad):
    from statprune.errors import StatpruneError
    from statprune.sweep.executors import load_profile

    p = tmp_path / "p.toml"
    p.write_text(bad + "\n")
    with pytest.raises(StatpruneError, match=bad.split()[0]):
        load_profile(p)


def test_local_profile_loads():
    from pathlib import Path

    from statprune.sweep.executors import load_profile

    prof = load_profile(Path(__file__).resolve().parents[2] / "slurm" / "local.toml")
    assert prof.partition == "debug" and prof.cpus_per_task == 1 and "export WANDB_MODE=offline" in prof.setup


def test_unknown_executor_lists_the_choices(tmp_path):
    from statprune.errors import StatpruneError
    from statprune.sweep.executors import make_executor

    with pytest.raises(StatpruneError, match=r"unknown executor 'lokal'.*did you mean 'local'"):
        make_executor("lokal", tmp_path)


def test_records_are_never_seen_half_written(tmp_path):
    """Readers (the analysis, --status) read records while a sweep writes them."""
    store = RunStore(tmp_path, "s")
    payload = tmp_path / "payload.json"
    blob = "x" * 300_000
    payload.write_text(
        json.dumps({"run_id": "r", "name": "r", "study": "s", "status": "running", "blob": blob})
    )
    code = (
        "import sys, json; from statprune.sweep.store import RunStore; s = RunStore(sys.argv[1], 's'); "
        "p = json.load(open(sys.argv[2])); [s.write(dict(p, i=i)) for i in range(200)]"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(payload)])
    reads = 0
    while proc.poll() is None:
        try:
            text = store.record_path("r").read_text()
        except FileNotFoundError:
            continue
        assert json.loads(text)["blob"] == blob
        reads += 1
    assert proc.returncode == 0 and reads > 0
