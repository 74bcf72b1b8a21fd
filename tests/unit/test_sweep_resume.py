"""Resume against code changes: a done record made with other resolved options, another FLOPs
model or an older record format is ``outdated`` — listed with the reason by ``--status``, run again
by a plain sweep (the old record kept under ``outdated/``), kept as done with ``--keep-outdated``."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

import statprune.flops
from statprune.baselines.magnitude import MagnitudeOptions
from statprune.cli import main
from statprune.sweep.fingerprint import RECORD_FORMAT, expected_stamp, fingerprint
from statprune.sweep.launch import LaunchOptions, launch, plan
from statprune.sweep.spec import load_spec, parse_spec
from statprune.sweep.store import RunStore

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

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
options = {{ score = "in" }}
[[grid]]
models = ["random:tiny-bert"]
tasks = ["movie-sentiment"]
sparsities = {sparsities}
calib_sizes = [4]
"""
INLINE = LaunchOptions(executor="inline", tracking=False, progress=False)


def _record(run, status: str = "done", **extra) -> dict:
    return {"run_id": run.run_id, "name": run.name, "study": "s", "status": status, **extra}


def _status(spec: Path, results: Path, capsys, *extra: str) -> str:
    capsys.readouterr()
    assert main(["sweep", str(spec), "--results", str(results), "--status", *extra]) == 0
    return capsys.readouterr().out


def test_plan_marks_records_of_other_code_outdated(tmp_path, monkeypatch):
    runs = parse_spec(tomllib.loads(SPEC.format(sparsities=[0.1, 0.2, 0.3]))).runs()
    store = RunStore(tmp_path, "s")
    current = expected_stamp("magnitude", {"score": "in"})
    assert current["record_format"] == RECORD_FORMAT == 2 and current["flops_model_version"] == 2
    assert current["method_options_resolved"] == {
        **dataclasses.asdict(MagnitudeOptions()),
        "score": "in",
    }
    store.write(_record(runs[0], **current))
    store.write(_record(runs[1]))  # format 1: no record_format, no fingerprint
    store.write(_record(runs[2], **{**current, "fingerprint": "0" * 64}))
    rows = plan(store, runs)
    assert [(r.state.status, r.action) for r in rows] == [("done", "skip")] + [("outdated", "run")] * 2
    assert rows[1].state.detail == "record format 1 < 2"
    assert rows[2].state.detail == "fingerprint differs"

    kept = plan(store, runs, keep_outdated=True)
    assert [(r.state.status, r.action) for r in kept] == [("done", "skip")] * 3
    assert kept[1].state.detail == "outdated, kept: record format 1 < 2"

    # the FLOPs model changes (an input of the fingerprint): every record is outdated
    monkeypatch.setattr(statprune.flops, "FLOPS_MODEL_VERSION", 3)
    rows = plan(store, runs)
    assert [r.state.status for r in rows] == ["outdated"] * 3
    assert rows[0].state.detail == "FLOPs model 2, now 3"


