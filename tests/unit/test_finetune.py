"""finetune() on a tiny random encoder and a small separable task: learning, caching, locking, errors."""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path

import pytest

from statprune.data import TASKS
from statprune.data.tasks import TextTask
from statprune.errors import StatpruneError
from statprune.models import finetune as ft
from statprune.models import load_model
from statprune.models.finetune import REPORT_NAME, FinetuneConfig, finetune, finetune_key

TASK = "unit-toy-sentiment"
CONFIG = FinetuneConfig(epochs=3, lr=5e-3, batch_size=16, max_length=16, warmup_ratio=0.1, seed=0)
FILLER = ["the", "a", "movie", "plot", "was", "is", "and"]


def _rows(split: str) -> list[dict]:
    """The label is whether "yes" or "no" appears among filler words: learnable in a few dozen steps."""
    n = {"train": 160, "dev": 48, "test": 48}[split]
    rng = random.Random(split)
    rows = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILLER) for _ in range(rng.randint(1, 5))]
        words.insert(rng.randint(0, len(words)), "yes" if label else "no")
        rows.append({"id": str(i), "text": " ".join(words), "label": label})
    return rows


if TASK not in TASKS:
    TASKS.add(
        TASK,
        TextTask(
            name=TASK,
            kind="classification",
            num_labels=2,
            metric_names=("accuracy", "f1"),
            flops_seq_len=6.0,
            max_length=16,
            loader=_rows,
        ),
    )


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STATPRUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_finetune_learns_saves_and_hits_cache(cache: Path) -> None:
    path = finetune("random:tiny-bert", TASK, CONFIG, progress=False)
    assert path == cache / "finetuned" / finetune_key("random:tiny-bert", TASK, CONFIG)
    report = json.loads((path / REPORT_NAME).read_text())
    losses = [e["train_loss"] for e in report["epochs"]]
    assert len(losses) == 3 and losses[-1] < losses[0] < 1.0  # ln 2 ≈ 0.69 at chance
    assert losses[-1] < 0.3
    assert report["dev_metrics"]["accuracy"] >= 0.9
    assert report["dev_metrics"] == report["epochs"][report["best_epoch"] - 1]["dev"]
    assert report["config"] == CONFIG.to_dict() and report["task"] == TASK
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin"))
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700: caches are shared

    # the saved checkpoint is the best epoch's model: reloading it reproduces the reported dev accuracy
    from statprune.evaluation import evaluate

    model, tok = load_model(str(path), task=TASKS.get(TASK))
    dev = evaluate(model, tok, TASK, "dev", max_length=CONFIG.max_length, progress=False)
    assert dev["accuracy"] == pytest.approx(report["dev_metrics"]["accuracy"])

    # second call: same path, nothing retrained (the report is not rewritten)
    mtime = (path / REPORT_NAME).stat().st_mtime_ns
    assert finetune("random:tiny-bert", TASK, CONFIG, progress=False) == path
    assert (path / REPORT_NAME).stat().st_mtime_ns == mtime


def test_key_depends_on_every_input() -> None:
    base = finetune_key("random:tiny-bert", TASK, CONFIG)
    assert base == finetune_key("random:tiny-bert", TASK, FinetuneConfig(**CONFIG.to_dict()))
    assert base != finetune_key("random:tiny-distilbert", TASK, CONFIG)
    assert base != finetune_key("random:tiny-bert", "movie-sentiment", CONFIG)
    assert base != finetune_key("random:tiny-bert", TASK, FinetuneConfig(**{**CONFIG.to_dict(), "seed": 1}))


