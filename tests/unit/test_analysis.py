"""Analysis on fixed records (tests/data/records): the frame, golden tables, the drawn plot data,
the manifest build and the report/figures commands.

Golden files live in tests/data/records/expected/; after an intended change to a table's text,
regenerate them with ``STATPRUNE_UPDATE_GOLDEN=1 pytest tests/unit/test_analysis.py`` and review
the diff.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from statprune.analysis import plots, tables
from statprune.analysis.figures import build_figures, load_manifest, sweep_command
from statprune.analysis.records import (
    aggregate,
    apply_filter,
    load_records,
    load_study,
    primary_metric,
    resolve_study,
)
from statprune.analysis.report import build_report
from statprune.analysis.style import METHOD_STYLES, method_display
from statprune.errors import StatpruneError

DATA = Path(__file__).parents[1] / "data" / "records"
EXPECTED = DATA / "expected"
CLS_SPEC, LM_SPEC = DATA / "toy_cls.toml", DATA / "toy_lm.toml"
STAT_COLOR, MAG_COLOR = METHOD_STYLES["stat"].color, METHOD_STYLES["magnitude"].color


@pytest.fixture(scope="module")
def cls():
    return load_records(DATA / "toy_cls")


@pytest.fixture(scope="module")
def lm():
    return load_records(DATA / "toy_lm")


def golden(name: str, text: str) -> None:
    path = EXPECTED / name
    if os.environ.get("STATPRUNE_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from the golden file (see module docstring)"


# --------------------------------------------------------------------------- frame


def test_frame_has_one_row_per_run_and_keeps_the_failed_one(cls):
    assert len(cls) == 9
    assert cls["status"].value_counts().to_dict() == {"done": 8, "failed": 1}
    failed = cls[cls["status"] == "failed"].iloc[0]
    assert (failed["method"], failed["sparsity"]) == ("stat", 0.7)
    assert math.isnan(failed["metric.accuracy"])
    assert failed["error_type"] == "OutOfMemoryError"
    assert failed["dense.accuracy"] == pytest.approx(0.881)  # dense reference joined by model/task
    done = cls[cls["status"] == "done"]
    assert done["flops_kept"].to_numpy() == pytest.approx(1 - done["sparsity_achieved"].to_numpy())
    assert primary_metric(cls) == "accuracy"


def test_aggregate_over_seeds_counts_failed_runs(cls):
    agg = aggregate(cls).set_index(["method_label", "sparsity"])
    row = agg.loc[("stat", 0.3)]
    assert row["n"] == 2 and row["n_failed"] == 0
    assert row["metric.accuracy.mean"] == pytest.approx(0.87)
    assert row["metric.accuracy.std"] == pytest.approx(np.std([0.872, 0.868], ddof=1))
    assert row["prune_seconds.mean"] == pytest.approx(12.65)
    failed = agg.loc[("stat", 0.7)]
    assert failed["n"] == 0 and failed["n_failed"] == 1 and math.isnan(failed["metric.accuracy.mean"])
    assert len(agg) == 5


def test_fixture_records_match_their_specs():
    """The fixtures' run ids come from expanding the fixture specs with the sweep code; when the
    run-id hash or the config changes, regenerate them: python tests/data/records/make_records.py"""
    for spec in (CLS_SPEC, LM_SPEC):
        study = resolve_study(spec, DATA)
        on_disk = {p.stem for p in study.results_dir.glob("*.json")}
        assert {run_id for run_id, _, _ in study.expected} == on_disk, "fixtures stale: run make_records.py"


def test_study_from_spec_adds_missing_runs(tmp_path):
    study = resolve_study(CLS_SPEC, tmp_path)  # no records under tmp_path yet
    assert study.name == "toy_cls" and study.results_dir == tmp_path / "toy_cls"
    frame = load_study(study)
    assert len(frame) == 9 and set(frame["status"]) == {"missing"}
    shutil.copytree(DATA / "toy_cls", tmp_path / "toy_cls")
    (tmp_path / "toy_cls" / sorted((tmp_path / "toy_cls").glob("*.json"))[0].name).unlink()
    (tmp_path / "toy_cls" / "garbage.json").write_text("{not json")
    frame = load_study(resolve_study(CLS_SPEC, tmp_path))
    counts = frame["status"].value_counts().to_dict()
    assert counts["missing"] == 1 and counts["unreadable"] == 1 and counts["failed"] == 1
    assert len(frame) == 10


def test_method_labels_tell_option_variants_apart(tmp_path):
    src = json.loads(next((DATA / "toy_cls").glob("*.json")).read_text())
    for i, opts in enumerate([{}, {"correction": False}]):
        rec = {
            **src,
            "run_id": f"r{i}",
            "status": "done",
            "config": {**src["config"], "method": "stat", "method_options": opts},
        }
        (tmp_path / f"r{i}.json").write_text(json.dumps(rec))
    labels = sorted(load_records(tmp_path)["method_label"])
    assert labels == ["stat[correction=False]", "stat[correction=None]"]
    assert method_display("stat[correction=False]", "stat") == "STAT [correction=False]"
    frame = load_records(
        tmp_path, labels={("stat", "{}"): "stat", ("stat", '{"correction": false}'): "stat-nocorr"}
    )
    assert sorted(frame["method_label"]) == ["stat", "stat-nocorr"]


def test_run_labels_tell_apart_entries_with_the_same_options(tmp_path):
    """kwon and kwon-2048 share method and options; the spec's per-run label keeps them apart."""
    spec = tmp_path / "two.toml"
    spec.write_text(
        'study = "two"\n[[methods]]\nname = "kwon"\n[[methods]]\nname = "kwon"\nlabel = "kwon-2048"\n'
        '[[grid]]\nmodels = ["random:tiny-bert"]\ntasks = ["movie-sentiment"]\nmethods = ["kwon"]\n'
        "sparsities = [0.3]\ncalib_sizes = [8]\n"
        '[[grid]]\nmodels = ["random:tiny-bert"]\ntasks = ["movie-sentiment"]\nmethods = ["kwon-2048"]\n'
        "sparsities = [0.3]\ncalib_sizes = [16]\n"
    )
    frame = load_study(resolve_study(spec, tmp_path))
    assert dict(zip(frame["calib_size"], frame["method_label"])) == {8: "kwon", 16: "kwon-2048"}


