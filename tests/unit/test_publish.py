"""``statprune publish`` (done JSON records only, provenance, outdated marks) and ``statprune figures``
reading published records by default. Records: the fixed toy studies in tests/data/records."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from statprune.analysis.figures import build_figures, load_manifest
from statprune.analysis.publish import RECORD_FORMAT, publish_study, scrub_home
from statprune.errors import StatpruneError
from statprune.sweep.fingerprint import expected_stamp, fingerprint

DATA = Path(__file__).parents[1] / "data" / "records"
EXPECTED = DATA / "expected"
REPO = Path(__file__).parents[2]


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()


def _sweep_output(tmp_path: Path, study: str = "toy_cls") -> tuple[Path, Path]:
    """A study's results folder as a sweep leaves it: records plus locks, temp files, a report and
    a checkpoint; half the records in the current format (stamped by the current code)."""
    spec = tmp_path / f"{study}.toml"
    shutil.copy(DATA / f"{study}.toml", spec)
    src = tmp_path / "results" / study
    shutil.copytree(DATA / study, src)
    done = [p for p in sorted(src.glob("*.json")) if json.loads(p.read_text())["status"] == "done"]
    for path in sorted(src.glob("*.json")):
        rec = json.loads(path.read_text())
        if path in done[::2]:
            rec.update(data={"calibration": {"task": "x"}}, **_stamp(rec))
        rec["model_path"] = "/home/alice/.cache/statprune/models/minilm-l6"
        path.write_text(json.dumps(rec))
    (src / ".locks").mkdir()
    (src / ".locks" / "abc.json").write_text("{}")
    (src / ".abc.json.tmp").write_text("{}")
    (src / "report").mkdir()
    (src / "report" / "summary.json").write_text('{"run_id": "x"}')
    (src / "model.safetensors").write_bytes(b"\0" * 64)
    return spec, src


def _stamp(rec: dict) -> dict:
    """What the current code writes into a record of this config (format, resolved options, fingerprint)."""
    return expected_stamp(rec["config"]["method"], rec["config"]["method_options"])


def test_publish_copies_done_json_records_with_provenance(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec, src = _sweep_output(tmp_path)
    r = publish_study(spec, results_root=tmp_path / "results", dest_root=tmp_path / "pub")
    dest = tmp_path / "pub" / "toy_cls"
    files = sorted(p.name for p in dest.rglob("*"))
    done = sorted(p.stem for p in src.glob("*.json") if json.loads(p.read_text())["status"] == "done")
    assert len(done) == 8 and files == sorted([f"{d}.json" for d in done] + ["PROVENANCE.json"])
    assert r.published == done and r.skipped == {"failed": 1}
    recs = [json.loads((dest / f"{d}.json").read_text()) for d in done]
    assert all(rec["status"] == "done" for rec in recs)
    assert {rec["model_path"] for rec in recs} == {"~/.cache/statprune/models/minilm-l6"}
    # the fixture's records without the data block are of the older format: marked, not dropped
    old = {rec["run_id"] for rec in recs if "data" not in rec}
    assert set(r.outdated) == old and len(old) == 4
    assert all(
        rec.get("outdated") == f"record format 1 < {RECORD_FORMAT}" for rec in recs if "data" not in rec
    )
    prov = json.loads((dest / "PROVENANCE.json").read_text())
    assert prov["spec_sha256"] == hashlib.sha256(spec.read_bytes()).hexdigest()
    assert prov["runs"] == {"done": 8, "outdated": 4, "adopted": 0, "not_published": {"failed": 1}}
    assert prov["records"]["git_commits"] == {"1ec6b42": 8} and prov["records"]["hosts"] == {"node01": 8}
    assert prov["published_from"]["versions"]["statprune"] and prov["compatible_since"] is None


def test_publish_leaves_out_records_the_spec_does_not_expand_to(tmp_path, monkeypatch):
    """A record of another study (or of a run dropped from the spec) in the folder is not published."""
    monkeypatch.chdir(tmp_path)
    spec, src = _sweep_output(tmp_path)
    done = sorted(p for p in src.glob("*.json") if json.loads(p.read_text())["status"] == "done")
    stray = json.loads(done[0].read_text())
    stray["run_id"] = "0123456789ab"
    (src / "0123456789ab.json").write_text(json.dumps(stray))
    r = publish_study(spec, results_root=tmp_path / "results", dest_root=tmp_path / "pub")
    assert "0123456789ab" not in r.published and len(r.published) == len(done)
    assert r.skipped == {"failed": 1, "not in the spec": 1}
    assert not (tmp_path / "pub" / "toy_cls" / "0123456789ab.json").exists()


def test_publish_marks_records_older_than_compatible_since_and_keeps_the_marker(tmp_path, monkeypatch):
    commits = _git("rev-list", "--max-count=3", "HEAD").split()
    if len(commits) < 3:
        pytest.skip("needs three commits of history (shallow clone)")
    new, marker, old = commits
    monkeypatch.chdir(tmp_path)
    spec, src = _sweep_output(tmp_path)
    paths = sorted(p for p in src.glob("*.json") if json.loads(p.read_text())["status"] == "done")
    made_at = {p.stem: c for p, c in zip(paths, [new, marker + "+dirty", old, "0" * 40] * 2)}
    for p in paths:
        rec = json.loads(p.read_text())
        rec.update(git_commit=made_at[p.stem], data={}, **_stamp(rec))
        p.write_text(json.dumps(rec))
    with pytest.raises(StatpruneError, match="not a commit of this repository"):
        publish_study(spec, results_root="results", dest_root="pub", compatible_since="f" * 40)
    r = publish_study(
        spec, results_root="results", dest_root="pub", compatible_since=marker[:10], reason="fix"
    )
    stale = {k for k, c in made_at.items() if c in (old, "0" * 40)}
    assert set(r.outdated) == stale and len(stale) == 4
    assert all(f"not after compatible_since {marker[:12]} (fix)" in why for why in r.outdated.values())

    # a later publish keeps the marker; runs no longer done here leave the published folder
    gone = paths[0]
    rec = json.loads(gone.read_text())
    gone.write_text(json.dumps(rec | {"status": "failed"}))
    again = publish_study(spec, results_root="results", dest_root="pub")
    assert set(again.outdated) == stale and again.removed == [gone.stem]
    prov = json.loads((tmp_path / "pub" / "toy_cls" / "PROVENANCE.json").read_text())
    assert prov["compatible_since"] == {"commit": marker, "reason": "fix"}
    assert not (tmp_path / "pub" / "toy_cls" / gone.name).exists()


def test_publish_cli_and_errors(tmp_path, monkeypatch, capsys):
    from statprune.cli import main

    monkeypatch.chdir(tmp_path)
    spec, _ = _sweep_output(tmp_path)
    assert main(["publish", str(spec), "--results", "results"]) == 0
    out = capsys.readouterr().out
    assert "published 8 done runs of 'toy_cls' to results/published/toy_cls" in out
    assert "not published: 1 failed" in out and out.count("outdated ") == 4
    assert (tmp_path / "results" / "published" / "toy_cls" / "PROVENANCE.json").is_file()
    assert main(["publish", str(spec), "--results", "elsewhere"]) == 2
    assert "run `statprune sweep" in capsys.readouterr().err


def test_scrub_home_leaves_other_paths():
    assert scrub_home({"a": ["/home/bob/x", "/srv/home/bob/x"], "b": 3}) == {
        "a": ["~/x", "/srv/home/bob/x"],
        "b": 3,
    }


# --------------------------------------------------------------------------- figures from published


MANIFEST = """
[defaults]
root = "."
out_dir = "out"
ci_dir = "ci"
docs_dir = "docs/figures"

