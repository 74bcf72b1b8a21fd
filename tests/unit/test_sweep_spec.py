"""Sweep specs: parsing, validation errors that name the key, grid expansion and stable run ids."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from statprune.errors import StatpruneError
from statprune.sweep.spec import RunConfig, expand, load_spec, parse_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO / "experiments"

BASE = """
study = "demo"
[settings]
batch_size = 8
[[methods]]
name = "stat"
options = { allocation = "greedy" }
[[methods]]
name = "magnitude"
[[grid]]
models = ["random:tiny-bert"]
tasks = ["movie-sentiment"]
sparsities = [0.3, 0.5]
calib_sizes = [16, 32]
seeds = [0, 1]
"""


def spec_of(text: str):
    return parse_spec(tomllib.loads(text), source="test.toml")


def error_of(text: str) -> str:
    with pytest.raises(StatpruneError) as e:
        spec_of(text)
    return str(e.value)


def test_grid_expands_in_a_fixed_order_with_readable_names():
    runs = expand(spec_of(BASE))
    assert len(runs) == 2 * 2 * 2 * 2
    assert runs[0].name == "stat-tiny-bert-s0.30-n16-seed0"
    assert runs[1].name == "stat-tiny-bert-s0.30-n16-seed1"
    assert runs[-1].name == "magnitude-tiny-bert-s0.50-n32-seed1"
    assert len({r.run_id for r in runs}) == len(runs)
    assert all(len(r.run_id) == 12 for r in runs)
    assert [r.run_id for r in runs] == [r.run_id for r in expand(spec_of(BASE))]


def test_run_id_is_stable_and_depends_only_on_the_config():
    runs = expand(spec_of(BASE))
    assert runs[0].config.run_id == RunConfig.from_dict(runs[0].config.to_dict()).run_id
    reordered = BASE.replace("sparsities = [0.3, 0.5]", "sparsities = [0.5, 0.3]").replace(
        "seeds = [0, 1]", "seeds = [1, 0]"
    )
    assert {r.run_id for r in expand(spec_of(reordered))} == {r.run_id for r in runs}
    renamed = BASE.replace('study = "demo"', 'study = "other"')
    assert [r.run_id for r in expand(spec_of(renamed))] == [r.run_id for r in runs]
    changed = BASE.replace("batch_size = 8", "batch_size = 16")
    assert not {r.run_id for r in expand(spec_of(changed))} & {r.run_id for r in runs}
    assert runs[0].config.to_dict()["method_options"] == {"allocation": "greedy"}


def test_run_id_pinned_value():
    """A change of this value orphans the records of every finished sweep: only on purpose."""
    cfg = expand(spec_of(BASE))[0].config
    assert cfg.run_id == "9a5b674685f4", cfg.to_dict()


def test_options_are_typed_and_order_free():
    a = BASE.replace(
        'options = { allocation = "greedy" }', 'options = { allocation = "greedy", correction = "false" }'
    )
    b = BASE.replace(
        'options = { allocation = "greedy" }', 'options = { correction = false, allocation = "greedy" }'
    )
    ra, rb = expand(spec_of(a)), expand(spec_of(b))
    assert ra[0].config.to_dict()["method_options"] == {"allocation": "greedy", "correction": False}
    assert [r.run_id for r in ra] == [r.run_id for r in rb]


def test_several_grids_pair_models_with_tasks_and_names_show_the_task():
    text = (
        BASE
        + """