def test_filter(cls):
    assert len(apply_filter(cls, {"method": "stat", "sparsity": [0.3, 0.5]})) == 4
    assert len(apply_filter(cls, {"seed": 1})) == 4
    with pytest.raises(StatpruneError, match="not a record column"):
        apply_filter(cls, {"modle": "x"})


# --------------------------------------------------------------------------- tables (golden)


def test_comparison_table_golden(cls):
    t = tables.comparison_table(cls)
    golden("toy_cls_comparison.md", t.to_markdown())
    golden("toy_cls_comparison.tex", t.to_latex())
    md = t.to_markdown()
    assert "| STAT | **87.00 ± 0.28** (29.9%) | **83.80 ± 0.42** (49.9%) | failed |" in md
    assert "| Magnitude | 80.90 ± 0.42 (30.1%) | 63.20 ± 1.27 (50.0%) | — |" in md


def test_comparison_table_lower_is_better_golden(lm):
    t = tables.comparison_table(apply_filter(lm, {"model": "smollm2-135m", "calib_size": 128}))
    golden("toy_lm_comparison_smollm2_n128.md", t.to_markdown())
    assert "| STAT | **27.51** (20.3%) | **41.27** (40.3%) |" in t.to_markdown()  # perplexity: lowest is bold


def test_prune_time_table_golden(lm):
    t = tables.prune_time_table(apply_filter(lm, {"calib_size": 128}))
    golden("toy_lm_prune_time.md", t.to_markdown())
    golden("toy_lm_prune_time.tex", t.to_latex())


def test_calib_table_golden(lm):
    t = tables.calib_table(apply_filter(lm, {"model": "smollm2-135m", "sparsity": 0.4}))
    golden("toy_lm_calib_smollm2_s40.md", t.to_markdown())
    golden("toy_lm_calib_smollm2_s40.tex", t.to_latex())