def test_parallel_calls_train_once(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = FinetuneConfig(epochs=1, lr=2e-3, batch_size=32, max_length=16)
    calls: list[int] = []
    real_train = ft._train

    def counting_train(*args, **kwargs):
        calls.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(ft, "_train", counting_train)
    results: list[Path] = []
    errors: list[BaseException] = []

    def job() -> None:
        try:
            results.append(finetune("random:tiny-bert", TASK, config, progress=False))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 2 and results[0] == results[1]
    assert len(calls) == 1  # the second caller waited on the lock, then found the checkpoint


def test_out_dir_and_bad_input(cache: Path, tmp_path: Path) -> None:
    config = FinetuneConfig(epochs=1, lr=2e-3, batch_size=32, max_length=16)
    out = tmp_path / "mine"
    assert finetune("random:tiny-bert", TASK, config, out_dir=out, progress=False) == out
    assert (out / REPORT_NAME).is_file() and not (cache / "finetuned").exists()
    other = FinetuneConfig(epochs=1, lr=1e-3, batch_size=32, max_length=16)
    with pytest.raises(StatpruneError, match="already holds"):
        finetune("random:tiny-bert", TASK, other, out_dir=out, progress=False)
    with pytest.raises(StatpruneError, match="classification and regression"):
        finetune("random:tiny-llama", "sotu", config, progress=False)
    with pytest.raises(StatpruneError, match="unknown task"):
        finetune("random:tiny-bert", "no-such-task", config, progress=False)
    with pytest.raises(StatpruneError, match="lr must be positive"):
        FinetuneConfig(lr=0.0)
    with pytest.raises(StatpruneError, match="dtype"):
        FinetuneConfig(dtype="float8")


def test_cli_finetune_prints_path_and_dev_accuracy(cache: Path, tmp_path: Path, capsys) -> None:
    from statprune.cli import main

    out = tmp_path / "cli-ft"
    argv = ["finetune", "--model", "random:tiny-bert", "--task", TASK, "--out", str(out), "--no-progress"]
    assert main([*argv, "--epochs", "1", "--lr", "5e-3", "--max-length", "16", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / REPORT_NAME).read_text())
    assert f"checkpoint: {out}" in printed
    assert f"dev accuracy: {report['dev_metrics']['accuracy']:.4f}" in printed
    assert report["config"] == {**FinetuneConfig().to_dict(), "epochs": 1, "lr": 5e-3, "max_length": 16}
    assert main([*argv, "--lr", "-1"]) == 2
    assert "lr must be positive" in capsys.readouterr().err


def test_cli_help_states_the_real_defaults() -> None:
    import dataclasses

    from statprune.commands.finetune import _CONFIG_FLAGS

    defaults = dataclasses.asdict(FinetuneConfig())
    assert set(_CONFIG_FLAGS) == set(defaults)
    for name, (typ, help_) in _CONFIG_FLAGS.items():
        stated = help_.rsplit("(default", 1)[1].strip(" :)")
        assert (None if stated == "all" else typ(stated)) == defaults[name], name


def test_changed_data_retrains_and_unchanged_data_hits_the_cache(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task's data folder ($STATPRUNE_DATA_GLUE_SST2) enters the cache key through its content hash."""
    import shutil

    folder = tmp_path / "sst2"
    shutil.copytree(Path(__file__).parents[1] / "data" / "fixtures" / "glue" / "sst2", folder)
    monkeypatch.setenv("STATPRUNE_DATA_GLUE_SST2", str(folder))
    config = FinetuneConfig(epochs=1, lr=2e-3, batch_size=16, max_length=16)
    calls: list[int] = []
    real_train = ft._train

    def counting_train(*args, **kwargs):
        calls.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(ft, "_train", counting_train)
    first = finetune("random:tiny-bert", "glue/sst2", config, progress=False)
    report = json.loads((first / REPORT_NAME).read_text())
    assert report["data"]["source"] == "local" and report["data"]["path"] == str(folder.resolve())
    assert finetune("random:tiny-bert", "glue/sst2", config, progress=False) == first
    assert len(calls) == 1  # nothing changed: the cache

    train = folder / "train.jsonl"
    lines = train.read_text().splitlines()
    train.write_text("\n".join(lines[: len(lines) // 2]) + "\n")  # the user drops half the rows
    second = finetune("random:tiny-bert", "glue/sst2", config, progress=False)
    assert second != first and len(calls) == 2  # changed data: trained again
    changed = json.loads((second / REPORT_NAME).read_text())
    assert changed["num_train_examples"] < report["num_train_examples"]
    assert changed["data"]["content_sha256"] != report["data"]["content_sha256"]
