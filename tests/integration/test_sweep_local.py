"""Sweeps end to end on this machine (packaged task data, random tiny models): inline and submitit
local processes, a run that fails at run time, resume, and a killed driver plus a killed job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from statprune.sweep.launch import LaunchOptions, launch
from statprune.sweep.spec import load_spec
from statprune.sweep.store import RunStore

pytestmark = pytest.mark.integration

SPEC = """
study = "{study}"
[settings]
batch_size = 8
eval_batch_size = 64
max_length = 48
eval_limit = 60
[[methods]]
name = "magnitude"
[[methods]]
name = "stat"
options = {{ progress = false }}
[[grid]]
models = ["random:tiny-bert"]
tasks = ["movie-sentiment"]
sparsities = {sparsities}
calib_sizes = [8]
{extra}
"""
# only detectable at run time: the calibration split has ~8000 examples
IMPOSSIBLE = """
[[grid]]
models = ["random:tiny-bert"]
tasks = ["movie-sentiment"]
methods = ["magnitude"]
sparsities = [0.3]
calib_sizes = [1000000]
"""


def write_spec(tmp_path: Path, study: str, sparsities: list[float], extra: str = "") -> Path:
    path = tmp_path / f"{study}.toml"
    path.write_text(SPEC.format(study=study, sparsities=sparsities, extra=extra))
    return path


def say(capsys: pytest.CaptureFixture, msg: str) -> None:
    with capsys.disabled():
        print(f"\n[sweep] {msg}", end="")


def test_inline_sweep_failure_resume_and_dense_cache(tmp_path, capsys):
    spec = load_spec(write_spec(tmp_path, "inline", [0.3], IMPOSSIBLE))
    store = RunStore(tmp_path / "results", spec.study)
    runs = spec.runs()
    opts = LaunchOptions(executor="inline", tracking=False, progress=False)
    report = launch(spec, store, runs, opts, echo=lambda _: None)
    recs = store.records()
    assert len(recs) == 3 and report.final["done"] == 2 and report.final["failed"] == 1
    failed = next(r for r in recs.values() if r["status"] == "failed")
    assert failed["config"]["calib_size"] == 1000000
    assert failed["error"]["type"] == "StatpruneError"
    assert "larger than the split" in failed["error"]["message"]
    assert "Traceback" in failed["error"]["traceback"] and "make_calibration" in failed["error"]["traceback"]
    done = [r for r in recs.values() if r["status"] == "done"]
    for r in done:
        assert r["metrics"]["num_examples"] == 60 and 0 <= r["metrics"]["accuracy"] <= 1
        assert r["dense_metrics"]["num_examples"] == 60
        assert abs(r["prune"]["sparsity_achieved"] - 0.3) < 0.1
        assert r["prune"]["layers"] and r["prune"]["layers_dense"]
        assert r["timings"]["total_seconds"] > 0 and r["timings"]["prune_seconds"] > 0
        assert r["versions"]["torch"] and r["host"] and r["finished"] >= r["started"]
        assert r["peak_memory_bytes"] > 0 and r["wandb_run"] is None
    assert sorted(r["dense_cached"] for r in done) == [False, True]  # the dense model is evaluated once

    # resume: nothing left to do, nothing recomputed
    before = {k: (v["started"], store.record_path(k).stat().st_mtime_ns) for k, v in recs.items()}
    report = launch(spec, store, runs, opts, echo=lambda _: None)
    assert report.submitted == [] and report.planned == {"skip": 3}
    after = {k: (v["started"], store.record_path(k).stat().st_mtime_ns) for k, v in store.records().items()}
    assert after == before

    # --retry-failed re-runs exactly the failed run (it fails again, with a new record)
    report = launch(
        spec,
        store,
        runs,
        LaunchOptions(executor="inline", tracking=False, progress=False, retry_failed=True),
        echo=lambda _: None,
    )
    assert report.submitted == [failed["run_id"]]
    again = store.read(failed["run_id"])
    assert again["status"] == "failed" and again["launch_id"] != failed["launch_id"]
    say(capsys, "inline: 2 done + 1 failed (calib size > split), resume re-ran 0, retry-failed re-ran 1")


def test_cli_status_and_dry_run(tmp_path, capsys):
    from statprune.cli import main

    path = write_spec(tmp_path, "cli", [0.3])
    results = tmp_path / "results"
    assert main(["sweep", str(path), "--results", str(results), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["run_id", "name", "status", "action", "detail"]
    assert "magnitude-tiny-bert-s0.30-n8-seed0" in out and "missing" in out and " run" in out
    assert not (results / "cli").exists() or not list((results / "cli").glob("*.json"))
    assert main(["sweep", str(path), "--results", str(results), "--status"]) == 0
    assert "missing 2" in capsys.readouterr().out


def _driver(spec: Path, results: Path, log: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "statprune.cli", "sweep", str(spec), "--results", str(results)]
    cmd += ["--executor", "local", "--no-wandb", "--quiet", *extra]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def test_killed_driver_and_killed_job_resume_without_loss_or_duplicates(tmp_path, capsys):
    """SIGKILL the driver and one running job; the re-run completes every run exactly once."""
    path = tmp_path / "kill.toml"  # 3 magnitude runs, 2 local jobs at a time
    text = SPEC.format(study="kill", sparsities=[0.2, 0.3, 0.4], extra="") + 'methods = ["magnitude"]\n'
    path.write_text(text.replace("eval_limit = 60", "eval_limit = 600"))  # runs long enough to be killed
    spec = load_spec(path)
    results = tmp_path / "results"
    store = RunStore(results, spec.study)
    ids = [r.run_id for r in spec.runs()]
    t0 = time.monotonic()
    first = _driver(path, results, tmp_path / "driver1.log", "--parallel", "2", "--threads", "1")

    # wait until one run is done and another one runs (the third job started after the first ended)
    victim = None
    deadline = time.monotonic() + 300
    while victim is None:
        assert time.monotonic() < deadline, (tmp_path / "driver1.log").read_text()
        assert first.poll() is None, "the driver finished before anything could be killed"
        recs = {i: store.read(i) or {} for i in ids}
        finished = [r["finished"] for r in recs.values() if r.get("status") == "done"]
        locks = [store.read_lock(i) for i in ids if recs[i].get("status") == "running"]
        jobs = [lk for lk in locks if lk and lk.get("role") == "job"]
        # a job that started after a run finished has most of its run ahead of it (one that started
        # with the first batch may end before the kill lands on a busy machine)
        fresh = [lk for lk in jobs if finished and (recs[lk["run_id"]].get("started") or "") >= min(finished)]
        if fresh:
            victim = fresh[0]
        time.sleep(0.1)
    os.kill(first.pid, signal.SIGKILL)  # the driver: nobody records what happens next
    os.kill(victim["pid"], signal.SIGKILL)  # one running job (its python process)
    first.wait()
    killed_at = time.monotonic() - t0
    time.sleep(1)

    final_before = {i: store.read(i) for i in ids if (store.read(i) or {}).get("status") == "done"}
    assert final_before
    mtimes_before = {i: store.record_path(i).stat().st_mtime_ns for i in final_before}
    assert store.states([victim["run_id"]])[victim["run_id"]].status in ("stale", "running")

    second = _driver(path, results, tmp_path / "driver2.log", "--parallel", "2", "--threads", "1")
    rc = second.wait(timeout=400)
    log2 = (tmp_path / "driver2.log").read_text()
    assert rc == 0, log2
    recs = store.records()
    assert sorted(recs) == sorted(ids)  # 0 lost
    assert all(r["status"] == "done" for r in recs.values())
    for i, rec in final_before.items():  # completed runs were not recomputed
        assert recs[i]["started"] == rec["started"] and recs[i]["launch_id"] == rec["launch_id"]
        assert store.record_path(i).stat().st_mtime_ns == mtimes_before[i]
    assert recs[victim["run_id"]]["launch_id"] != victim["launch_id"]  # re-run by the second launch
    # 0 duplicated: across both launches' job logs each run finished exactly once
    logs = "".join(p.read_text(errors="replace") for p in store.dir.glob("submitit/*/*_log.out"))
    finished = {i: logs.count(f"({i}): done in") for i in ids}
    assert finished == dict.fromkeys(ids, 1), finished
    assert not list(store.lock_dir.glob("*.lock"))
    say(
        capsys,
        f"kill test: driver + job {victim['run_id']} killed at {killed_at:.0f}s with {len(final_before)} done; "
        f"re-run: {len(recs)}/{len(ids)} done, 0 lost, 0 duplicated, {len(final_before)} not recomputed, "
        f"total {time.monotonic() - t0:.0f}s",
    )


@pytest.mark.slow
def test_finetune_stage_runs_once_before_the_runs(tmp_path, monkeypatch, capsys):
    """Runs sharing a fine-tune: one stage job trains it, every run loads the cached checkpoint."""
    monkeypatch.setenv("STATPRUNE_CACHE", str(tmp_path / "cache"))  # jobs inherit the environment
    ft = "\n[finetune]\nepochs = 1\nmax_length = 32\nbatch_size = 128\n"
    path = tmp_path / "ft.toml"
    path.write_text(
        SPEC.format(study="ft", sparsities=[0.2, 0.4], extra="") + 'methods = ["magnitude"]\n' + ft
    )
    spec = load_spec(path)
    store = RunStore(tmp_path / "results", spec.study)
    lines: list[str] = []
    opts = LaunchOptions(executor="local", parallel=2, threads=1, tracking=False, progress=False)
    t0 = time.monotonic()
    report = launch(spec, store, spec.runs(), opts, echo=lines.append)
    took = time.monotonic() - t0
    assert report.final["done"] == 2, lines
    assert any("fine-tune stage: 1 distinct fine-tune(s) for 2 runs" in x for x in lines)
    folders = [f for f in (tmp_path / "cache" / "finetuned").iterdir() if not f.name.startswith(".")]
    assert len(folders) == 1 and (folders[0] / "finetune_report.json").is_file()  # trained once
    recs = list(store.records().values())
    assert {r["model_path"] for r in recs} == {str(folders[0])}
    assert all(r["config"]["finetune"] == {"epochs": 1, "max_length": 32, "batch_size": 128} for r in recs)

    path.write_text(path.read_text().replace("sparsities = [0.2, 0.4]", "sparsities = [0.2, 0.3, 0.4]"))
    spec = load_spec(path)
    lines.clear()
    report = launch(spec, store, spec.runs(), opts, echo=lines.append)
    assert report.final["done"] == 3 and len(report.submitted) == 1
    assert not any("fine-tune stage" in x for x in lines)  # cached: no stage job
    say(capsys, f"fine-tune stage: 1 stage job for 2 runs in {took:.0f}s; later launch used the cache")