def test_cell_with_a_failed_seed_is_marked(tmp_path):
    for path in (DATA / "toy_cls").glob("*.json"):
        rec = json.loads(path.read_text())
        c = rec["config"]
        if (c["method"], c["sparsity"], c["seed"]) == ("magnitude", 0.5, 1):
            rec = {**rec, "status": "failed", "error": {"type": "RuntimeError", "message": "boom"}}
            del rec["metrics"], rec["prune"]
        (tmp_path / path.name).write_text(json.dumps(rec))
    md = tables.comparison_table(load_records(tmp_path)).to_markdown()
    assert "| Magnitude | 80.90 ± 0.42 (30.1%) | 62.30 (50.0%)† | — |" in md
    assert md.rstrip().endswith(
        "† some runs of this cell did not finish (1 failed); mean over the finished ones."
    )


def test_tables_refuse_mixed_settings(lm):
    with pytest.raises(StatpruneError, match="calib_size"):
        tables.comparison_table(apply_filter(lm, {"model": "smollm2-135m"}))
    with pytest.raises(StatpruneError, match="sparsity"):
        tables.calib_table(apply_filter(lm, {"model": "smollm2-135m"}))


def test_comparison_table_allows_one_calib_size_per_method(tmp_path):
    """Kwon at its own 2048 examples next to the others at 512: one row each, caption says which."""
    for path in (DATA / "toy_cls").glob("*.json"):
        rec = json.loads(path.read_text())
        if rec["config"]["method"] == "magnitude":
            rec["config"] = {**rec["config"], "calib_size": 2048}
        (tmp_path / path.name).write_text(json.dumps(rec))
    frame = load_records(tmp_path)
    t = tables.comparison_table(frame)
    n = int(apply_filter(frame, {"method": "stat"})["calib_size"].iloc[0])
    assert f"; {n} calibration examples (Magnitude: 2048)." in t.caption
    assert "| Magnitude | 80.90 ± 0.42 (30.1%) |" in t.to_markdown()


def test_latex_escapes():
    assert tables.latex_escape("a_b & 5% #1") == r"a\_b \& 5\% \#1"


# --------------------------------------------------------------------------- plots (drawn data)


def _series(ax):
    """label → (x, y) of each errorbar series of an axes."""
    out = {}
    for c in ax.containers:
        line = c.lines[0]
        out[c.get_label()] = (
            np.asarray(line.get_xdata(), float),
            np.asarray(line.get_ydata(), float),
            line.get_color(),
        )
    return out


def _dense_y(ax):
    return [ln.get_ydata()[0] for ln in ax.get_lines() if ln.get_label() == "Dense"]


def test_metric_vs_flops_plot(cls):
    fig = plots.plot_metric_vs_flops(cls)
    (ax,) = fig.axes
    s = _series(ax)
    assert set(s) == {"STAT", "Magnitude"}
    x, y, color = s["STAT"]
    assert len(x) == 2 and color == STAT_COLOR
    assert x == pytest.approx([50.125, 70.075])  # achieved FLOPs kept (%), sorted
    assert y == pytest.approx([83.8, 87.0])
    assert s["Magnitude"][2] == MAG_COLOR
    assert _dense_y(ax) == pytest.approx([88.1])
    assert ax.get_xlabel() == "FLOPs kept (%, achieved)" and ax.get_ylabel() == "Accuracy (%)"
    assert ax.get_yscale() == "linear"
    assert fig.legends and not ax.get_legend()  # legend outside the axes


def test_perplexity_plot_is_log_scale_with_a_panel_per_model(lm):
    fig = plots.plot_metric_vs_flops(apply_filter(lm, {"calib_size": 128}))
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert ax.get_yscale() == "log" and ax.get_ylabel() == "Perplexity"
        assert {k: len(v[0]) for k, v in _series(ax).items()} == {"STAT": 2, "Magnitude": 2}
    assert _series(fig.axes[1])["STAT"][2] == STAT_COLOR  # same colour in every figure
    assert _dense_y(fig.axes[1]) == pytest.approx([23.12])


def test_metric_vs_calib_plot(lm):
    fig = plots.plot_metric_vs_calib(apply_filter(lm, {"model": "smollm2-135m"}))
    assert [ax.get_title() for ax in fig.axes] == ["sparsity 20%", "sparsity 40%"]
    ax = fig.axes[1]
    x, y, _ = _series(ax)["STAT"]
    assert x.tolist() == [32, 128] and y == pytest.approx([48.02, 41.27])
    assert ax.get_xlabel() == "Calibration examples" and ax.get_xscale() == "log"


