"""One per-run pipeline: every entry point prunes the same job the same way, and records name the data.

The data are the WikiText-2 test fixture read through ``$STATPRUNE_DATA_WIKITEXT_2`` (a user's local
folder), the model a tiny random Llama; ``--max-length 16`` is far from the task's 2048-token window,
so an entry point that budgets FLOPs at the task's length instead of the length the model sees fails.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from statprune.cli import main
from statprune.data import get_task
from statprune.errors import StatpruneError
from statprune.pipeline import flops_seq_len

FIXTURES = Path(__file__).parents[1] / "data" / "fixtures"
MODEL, TASK, SPARSITY, MAX_LENGTH, CALIB, BATCH = "random:tiny-llama", "wikitext-2", 0.3, 16, 12, 4


@pytest.fixture
def wikitext_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "my-corpus"
    shutil.copytree(FIXTURES / "wikitext-2", folder)
    monkeypatch.setenv("STATPRUNE_DATA_WIKITEXT_2", str(folder))
    return folder


def _expected_hash(folder: Path) -> str:
    """The documented content hash, computed here from the bytes: sha256 of the sorted
    [relative name, sha256(file)] pairs as JSON."""
    pairs = sorted([p.name, hashlib.sha256(p.read_bytes()).hexdigest()] for p in folder.iterdir())
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()


def _cli_prune(tmp_path: Path) -> dict:
    out = tmp_path / "ck"
    rc = main(
        ["prune", "--model", MODEL, "--calib-task", TASK, "--calib-size", str(CALIB), "--sparsity",
         str(SPARSITY), "--max-length", str(MAX_LENGTH), "--batch-size", str(BATCH), "--device", "cpu",
         "--opt", "progress=false", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    return json.loads((out / "prune_report.json").read_text())


def _sweep(tmp_path: Path) -> dict:
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f"""study = "pipeline"
[settings]
max_length = {MAX_LENGTH}
batch_size = {BATCH}
device = "cpu"
eval_limit = 4
[[methods]]
name = "stat"
options = {{ progress = false }}
[[grid]]
models = ["{MODEL}"]
tasks = ["{TASK}"]
sparsities = [{SPARSITY}]
calib_sizes = [{CALIB}]
"""
    )
    rc = main(["sweep", str(spec), "--executor", "inline", "--results", str(tmp_path / "results"),
               "--no-wandb", "--quiet"])  # fmt: skip
    assert rc == 0
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "results" / "pipeline").glob("*.json")]
    assert record["status"] == "done"
    return record


def _bench(tmp_path: Path) -> dict:
    rc = main(
        ["bench", "--model", MODEL, "--calib-task", TASK, "--calib-size", str(CALIB), "--seq-len",
         str(MAX_LENGTH), "--sparsity", str(SPARSITY), "--batch-size", str(BATCH), "--device", "cpu",
         "--dtype", "float32", "--out", str(tmp_path / "bench"), "--name", "rec"]
    )  # fmt: skip
    assert rc == 0
    return json.loads((tmp_path / "bench" / "rec.json").read_text())


def test_prune_sweep_and_bench_run_the_same_job(tmp_path: Path, wikitext_dir: Path) -> None:
    cli = _cli_prune(tmp_path)
    sweep = _sweep(tmp_path)
    bench = _bench(tmp_path)
    kept = cli["diagnostics"]["kept_units"]
    assert sweep["prune"]["diagnostics"]["kept_units"] == kept
    assert bench["result"]["kept_units"] == kept
    assert cli["seq_len"] == sweep["prune"]["seq_len"] == bench["result"]["seq_len"] == MAX_LENGTH
    assert cli["calib_tokens"] == sweep["prune"]["calib_tokens"] == bench["result"]["calib_tokens"]
    assert cli["calib_tokens"] == CALIB * MAX_LENGTH
    assert cli["flops_dense"] == sweep["prune"]["flops_dense"] == bench["result"]["flops_dense"]
    # every record names the same data and the same draw of calibration examples
    calib = cli["data"]["calibration"]
    assert sweep["data"]["calibration"] == calib == bench["data"]["calibration"]


def test_records_of_a_local_folder_carry_its_path_and_content_hash(
    tmp_path: Path, wikitext_dir: Path
) -> None:
    cli = _cli_prune(tmp_path)
    data = cli["data"]["calibration"]
    assert data["source"] == "local" and data["path"] == str(wikitext_dir.resolve())
    assert data["task"] == TASK and data["split"] == "train" and data["num_examples"] == CALIB
    assert data["content_sha256"] == _expected_hash(wikitext_dir)
    assert len(data["indices_sha256"]) == 64

    sweep = _sweep(tmp_path)
    assert sweep["data"]["evaluation"]["path"] == str(wikitext_dir.resolve())
    assert sweep["data"]["evaluation"]["split"] == "test"

    rc = main(["evaluate", "--model", MODEL, "--task", TASK, "--max-length", str(MAX_LENGTH), "--device",
               "cpu", "--no-progress", "--json", str(tmp_path / "eval.json")])  # fmt: skip
    assert rc == 0
    ev = json.loads((tmp_path / "eval.json").read_text())["data"]["evaluation"]
    assert ev["path"] == str(wikitext_dir.resolve()) and ev["content_sha256"] == data["content_sha256"]

    with open(wikitext_dir / "wiki.train.raw", "a") as f:  # the user edits their corpus
        f.write("one more line\n")
    changed = get_task(TASK).provenance()
    assert changed["content_sha256"] == _expected_hash(wikitext_dir) != data["content_sha256"]


def test_flops_length_is_what_the_model_sees() -> None:
    lm, text = get_task("wikitext-2"), get_task("movie-sentiment")
    assert flops_seq_len(lm, None) == 2048.0  # the task's window
    assert flops_seq_len(lm, 256) == 256.0  # the window the model sees
    assert flops_seq_len(text, None) == text.flops_seq_len == 26.8  # mean example length
    assert flops_seq_len(text, 128) == 26.8  # truncation above the mean changes nothing
    assert flops_seq_len(text, 16) == 16.0  # every example is cut to 16 tokens
    assert flops_seq_len(None, 64) == 64.0  # random tokens (bench)
    assert flops_seq_len(text, 16, 100.0) == 100.0  # an explicit override wins
    with pytest.raises(StatpruneError):
        flops_seq_len(None, None)


def test_bench_calib_is_a_deprecated_alias(tmp_path: Path, capsys) -> None:
    rc = main(["bench", "--shape", "tiny-bert", "--calib", "4", "--seq-len", "8", "--batch-size", "4",
               "--device", "cpu", "--dtype", "float32", "--out", str(tmp_path), "--name", "r"])  # fmt: skip
    assert rc == 0
    assert "--calib is deprecated; use --calib-size" in capsys.readouterr().err
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["config"]["calib_size"] == 4 and rec["result"]["calib_size"] == 4


@pytest.mark.parametrize("command", ["prune", "evaluate", "finetune", "sweep", "bench"])
def test_every_option_has_help_with_its_default(command: str) -> None:
    import argparse

    from statprune.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{command} {action.option_strings} has no help"
    text = " ".join(sub.format_help().split())
    if command in ("prune", "bench"):
        from statprune.methods import METHOD_PATHS

        assert "one of: " + ", ".join(sorted(METHOD_PATHS)) in text and "wanda-sp" in text
    if command == "prune":
        assert "(default: 512)" in text and "(default: 16)" in text
