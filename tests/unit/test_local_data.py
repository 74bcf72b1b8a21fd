"""Your own data as tasks: a corpus folder and a header-less CSV with labels 1/-1 through finetune →
prune → evaluate (CLI and sweep spec), ``--limit``, detection, split creation, and random task heads."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from statprune.cli import main
from statprune.data import get_task
from statprune.data.local import LocalOptions, local_task
from statprune.data.local_files import sniff_header
from statprune.errors import StatpruneError

GOOD, BAD = ["good", "great", "fine", "nice"], ["bad", "awful", "dull", "poor"]
FILLER = ["the", "film", "plot", "was", "and", "a"]


def _sentence(rng: random.Random, positive: bool) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(2, 5))]
    words.insert(rng.randint(0, len(words)), rng.choice(GOOD if positive else BAD))
    return " ".join(words)


def _write_csv(path: Path, n: int, seed: int, *, header: str | None = None) -> None:
    rng = random.Random(seed)
    lines = [header] if header else []
    for i in range(n):
        positive = i % 2 == 0
        lines.append(f'{"1" if positive else "-1"},"{_sentence(rng, positive)}"')
    path.write_text("\n".join(lines) + "\n")


def _sha(*files: Path) -> str:
    """The provenance hash: sha256 over the sorted files' own sha256s."""
    each = [hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(files, key=str)]
    return hashlib.sha256("".join(each).encode()).hexdigest()


