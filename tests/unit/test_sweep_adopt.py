"""Adoption: a run without a record takes over the done record of a run whose config differs only in
how its method options are spelled (same resolved options: same fingerprint) — never another
computation, never over an existing record, never from ``--status``. Records are synthetic (stamped
by the current code) except one inline run of a tiny random model."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from statprune.analysis.publish import publish_study
from statprune.cli import main
from statprune.sweep import owners
from statprune.sweep.adopt import adopt, adoptable
from statprune.sweep.config import RunConfig, RunSpec
from statprune.sweep.fingerprint import expected_stamp
from statprune.sweep.launch import LaunchOptions, launch, plan
from statprune.sweep.spec import load_spec, parse_spec
from statprune.sweep.store import RunStore

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).parents[2]
SPEC = """
study = "s"
[settings]
max_length = 16
batch_size = 4
eval_batch_size = 8
device = "cpu"
eval_limit = 4
[[methods]]
name = "magnitude"
{options}
[[grid]]
models = ["random:tiny-bert"]
tasks = ["movie-sentiment"]
sparsities = [0.2]
calib_sizes = [4]
"""
OLD = SPEC.format(options="")  # magnitude at its defaults
NEW = SPEC.format(options='options = { score = "product" }')  # the default score, spelled out
INLINE = LaunchOptions(executor="inline", tracking=False, progress=False)


def _run(text: str) -> RunSpec:
    (run,) = parse_spec(tomllib.loads(text)).runs()
    return run


def _as_run(cfg: RunConfig) -> RunSpec:
    return RunSpec(run_id=cfg.run_id, name=f"r-{cfg.run_id}", config=cfg)


def _done(run: RunSpec, study: str = "s", **extra) -> dict:
    """A done record as the current code writes it for ``run`` (stamp from its config)."""
    cfg = run.config.to_dict()
    return {
        "run_id": run.run_id,
        "name": run.name,
        "study": study,
        "status": "done",
        "config": cfg,
        "metrics": {"accuracy": 0.625},
        "git_commit": "abc123",
        "launch_id": "L0",
        **expected_stamp(cfg["method"], cfg["method_options"]),
        **extra,
    }


def _files(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")} if root.exists() else {}


def test_spelled_out_default_adopts_the_record_of_the_run_without_options(tmp_path):
    old, new = _run(OLD), _run(NEW)
    assert old.run_id != new.run_id and new.config.to_dict()["method_options"] == {"score": "product"}
    store = RunStore(tmp_path, "s")
    store.write(_done(old))
    assert plan(store, [new])[0].state.status == "missing"

    assert adopt(store, [new]) == {new.run_id: old.run_id}
    rec = store.read(new.run_id)
    assert rec["run_id"] == new.run_id and rec["name"] == new.name and rec["config"] == new.config.to_dict()
    assert rec["adopted_from"]["run_id"] == old.run_id and rec["adopted_from"]["name"] == old.name
    assert rec["adopted_from"]["source"] == str(store.dir) and rec["adopted_from"]["when"]
    kept = {k: v for k, v in _done(old).items() if k not in ("run_id", "name", "config")}
    assert {k: rec[k] for k in kept} == kept  # metrics, fingerprint, commit, launch: as that code made them
    assert store.read(old.run_id) == _done(old)  # the source is left alone
    (row,) = plan(store, [new])
    assert (row.state.status, row.action, row.state.detail) == ("done", "skip", f"adopted from {old.run_id}")
    assert adopt(store, [new]) == {}  # it has a record now


def _other_config(field: str, value) -> RunSpec:
    return _as_run(dataclasses.replace(_run(OLD).config, **{field: value}))


@pytest.mark.parametrize(
    "candidate",
    [
        pytest.param(lambda: _done(_run(SPEC.format(options='options = { score = "in" }'))), id="options"),
        pytest.param(lambda: _done(_other_config("seed", 1)), id="seed"),
        pytest.param(lambda: _done(_other_config("sparsity", 0.3)), id="sparsity"),
        pytest.param(lambda: _done(_other_config("eval_split", "train")), id="eval_split"),
        pytest.param(lambda: _done(_other_config("eval_limit", None)), id="eval_limit"),
        pytest.param(lambda: _done(_run(OLD), fingerprint="0" * 64), id="stale-fingerprint"),
        pytest.param(lambda: _done(_run(OLD), flops_model_version=1, fingerprint=None), id="no-fingerprint"),
        pytest.param(
            lambda: {k: v for k, v in _done(_run(OLD)).items() if k != "record_format"}, id="format-1"
        ),
        pytest.param(lambda: _done(_run(OLD), status="failed"), id="failed"),
    ],
)
def test_not_adopted_unless_the_same_computation_by_the_current_code(tmp_path, candidate):
    new = _run(NEW)
    store = RunStore(tmp_path, "s")
    rec = candidate()
    store.write(rec)
    assert rec["run_id"] != new.run_id
    assert adoptable(store, [new]) == {} and adopt(store, [new]) == {}
    assert store.read(new.run_id) is None


def test_a_run_with_a_record_or_a_live_claim_is_never_touched(tmp_path):
    old, new = _run(OLD), _run(NEW)
    store = RunStore(tmp_path, "s")
    store.write(_done(old))
    failed = {**_done(new), "status": "failed", "metrics": None}
    store.write(failed)
    assert adopt(store, [new]) == {} and store.read(new.run_id) == failed

    other = RunStore(tmp_path / "b", "s")
    other.write(_done(old))
    assert other.claim(new.run_id, owners.identity("L1", "driver")).ok  # this live process holds it
    assert adoptable(other, [new]) == {} and adopt(other, [new]) == {}
    assert other.read(new.run_id) is None


def test_own_folder_first_then_sources_in_order_and_study_set(tmp_path):
    old, new = _run(OLD), _run(NEW)
    twin = _as_run(dataclasses.replace(old.config, method_options=(("norm", "l2"),)))  # also the default
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, run in ((a, twin), (b, old)):
        folder.mkdir()
        (folder / f"{run.run_id}.json").write_text(json.dumps(_done(run, study="elsewhere")))
    store = RunStore(tmp_path / "results", "s")
    assert adoptable(store, [new]) == {}
    assert {k: v.from_id for k, v in adoptable(store, [new], [b, a]).items()} == {new.run_id: old.run_id}
    assert {k: v.from_id for k, v in adoptable(store, [new], [a, b]).items()} == {new.run_id: twin.run_id}
    store.write(_done(old))
    found = adoptable(store, [new], [a, b])[new.run_id]
    assert (found.from_id, found.source) == (old.run_id, str(store.dir))
    store.record_path(old.run_id).unlink()
    assert adopt(store, [new], [str(b)]) == {new.run_id: old.run_id}
    rec = store.read(new.run_id)
    assert rec["study"] == "s" and rec["adopted_from"]["source"] == str(b)


def test_compatible_since_of_a_published_folder_is_respected(tmp_path):
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("needs git")
    old, new = _run(OLD), _run(NEW)
    pub = tmp_path / "pub"
    pub.mkdir()
    (pub / "PROVENANCE.json").write_text(json.dumps({"compatible_since": {"commit": head.stdout.strip()}}))
    (pub / f"{old.run_id}.json").write_text(json.dumps(_done(old, git_commit="0" * 40)))
    store = RunStore(tmp_path / "results", "s")
    assert adoptable(store, [new], [pub]) == {}
    (pub / f"{old.run_id}.json").write_text(json.dumps(_done(old, git_commit=head.stdout.strip())))
    assert set(adoptable(store, [new], [pub])) == {new.run_id}


def _cli(spec: Path, results: Path, capsys, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["sweep", str(spec), "--results", str(results), *extra])
    return rc, capsys.readouterr().out


def test_cli_status_shows_adoptable_and_writes_nothing_launch_adopts(tmp_path, capsys):
    old_spec, new_spec = tmp_path / "old.toml", tmp_path / "new.toml"
    old_spec.write_text(OLD)
    new_spec.write_text(NEW)
    results = tmp_path / "results"
    old, new = _run(OLD), _run(NEW)
    RunStore(results, "s").write(_done(old))
    before = _files(results)
    _, out = _cli(new_spec, results, capsys, "--status")
    assert f"missing  adoptable from {old.run_id}" in out
    _, out = _cli(new_spec, results, capsys, "--dry-run")
    assert re.search(rf"{new.run_id} .* missing +adopt +adoptable from {old.run_id}\n", out)
    _, out = _cli(new_spec, results, capsys, "--status", "--no-adopt")
    assert "adoptable" not in out and "missing 1" in out
    assert _files(results) == before  # --status and --dry-run write nothing

    rc, out = _cli(new_spec, results, capsys, "--executor", "inline", "--no-wandb", "--quiet")
    assert rc == 0
    assert (
        f"adopted 1 records (same resolved options, other spelling) from {results.absolute() / 's'} (1)"
        in out
    )
    assert "0 run" in out and "done 1" in out
    assert RunStore(results, "s").read(new.run_id)["adopted_from"]["run_id"] == old.run_id
    _, out = _cli(new_spec, results, capsys, "--status")
    assert f"done    adopted from {old.run_id}" in out


def test_adopt_from_another_folder_and_publish_counts_adopted(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "new.toml"
    spec.write_text(NEW)
    old, new = _run(OLD), _run(NEW)
    pub = tmp_path / "published" / "other"
    pub.mkdir(parents=True)
    (pub / f"{old.run_id}.json").write_text(json.dumps(_done(old, study="other")))
    results = tmp_path / "results"
    _, out = _cli(spec, results, capsys, "--status")
    assert "adoptable" not in out
    _, out = _cli(spec, results, capsys, "--status", "--adopt-from", str(pub))
    assert f"adoptable from {old.run_id}" in out
    assert _cli(spec, results, capsys, "--status", "--adopt-from", "nowhere")[0] == 2

    report = launch(
        load_spec(spec), RunStore(results, "s"), [new], dataclasses.replace(INLINE, adopt_from=(str(pub),))
    )
    assert report.adopted == {new.run_id: old.run_id} and report.submitted == [] and report.final["done"] == 1
    rec = RunStore(results, "s").read(new.run_id)
    assert rec["study"] == "s" and rec["adopted_from"]["source"] == str(pub)

    r = publish_study(spec, results_root=results, dest_root=tmp_path / "out")
    assert r.published == [new.run_id] and r.adopted == {new.run_id: old.run_id} and not r.outdated
    prov = json.loads((tmp_path / "out" / "s" / "PROVENANCE.json").read_text())
    assert prov["runs"]["adopted"] == 1 and prov["runs"]["done"] == 1


def test_no_adopt_runs_it_for_real(tmp_path, capsys):
    spec = tmp_path / "new.toml"
    spec.write_text(NEW)
    results = tmp_path / "results"
    old, new = _run(OLD), _run(NEW)
    RunStore(results, "s").write(_done(old))
    rc, out = _cli(spec, results, capsys, "--executor", "inline", "--no-wandb", "--quiet", "--no-adopt")
    assert rc == 0 and "adopted" not in out
    rec = RunStore(results, "s").read(new.run_id)
    assert rec["status"] == "done" and "adopted_from" not in rec and rec["launch_id"] != "L0"
    assert rec["fingerprint"] == _done(old)["fingerprint"]  # the same computation, made again