[[grid]]
models = ["random:tiny-llama"]
tasks = ["sotu"]
methods = ["stat"]
sparsities = [0.2]
calib_sizes = [8]
settings = { max_length = 64, calib_limit = 2 }
"""
    )
    runs = expand(spec_of(text))
    assert len(runs) == 16 + 1
    last = runs[-1]
    assert last.name == "stat-tiny-llama-sotu-s0.20-n8-seed0"
    assert last.config.max_length == 64 and last.config.calib_limit == 2 and last.config.batch_size == 8
    assert runs[0].name.startswith("stat-tiny-bert-movie-sentiment-")
    assert "calib_limit" not in runs[0].config.to_dict()  # unset limits stay out of the hash


def test_overlapping_grids_give_one_run_per_config():
    text = BASE + BASE[BASE.index("[[grid]]") :]
    assert len(expand(spec_of(text))) == 16


def test_calib_tasks_cross_eval_tasks():
    text = BASE.replace(
        'tasks = ["movie-sentiment"]',
        'tasks = ["movie-sentiment"]\ncalib_tasks = ["movie-sentiment", "sotu"]',
    )
    runs = expand(spec_of(text))
    assert len(runs) == 32
    assert {(r.config.task, r.config.calib_task) for r in runs} == {
        ("movie-sentiment", "movie-sentiment"),
        ("movie-sentiment", "sotu"),
    }


def test_finetune_table_is_checked_and_shared():
    text = BASE + "[finetune]\nepochs = 2\nlr = 5e-5\n"
    runs = expand(spec_of(text))
    assert all(r.config.to_dict()["finetune"] == {"epochs": 2, "lr": 5e-5} for r in runs)
    assert "finetune" in error_of(BASE + "[finetune]\nepochz = 2\n")
    assert "epochz" in error_of(BASE + "[finetune]\nepochz = 2\n")


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (("[settings]", "colour = 1\n[settings]"), "colour"),
        (("sparsities = [0.3, 0.5]", "sparsity = [0.3]"), "grid[0].sparsity"),
        (("sparsities = [0.3, 0.5]", "sparsities = [0.3, 1.5]"), "grid[0].sparsities[1]"),
        (("calib_sizes = [16, 32]", "calib_sizes = [16, 0]"), "grid[0].calib_sizes[1]"),
        (("seeds = [0, 1]", 'seeds = [0, "one"]'), "grid[0].seeds[1]"),
        (('name = "magnitude"', 'name = "magnitud"'), "methods[1].name"),
        (('allocation = "greedy"', 'allocation = "best"'), "methods[0].options"),
        (('allocation = "greedy"', "alocation = 1"), "methods[0].options"),
        (('tasks = ["movie-sentiment"]', 'tasks = ["movie-sentimen"]'), "grid[0].tasks[0]"),
        (('models = ["random:tiny-bert"]', 'models = ["random:tiny-bertt"]'), "grid[0].models[0]"),
        (('models = ["random:tiny-bert"]', 'models = ["minilm-l7"]'), "grid[0].models[0]"),
        (("batch_size = 8", 'dtype = "float8"'), "settings.dtype"),
        (("batch_size = 8", 'device = "tpu"'), "settings.device"),
        (("batch_size = 8", 'eval_split = "validaton"'), "settings.eval_split"),
        (("batch_size = 8", "batch_size = -1"), "settings.batch_size"),
        (('study = "demo"', 'study = "a/b"'), "study"),
        (('study = "demo"', ""), "study"),
        (("[[grid]]", "[tracking]\nmode = 'online'\n[[grid]]"), "tracking.mode"),
    ],
)
def test_malformed_spec_names_the_key(edit, key):
    old, new = edit
    assert old in BASE
    msg = error_of(BASE.replace(old, new, 1))
    assert msg.startswith("test.toml: ")
    assert key in msg, msg


def test_typo_gets_a_suggestion():
    msg = error_of(BASE.replace("calib_sizes", "calib_size"))
    assert "grid[0].calib_size" in msg and "did you mean 'calib_sizes'" in msg
    msg = error_of(BASE.replace('name = "magnitude"', 'name = "magnitud"'))
    assert "did you mean 'magnitude'" in msg


def test_duplicate_method_labels_are_errors():
    text = BASE.replace('[[methods]]\nname = "magnitude"', '[[methods]]\nname = "stat"')
    assert "label" in error_of(text)
    ok = BASE.replace(
        '[[methods]]\nname = "magnitude"',
        '[[methods]]\nname = "stat"\nlabel = "stat-paper"\noptions = { allocation = "paper" }',
    )
    runs = expand(spec_of(ok))
    assert runs[-1].name.startswith("stat-paper-") and runs[-1].config.method == "stat"


def test_load_spec_reports_missing_files_and_bad_toml(tmp_path):
    with pytest.raises(StatpruneError, match="not found"):
        load_spec(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("study = \n")
    with pytest.raises(StatpruneError, match="not valid TOML"):
        load_spec(bad)


@pytest.mark.parametrize(
    ("name", "runs"),
    [
        ("ci_tiny.toml", 8),
        ("minilm_movie.toml", 108),
        ("smollm2_sotu.toml", 63),
        ("smollm2_sotu_cpu.toml", 12),
        ("smollm2_stat_variants.toml", 48),
        ("smollm2_stat_loss.toml", 24),
        ("smollm2_stat_gqa.toml", 12),
        ("smollm2_stat_holdout.toml", 18),
        ("smollm2_stat_obs.toml", 24),
        ("smollm2_moby.toml", 8),
        ("minilm_stat_loss.toml", 32),
        ("calib_ablation.toml", 54),
        ("calib_ablation_smollm2.toml", 21),
    ],
)
def test_experiment_specs_load(name, runs):
    spec = load_spec(EXPERIMENTS / name)
    expanded = spec.runs()
    assert len(expanded) == runs
    assert spec.study == name.removesuffix(".toml")


@pytest.mark.parametrize("name", ["minilm_movie.toml", "minilm_stat_loss.toml"])
def test_minilm_studies_share_one_finetune(name):
    """Every MiniLM study fine-tunes once, the same fine-tune (so run ids agree across studies)."""
    from statprune.sweep.spec import finetune_key

    key = finetune_key(load_spec(EXPERIMENTS / "minilm_movie.toml").runs()[0].config)
    runs = load_spec(EXPERIMENTS / name).runs()
    assert key is not None
    assert {finetune_key(r.config) for r in runs} == {key}


def test_minilm_movie_runs_kwon_at_its_default_sample_count():
    runs = load_spec(EXPERIMENTS / "minilm_movie.toml").runs()
    kwon = {(r.label, r.config.calib_size) for r in runs if r.config.method == "kwon"}
    assert kwon == {("kwon", 512), ("kwon-2048", 2048)}


def test_cli_malformed_spec_errors_and_submits_nothing(tmp_path, capsys):
    from statprune.cli import main

    spec = tmp_path / "bad.toml"
    spec.write_text(BASE.replace("sparsities = [0.3, 0.5]", "sparsities = [0.3, 2]"))
    results = tmp_path / "results"
    rc = main(["sweep", str(spec), "--executor", "local", "--results", str(results)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "grid[0].sparsities[1]" in err and len(err.strip().splitlines()) == 1
    assert not results.exists()