[table.calib_lm]
kind = "calib"
spec = "toy_lm.toml"
where = { model = "smollm2-135m", sparsity = 0.4 }
docs = true
caption = "Calibration ablation."

[figure.acc_cls]
kind = "metric_vs_flops"
spec = "toy_cls.toml"
formats = ["png"]
docs = true
caption = "Accuracy."
"""


def test_figures_read_published_records_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for study in ("toy_lm", "toy_cls"):
        shutil.copy(DATA / f"{study}.toml", tmp_path / f"{study}.toml")
    (tmp_path / "manifest.toml").write_text(MANIFEST)
    shutil.copytree(DATA / "toy_lm", tmp_path / "results" / "published" / "toy_lm")
    # ./results/toy_lm holds other (unfinished) runs: the published copy wins
    (tmp_path / "results" / "toy_lm").mkdir()
    manifest = load_manifest(tmp_path / "manifest.toml")

    res = {r.id: r for r in build_figures(manifest)}
    assert res["calib_lm"].status == "ok"
    golden = (EXPECTED / "toy_lm_calib_smollm2_s40.md").read_text()
    assert (tmp_path / "out" / "calib_lm.md").read_text() == golden
    assert (tmp_path / "docs" / "figures" / "calib_lm.md").read_text() == golden
    # toy_cls is not published: read from ./results (none), and the command ends with a publish
    assert res["acc_cls"].status == "missing"
    assert res["acc_cls"].commands == ["statprune sweep toy_cls.toml && statprune publish toy_cls.toml"]
    index = (tmp_path / "docs" / "figures" / "README.md").read_text()
    assert "[calib_lm.md](calib_lm.md)" in index and "`statprune figures --only calib_lm`" in index
    assert (
        "*Not yet published* (needs `statprune sweep toy_cls.toml && statprune publish toy_cls.toml`" in index
    )

    # --results points elsewhere: the published records are not read, and the README copy is not
    # touched by records that are not committed
    elsewhere = build_figures(manifest, only=["calib_lm"], results_root=tmp_path / "results")
    assert elsewhere[0].status == "missing"
    shutil.copytree(DATA / "toy_lm", tmp_path / "local" / "toy_lm")
    (tmp_path / "docs" / "figures" / "calib_lm.md").unlink()
    local = build_figures(manifest, only=["calib_lm"], results_root=tmp_path / "local")
    assert local[0].status == "ok" and not (tmp_path / "docs" / "figures" / "calib_lm.md").exists()
    index = (tmp_path / "docs" / "figures" / "README.md").read_text()
    assert "*Not yet published*" in index.split("## `calib_lm`")[1]

    # an outdated published record counts as not done, unless asked for
    rec_path = next(
        p
        for p in (tmp_path / "results" / "published" / "toy_lm").glob("*.json")
        if (c := json.loads(p.read_text())["config"])["model"] == "smollm2-135m" and c["sparsity"] == 0.4
    )
    rec = json.loads(rec_path.read_text())
    build_figures(manifest, only=["calib_lm"])  # README copy back from the published records
    assert (tmp_path / "docs" / "figures" / "calib_lm.md").exists()
    rec_path.write_text(json.dumps(rec | {"outdated": "record format 1 < 2"}))
    stale = build_figures(manifest, only=["calib_lm"])[0]
    assert stale.status == "incomplete" and "1 outdated" in stale.problems[0]
    assert not (tmp_path / "docs" / "figures" / "calib_lm.md").exists()  # withdrawn from the README
    assert (
        stale.problems[-1]
        == "removed docs/figures/calib_lm.md: the published records no longer cover the spec"
    )
    again = build_figures(manifest, only=["calib_lm"])[0]  # nothing left to remove: not said again
    assert not any(p.startswith("removed ") for p in again.problems)
    partial = build_figures(manifest, only=["calib_lm"], allow_missing=True)[0]
    assert partial.status == "partial" and not (tmp_path / "docs" / "figures" / "calib_lm.md").exists()
    assert build_figures(manifest, only=["calib_lm"], include_outdated=True)[0].status == "ok"
    assert (tmp_path / "docs" / "figures" / "calib_lm.md").read_text() == golden


def test_publish_marks_records_the_current_code_would_make_differently(tmp_path, monkeypatch):
    """The sweep's rule: a stamped record whose resolved options differ from what the current code
    resolves for its config is outdated, with the option named."""
    monkeypatch.chdir(tmp_path)
    spec, src = _sweep_output(tmp_path)
    paths = sorted(p for p in src.glob("*.json") if json.loads(p.read_text())["status"] == "done")
    for p in paths:
        rec = json.loads(p.read_text())
        rec.update(_stamp(rec))
        p.write_text(json.dumps(rec))
    rec = json.loads(paths[0].read_text())
    key, value = sorted(rec["method_options_resolved"].items())[0]
    rec["method_options_resolved"][key] = "changed"
    rec["fingerprint"] = fingerprint(rec["method_options_resolved"], 2, 2)
    paths[0].write_text(json.dumps(rec))
    r = publish_study(spec, results_root="results", dest_root="pub")
    assert r.outdated == {paths[0].stem: f'option {key}: "changed" → {json.dumps(value)}'}