def test_outdated_record_is_listed_rerun_kept_and_archived(tmp_path, capsys):
    spec_path = tmp_path / "s.toml"
    spec_path.write_text(SPEC.format(sparsities=[0.2]))
    results = tmp_path / "results"
    spec = load_spec(spec_path)
    store = RunStore(results, spec.study)
    runs = spec.runs()
    (run_id,) = [r.run_id for r in runs]

    # a fresh sweep writes done records carrying what ran; a resume runs nothing
    report = launch(spec, store, runs, INLINE, echo=lambda _: None)
    assert report.final["done"] == 1
    rec = store.read(run_id)
    assert rec["status"] == "done" and rec["record_format"] == 2 and rec["flops_model_version"] == 2
    assert rec["method_options_resolved"] == {**dataclasses.asdict(MagnitudeOptions()), "score": "in"}
    assert "options" not in rec["prune"]  # one copy of the resolved options per record
    assert rec["fingerprint"] == expected_stamp("magnitude", {"score": "in"})["fingerprint"]
    assert launch(spec, store, runs, INLINE, echo=lambda _: None).submitted == []
    out = _status(spec_path, results, capsys)
    assert f"{run_id}  " in out and "done 1, outdated 0" in out

    # the record as the code made it when magnitude's default allocation was "global"
    old = dict(rec["method_options_resolved"], allocation="global")
    rec.update(method_options_resolved=old, fingerprint=fingerprint(old, 2, 2))
    store.write(rec)
    out = _status(spec_path, results, capsys)
    assert 'outdated  option allocation: "global" → "uniform"' in out and "done 0, outdated 1" in out
    out = _status(spec_path, results, capsys, "--keep-outdated")
    assert "done 1, outdated 0" in out and "outdated, kept: option allocation" in out

    # --keep-outdated: the old record counts as done and stays
    keep = dataclasses.replace(INLINE, keep_outdated=True)
    assert launch(spec, store, runs, keep, echo=lambda _: None).submitted == []
    assert store.read(run_id) == rec

    # a plain sweep runs it again; the old record is kept under outdated/
    report = launch(spec, store, runs, INLINE, echo=lambda _: None)
    assert report.submitted == [run_id] and report.final["done"] == 1
    new = store.read(run_id)
    assert new["status"] == "done" and new["launch_id"] != rec["launch_id"]
    assert new["method_options_resolved"]["allocation"] == "uniform"
    assert new["attempt"] == rec["attempt"] + 1
    archived = json.loads((store.dir / "outdated" / f"{run_id}.{rec['launch_id']}.json").read_text())
    assert archived["method_options_resolved"]["allocation"] == "global"
    assert archived["outdated"] == 'option allocation: "global" → "uniform"'
    assert list(store.records()) == [run_id]  # the archive is no run record of the study
    assert launch(spec, store, runs, INLINE, echo=lambda _: None).submitted == []


@pytest.mark.parametrize("fmt", [1, 3])
def test_other_record_formats_are_outdated(tmp_path, fmt):
    runs = parse_spec(tomllib.loads(SPEC.format(sparsities=[0.1]))).runs()
    store = RunStore(tmp_path, "s")
    stamp = expected_stamp("magnitude", {"score": "in"})
    print_ = fingerprint(stamp["method_options_resolved"], 2, fmt)  # as code of that format writes it
    store.write(_record(runs[0], **{**stamp, "record_format": fmt, "fingerprint": print_}))
    (row,) = plan(store, runs)
    assert row.state.status == "outdated"
    assert row.state.detail == ("record format 1 < 2" if fmt == 1 else "record format 3, now 2")


def test_an_option_at_its_neutral_default_leaves_earlier_records_current() -> None:
    """Adding an option whose default keeps the old behaviour must not outdate the records made before
    it; any other value, or a default not declared neutral, must."""
    import dataclasses

    from statprune.pruner import neutral
    from statprune.sweep.fingerprint import fingerprinted

    @dataclasses.dataclass(frozen=True)
    class Before:
        rule: str = "share"

    @dataclasses.dataclass(frozen=True)
    class After:
        rule: str = "share"
        bound: float | None = neutral(None)
        precision: str = "auto"

    old = fingerprinted(Before())
    assert fingerprinted(After()) == {**old, "precision": "auto"}  # neutral left out, the other not
    assert fingerprinted(After(bound=0.1)) == {**old, "bound": 0.1, "precision": "auto"}


def test_a_method_with_neutral_options_writes_records_that_resume_as_done(tmp_path):
    """STAT has options at neutral defaults: the record leaves them out, as the expected stamp does,
    so a fresh record is done, not outdated."""
    from statprune.stat.prune import StatOptions

    neutral = [f.name for f in dataclasses.fields(StatOptions) if f.metadata.get("neutral_default")]
    assert neutral  # the case this test is about
    text = SPEC.format(sparsities=[0.2]).replace(
        'name = "magnitude"\noptions = { score = "in" }', 'name = "stat"'
    )
    spec_path = tmp_path / "s.toml"
    spec_path.write_text(text)
    spec = load_spec(spec_path)
    store = RunStore(tmp_path / "results", spec.study)
    runs = spec.runs()
    assert launch(spec, store, runs, INLINE, echo=lambda _: None).final["done"] == 1
    rec = store.read(runs[0].run_id)
    assert not set(neutral) & set(rec["method_options_resolved"])
    assert rec["fingerprint"] == expected_stamp("stat", {})["fingerprint"]
    assert plan(store, runs)[0].state.status == "done"