def test_prune_time_plot(lm):
    fig = plots.plot_prune_time_vs_params(apply_filter(lm, {"calib_size": 128}))
    (ax,) = fig.axes
    x, y, _ = _series(ax)["STAT"]
    assert x.tolist() == [1_254_400, 134_515_008]
    assert y == pytest.approx([0.81 * 1.025, 95.3 * 1.025], rel=1e-3)
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert ax.get_ylabel() == "Pruning time (s)" and ax.get_xlabel() == "Model (parameters)"


def test_layer_heatmap(cls):
    fig = plots.plot_layer_heatmap(cls)
    heads_ax, neurons_ax = fig.axes[:2]
    heads = np.asarray(heads_ax.images[0].get_array())
    assert heads.shape == (2, 6)  # done sparsities (the failed 70% run has no shapes) × layers
    assert heads[0] == pytest.approx(100 * np.array([12, 12, 11, 9.5, 8, 6.5]) / 12)
    assert np.asarray(neurons_ax.images[0].get_array())[1, 5] == pytest.approx(100 * 305 / 1536)
    assert neurons_ax.get_xlabel() == "Layer" and heads_ax.get_ylabel() == "Sparsity"
    with pytest.raises(StatpruneError, match="no finished 'kwon' run"):
        plots.plot_layer_heatmap(cls, method="kwon")


def test_save_figure_writes_png_and_pdf(cls, tmp_path):
    paths = plots.save_figure(plots.plot_metric_vs_flops(cls), tmp_path / "fig.v1")
    assert [p.name for p in paths] == ["fig.v1.png", "fig.v1.pdf"]
    assert all(p.stat().st_size > 5000 for p in paths)


# --------------------------------------------------------------------------- manifest, figures, report


def _manifest(tmp_path: Path) -> Path:
    shutil.copy(CLS_SPEC, tmp_path / "toy_cls.toml")
    shutil.copy(LM_SPEC, tmp_path / "toy_lm.toml")
    text = """
[defaults]
root = "."
out_dir = "out"
ci_dir = "ci"
results_root = "results"

[figure.ppl_lm]
kind = "metric_vs_flops"
spec = "toy_lm.toml"
where = { model = "smollm2-135m", calib_size = 128 }
formats = ["png"]

[figure.acc_cls]
kind = "metric_vs_flops"
spec = "toy_cls.toml"
formats = ["png"]

[figure.gone]
kind = "prune_time_vs_params"
spec = "nope.toml"

[table.calib_lm]
kind = "calib"
spec = "toy_lm.toml"
where = { model = "smollm2-135m", sparsity = 0.4 }
ci = true
"""
    (tmp_path / "manifest.toml").write_text(text)
    shutil.copytree(DATA / "toy_lm", tmp_path / "results" / "toy_lm")
    shutil.copytree(DATA / "toy_cls", tmp_path / "results" / "toy_cls")
    return tmp_path / "manifest.toml"