@pytest.fixture
def reviews(tmp_path: Path) -> Path:
    """A folder with train.csv and test.csv, no header, labels "1"/"-1"."""
    d = tmp_path / "reviews"
    d.mkdir()
    _write_csv(d / "train.csv", 60, 0)
    _write_csv(d / "test.csv", 20, 1)
    return d


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A folder with train.txt and test.txt: paragraphs of prose separated by blank lines."""
    d = tmp_path / "corpus"
    d.mkdir()
    rng = random.Random(2)
    for split, n in (("train", 30), ("test", 12)):
        paras = [" ".join(rng.choice(GOOD + BAD + FILLER) for _ in range(40)) for _ in range(n)]
        (d / f"{split}.txt").write_text("\n\n".join(paras) + "\n")
    return d


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STATPRUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---- reading and detection ---------------------------------------------------------------------------


def test_headerless_csv_detects_text_and_label_and_maps_labels_in_numeric_order(reviews: Path) -> None:
    task = get_task(str(reviews))
    assert (task.kind, task.num_labels, task.splits) == ("classification", 2, ("train", "test"))
    prov = task.provenance()
    assert prov["source"] == "local" and prov["path"] == str(reviews.resolve())
    assert prov["content_sha256"] == _sha(reviews / "train.csv", reviews / "test.csv")
    assert prov["columns"] == {"text": "1", "text_pair": None, "label": "0"}
    assert prov["header"] is False and prov["labels"] == {"-1": 0, "1": 1}
    rows = task.examples("train")
    assert len(rows) == 60 and rows[0]["label"] == 1 and rows[1]["label"] == 0
    assert any(w in rows[0]["text"].split() for w in GOOD)


def test_header_is_detected_and_string_labels_sort(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    rows = ["comment\tsentiment"] + [f"{'a fine film' if i % 2 else 'a dull plot'}\t{'pos' if i % 2 else 'neg'}"
                                     for i in range(10)]  # fmt: skip
    path.write_text("\n".join(rows) + "\n")
    assert sniff_header(path, "\t", 3)
    task = get_task(str(path))
    assert task.provenance()["columns"]["label"] == "sentiment"
    assert task.provenance()["labels"] == {"neg": 0, "pos": 1}
    assert task.examples("train")[0] == {"text": "a dull plot", "label": 0}


def test_jsonl_without_labels_is_language_modelling_and_parquet_regression(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "test.jsonl").write_text(
        "\n".join(json.dumps({"text": f"doc {i} words"}) for i in range(5))
    )
    lm = get_task(str(tmp_path / "lm"))
    assert lm.kind == "lm" and lm.splits == ("test",) and lm.text("test").startswith("doc 0 words\n\ndoc 1")
    table = pa.table(
        {"sentence": [f"item {i} is here" for i in range(8)], "score": [i / 3 for i in range(8)]}
    )
    pq.write_table(table, tmp_path / "dev.parquet")
    reg = get_task(str(tmp_path / "dev.parquet"))
    assert (reg.kind, reg.num_labels, reg.splits) == ("regression", 1, ("dev",))
    assert reg.examples("dev")[3]["label"] == pytest.approx(1.0)


def test_task_file_names_splits_columns_and_label_order(tmp_path: Path) -> None:
    _write_csv(tmp_path / "a.csv", 20, 0, header="stars,review")
    _write_csv(tmp_path / "b.csv", 10, 1, header="stars,review")
    spec = tmp_path / "mytask.toml"
    spec.write_text(
        'kind = "classification"\ntext_column = "review"\nlabel_column = "stars"\nlabels = ["1", "-1"]\n'
        'metrics = ["accuracy", "matthews_correlation"]\nmax_length = 24\n'
        '[splits]\ntrain = "a.csv"\nvalidation = ["b.csv"]\n'
    )
    task = get_task(str(spec))
    assert task.splits == ("train", "dev") and task.max_length == 24
    assert task.metric_names == ("accuracy", "matthews_correlation")
    assert task.provenance()["labels"] == {"1": 0, "-1": 1}  # the file's order, not sorted
    assert task.examples("validation")[0]["label"] == 0
    assert task.provenance()["content_sha256"] == _sha(tmp_path / "a.csv", tmp_path / "b.csv", spec)
    # flags add to the task file's settings, checked together
    spec.write_text(spec.read_text().replace("[splits]", 'split_from = "train"\n[splits]'))
    assert local_task(str(spec), {"test_fraction": 0.25}).splits == ("train", "dev", "test")


def test_missing_split_is_an_error_naming_the_files_unless_created_from_a_seed(reviews: Path) -> None:
    task = get_task(str(reviews))
    with pytest.raises(
        StatpruneError, match=r"no split 'dev'.*train: train.csv, test: test.csv.*--split-from"
    ):
        task.examples("dev")
    carved = local_task(str(reviews), LocalOptions(split_from="train", dev_fraction=0.25))
    again = local_task(str(reviews), LocalOptions(split_from="train", dev_fraction=0.25))
    other = local_task(str(reviews), LocalOptions(split_from="train", dev_fraction=0.25, seed=1))
    dev, train = carved.examples("dev"), carved.examples("train")
    assert len(dev) + len(train) == 60 and 5 <= len(dev) <= 25
    assert dev == again.examples("dev") and dev != other.examples("dev")
    assert not {r["text"] for r in dev} & {r["text"] for r in train}
    assert carved.provenance()["created_splits"]["rows"] == {"train": len(train), "dev": len(dev)}
    with pytest.raises(StatpruneError, match="split 'test' already exists"):
        local_task(str(reviews), LocalOptions(split_from="train", test_fraction=0.2))


def test_unknown_task_names_the_local_forms_and_folders_without_splits_name_their_files(
    tmp_path: Path,
) -> None:
    with pytest.raises(StatpruneError, match=r"unknown task 'glue/sst3'.*did you mean 'glue/sst2'.*\.toml"):
        get_task("glue/sst3")
    with pytest.raises(StatpruneError, match="no such data file"):
        get_task(str(tmp_path / "nope.csv"))
    (tmp_path / "novels").mkdir()
    (tmp_path / "novels" / "emma.txt").write_text("x\n")
    with pytest.raises(StatpruneError, match=r"no split files.*found: emma.txt"):
        get_task(str(tmp_path / "novels"))


# ---- --limit --------------------------------------------------------------------------------------


def test_limit_scores_exactly_n_examples_and_n_windows(reviews: Path, corpus: Path) -> None:
    from statprune.evaluation import evaluate
    from statprune.models import load_model

    task = get_task(str(reviews))
    model, tok = load_model("random:tiny-bert", task=task)
    full = evaluate(model, tok, task, "test", progress=False)
    assert full["num_examples"] == 20
    assert evaluate(model, tok, task, "test", progress=False, limit=7)["num_examples"] == 7
    lm = get_task(str(corpus))
    model, tok = load_model("random:tiny-llama", task=lm)
    all_windows = evaluate(model, tok, lm, "test", max_length=32, progress=False)
    three = evaluate(model, tok, lm, "test", max_length=32, progress=False, limit=3)
    assert all_windows["num_examples"] > 3 and three["num_examples"] == 3
    assert three["num_tokens"] == 3 * 31  # every token but each window's first is scored


# ---- the CLI path ---------------------------------------------------------------------------------


def test_csv_through_finetune_prune_evaluate_from_the_cli(
    reviews: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--split-from", "train", "--dev-fraction", "0.2"]
    ft, pruned, out = tmp_path / "ft", tmp_path / "pruned", tmp_path / "eval.json"
    assert main(["finetune", "--model", "random:tiny-bert", "--task", str(reviews), "--epochs", "1",
                 "--max-length", "16", "--out", str(ft), "--no-progress", "--limit", "5", *data]) == 0  # fmt: skip
    report = json.loads((ft / "finetune_report.json").read_text())
    assert report["data"]["content_sha256"] == _sha(reviews / "train.csv", reviews / "test.csv")
    assert report["data"]["labels"] == {"-1": 0, "1": 1} and report["dev_metrics"]["num_examples"] == 5
    assert main(["prune", "--model", str(ft), "--calib-task", str(reviews), "--calib-size", "8", "--sparsity",
                 "0.3", "--out", str(pruned), "--device", "cpu", "--opt", "progress=false", *data]) == 0  # fmt: skip
    prune_report = json.loads((pruned / "prune_report.json").read_text())
    assert prune_report["data"]["calibration"]["path"] == str(reviews.resolve())
    assert main(["evaluate", "--model", str(pruned), "--task", str(reviews), "--limit", "6",
                 "--json", str(out), "--no-progress"]) == 0  # fmt: skip
    record = json.loads(out.read_text())
    assert record["limit"] == 6 and record["examples_scored"] == 6 and record["metrics"]["num_examples"] == 6
    assert record["data"]["evaluation"]["path"] == str(reviews.resolve())
    assert record["data"]["evaluation"]["content_sha256"] == report["data"]["content_sha256"]
    assert json.loads((ft / "config.json").read_text())["id2label"] == {"0": "-1", "1": "1"}
    # the same data with the label ids swapped would score the model against wrong labels: refused
    (tmp_path / "swapped.toml").write_text(f'data = "{reviews}"\nlabels = ["1", "-1"]\n')
    capsys.readouterr()
    swapped = ["evaluate", "--model", str(pruned), "--task", str(tmp_path / "swapped.toml"), "--no-progress"]
    assert main(swapped) == 2
    assert "trained with labels -1→0, 1→1, but task" in capsys.readouterr().err


def test_corpus_through_prune_and_evaluate_from_the_cli(corpus: Path, tmp_path: Path) -> None:
    pruned, out = tmp_path / "pruned", tmp_path / "eval.json"
    assert main(["prune", "--model", "random:tiny-llama", "--calib-task", str(corpus), "--calib-size", "4",
                 "--max-length", "32", "--sparsity", "0.3", "--out", str(pruned), "--device", "cpu",
                 "--opt", "progress=false"]) == 0  # fmt: skip
    assert main(["evaluate", "--model", str(pruned), "--task", str(corpus), "--max-length", "32",
                 "--limit", "2", "--json", str(out), "--no-progress"]) == 0  # fmt: skip
    record = json.loads(out.read_text())
    assert record["examples_scored"] == 2 and record["metrics"]["num_tokens"] == 2 * 31
    assert record["data"]["evaluation"]["kind"] == "lm"
    assert record["data"]["evaluation"]["content_sha256"] == _sha(corpus / "train.txt", corpus / "test.txt")


def test_edited_data_is_a_new_finetune(reviews: Path) -> None:
    from statprune.models.finetune import FinetuneConfig, finetune_key

    before = finetune_key("random:tiny-bert", str(reviews), FinetuneConfig())
    _write_csv(reviews / "train.csv", 61, 0)
    assert finetune_key("random:tiny-bert", str(reviews), FinetuneConfig()) != before


# ---- the sweep path -------------------------------------------------------------------------------


def test_sweep_spec_runs_a_task_file_and_a_corpus_folder(reviews: Path, corpus: Path, tmp_path: Path) -> None:
    from statprune.sweep.launch import LaunchOptions, launch
    from statprune.sweep.spec import load_spec
    from statprune.sweep.store import RunStore

    (tmp_path / "reviews.toml").write_text('data = "reviews"\nsplit_from = "train"\ndev_fraction = 0.2\n')
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(f"""
study = "own_data"
[settings]
device = "cpu"
batch_size = 8
[[methods]]
name = "stat"
options = {{ progress = false }}
[[grid]]
models = ["random:tiny-bert"]
tasks = ["{tmp_path / "reviews.toml"}"]
sparsities = [0.3]
calib_sizes = [8]
finetune = {{ epochs = 1, max_length = 16, batch_size = 16 }}
settings = {{ limit = 5, max_length = 16 }}
[[grid]]
models = ["random:tiny-llama"]
tasks = ["{corpus}"]
sparsities = [0.3]
calib_sizes = [4]
settings = {{ limit = 3, max_length = 32 }}
""")
    spec = load_spec(spec_path)
    store = RunStore(tmp_path / "results", spec.study)
    launch(spec, store, spec.runs(), LaunchOptions(executor="inline", tracking=False, progress=False),
           echo=lambda _: None)  # fmt: skip
    records = {r["config"]["task"]: r for r in store.records().values()}
    assert len(records) == 2
    for r in records.values():
        assert r["status"] == "done", r.get("error", {}).get("message")
    clf, lm = records[str(tmp_path / "reviews.toml")], records[str(corpus)]
    assert clf["name"].startswith("stat-tiny-bert-reviews-") and lm["name"].startswith(
        "stat-tiny-llama-corpus-"
    )
    assert clf["data"]["evaluation"]["path"] == str((tmp_path / "reviews.toml").resolve())
    assert clf["data"]["evaluation"]["content_sha256"] == _sha(
        reviews / "train.csv", reviews / "test.csv", tmp_path / "reviews.toml"
    )
    assert clf["data"]["evaluation"]["labels"] == {"-1": 0, "1": 1} and clf["examples_scored"] == 5
    assert lm["data"]["evaluation"]["content_sha256"] == _sha(corpus / "train.txt", corpus / "test.txt")
    assert lm["examples_scored"] == 3 and lm["metrics"]["num_tokens"] == 3 * 31


def test_sweep_spec_names_a_missing_task_path(tmp_path: Path) -> None:
    from statprune.sweep.spec import parse_spec

    raw = {"study": "x", "methods": ["magnitude"], "grid": [{"models": ["random:tiny-bert"],
           "tasks": [str(tmp_path / "none.csv")], "sparsities": [0.3], "calib_sizes": [4]}]}  # fmt: skip
    with pytest.raises(StatpruneError, match=r"grid\[0\]\.tasks\[0\].*no such data file"):
        parse_spec(raw)


# ---- random task heads ----------------------------------------------------------------------------


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    """A saved encoder without a classification head (what a base checkpoint is)."""
    from statprune.models.load import build_random

    model, tok = build_random("tiny-bert")
    model.save_pretrained(tmp_path / "bare")
    tok.save_pretrained(tmp_path / "bare")
    return tmp_path / "bare"


def test_random_head_is_refused_in_one_line_unless_allowed(
    bare: Path, reviews: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["evaluate", "--model", str(bare), "--task", str(reviews), "--no-progress"]
    capsys.readouterr()
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("statprune")]
    assert len(err) == 1 and "classifier.weight" in err[0] and "--allow-random-head" in err[0]
    prune = ["prune", "--model", str(bare), "--calib-task", str(reviews), "--calib-size", "4", "--sparsity",
             "0.3", "--out", str(tmp_path / "p"), "--device", "cpu", "--opt", "progress=false"]  # fmt: skip
    assert main(prune) == 2 and not (tmp_path / "p" / "prune_report.json").exists()
    assert main([*args, "--allow-random-head", "--limit", "4"]) == 0
    assert main([*prune, "--allow-random-head"]) == 0
    finetune = ["finetune", "--model", str(bare), "--task", str(reviews), "--epochs", "1", "--max-length", "16",
                "--split-from", "train", "--dev-fraction", "0.2", "--out", str(tmp_path / "ft"), "--no-progress"]  # fmt: skip
    assert main(finetune) == 0  # the normal path: fine-tuning trains the new head
    assert main(["evaluate", "--model", str(tmp_path / "ft"), "--task", str(reviews), "--no-progress"]) == 0


def test_sweep_limit_counts_examples_and_leaves_older_run_ids_alone() -> None:
    from statprune.sweep.spec import parse_spec

    def run(settings: dict) -> object:
        raw = {"study": "x", "methods": ["magnitude"], "settings": settings, "grid": [{"models": ["random:tiny-bert"],
               "tasks": ["movie-sentiment"], "sparsities": [0.3], "calib_sizes": [4]}]}  # fmt: skip
        return parse_spec(raw).runs()[0]

    plain, limited = run({}), run({"limit": 7})
    assert "limit" not in plain.config.to_dict() and limited.config.limit == 7
    assert plain.run_id != limited.run_id
    assert run({"eval_limit": 7}).config.to_dict()["eval_limit"] == 7  # rows (LM: documents), as before


def test_datasets_is_imported_only_when_local_data_is_read() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from statprune.cli import build_parser; build_parser(); "
        "from statprune.data import get_task; get_task('movie-sentiment'); "
        "import statprune.data.local; assert 'datasets' not in sys.modules"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