def test_figures_build_and_report_incomplete_studies(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manifest = load_manifest(_manifest(tmp_path))
    results = {r.id: r for r in build_figures(manifest)}
    assert results["ppl_lm"].status == "ok" and (tmp_path / "out" / "ppl_lm.png").is_file()
    assert results["calib_lm"].status == "ok"
    assert (tmp_path / "ci" / "calib_lm.md").read_text() == (
        EXPECTED / "toy_lm_calib_smollm2_s40.md"
    ).read_text()
    cls_result = results["acc_cls"]
    assert cls_result.status == "incomplete" and not (tmp_path / "out" / "acc_cls.png").exists()
    assert cls_result.commands == ["statprune sweep toy_cls.toml --results results --retry-failed"]
    assert "8 done, 1 failed of 9" in cls_result.problems[0]
    assert results["gone"].status == "missing" and "nope.toml does not exist" in results["gone"].problems[0]

    partial = build_figures(manifest, only=["acc_cls"], allow_missing=True)
    assert partial[0].status == "partial" and (tmp_path / "out" / "acc_cls.png").is_file()
    with pytest.raises(StatpruneError, match="did you mean 'acc_cls'"):
        build_figures(manifest, only=["acc_cl"])


def test_figures_cli_exit_codes(tmp_path, monkeypatch, capsys):
    from statprune.cli import main

    monkeypatch.chdir(tmp_path)
    m = str(_manifest(tmp_path))
    assert main(["figures", "--manifest", m, "--only", "ppl_lm"]) == 0
    assert main(["figures", "--manifest", m, "--only", "acc_cls"]) == 1
    out = capsys.readouterr().out
    assert "statprune sweep toy_cls.toml --results results --retry-failed" in out
    assert main(["figures", "--manifest", m, "--only", "acc_cls", "--allow-missing"]) == 0


def test_report_writes_tables_and_plots(tmp_path, capsys):
    from statprune.cli import main

    assert main(["report", str(CLS_SPEC), "--results", str(DATA), "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.out == (EXPECTED / "toy_cls_comparison.md").read_text()
    names = {p.name for p in tmp_path.iterdir()}
    assert {"table_minilm-l6__movie-sentiment.md", "table_minilm-l6__movie-sentiment.tex",
            "flops_minilm-l6__movie-sentiment.png", "layers_stat_minilm-l6__movie-sentiment.pdf",
            "prune_time.md", "runs.csv", "summary.csv", "index.md"} <= names  # fmt: skip
    assert "wrote " in captured.err and "--retry-failed" in captured.err


def test_report_facets_by_settings_that_vary_within_a_model(tmp_path):
    # figures are built but not rasterised here (saving is tested on its own; it takes seconds)
    rep = build_report(LM_SPEC, results_root=DATA, out_dir=tmp_path, figure_formats=())
    names = set(rep.outputs)
    for model in ("random-tiny-llama", "smollm2-135m"):
        for n in (32, 128):
            assert {f"table_{model}__sotu__n{n}", f"flops_{model}__sotu__n{n}"} <= names
            assert f"layers_stat_{model}__sotu__n{n}" in names
        assert {f"calib_{model}__sotu__s20", f"calib_{model}__sotu__s40", f"calib_{model}__sotu"} <= names
    assert "prune_time" in names and len(names) == 4 * 3 + 2 * 3 + 1 and not rep.skipped
    assert (tmp_path / "calib_random-tiny-llama__sotu__s20.tex").is_file()
    assert rep.markdown.count("| Method |") == 4  # stdout: the comparison tables only
    assert (tmp_path / "calib_smollm2-135m__sotu__s40.md").read_text() == (
        EXPECTED / "toy_lm_calib_smollm2_s40.md"
    ).read_text()


def test_prune_time_table_allows_one_calibration_size_per_model(lm):
    runs = lm[
        ((lm["model"] == "smollm2-135m") & (lm["calib_size"] == 128))
        | (lm["calib_size"] == 32) & (lm["model"] != "smollm2-135m")
    ]
    caption = tables.prune_time_table(runs).caption
    assert "calibration examples: 32 (random:tiny-llama), 128 (smollm2-135m)" in caption
    with pytest.raises(StatpruneError, match=r"prune-time table \(.*\) needs one value of calib_size"):
        tables.prune_time_table(lm)


def test_report_of_a_study_without_records_says_what_to_run(tmp_path):
    with pytest.raises(StatpruneError, match=r"no finished runs yet .*statprune sweep"):
        build_report(LM_SPEC, results_root=tmp_path)


def test_sweep_command_relative_to_cwd(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert sweep_command(tmp_path / "x.toml", retry_failed=True) == "statprune sweep x.toml --retry-failed"


def test_seeds_phrase_says_which_methods_averaged_seeds():
    import pandas as pd

    from statprune.analysis.tables import _seeds_phrase

    rows = [("stat", s) for s in (0, 1, 2)] + [("kwon", 0)]
    frame = pd.DataFrame([{"method_label": m, "seed": s, "status": "done"} for m, s in rows])
    assert _seeds_phrase(frame) == ("mean ± std over 3 seeds for STAT (cells with ±), single seed otherwise")
    assert _seeds_phrase(frame[frame.method_label == "stat"]) == "mean ± std over 3 seeds"
    assert _seeds_phrase(frame[frame.method_label == "kwon"]) == "single seed"
