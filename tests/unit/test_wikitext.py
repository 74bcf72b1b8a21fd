"""WikiText-2 on the local raw-file fixtures: hub-identical rows, the "\\n\\n" join, windows, perplexity."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from statprune.data import get_task
from statprune.data.wikitext import wikitext_task
from statprune.errors import StatpruneError
from statprune.evaluation import evaluate
from statprune.models import load_model

FIXTURES = Path(__file__).parents[1] / "data" / "fixtures"
RAW = FIXTURES / "wikitext-2"


@pytest.fixture
def fixtures_env(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STATPRUNE_DATA_DIR", str(FIXTURES))
    monkeypatch.delenv("STATPRUNE_DATA_WIKITEXT_2", raising=False)
    return FIXTURES


@pytest.fixture(scope="module")
def llama():
    return load_model("random:tiny-llama", task=get_task("wikitext-2"))


def test_registry_metadata() -> None:
    task = get_task("wikitext-2")
    assert task.kind == "lm" and task.max_length == 2048 and task.flops_seq_len == 2048.0
    assert task.separator == "\n\n" and task.splits == ("train", "dev", "test")
    assert task.canonical_split("validation") == "dev"
    assert wikitext_task(512).flops_seq_len == 512.0


def test_raw_files_read_as_hub_rows(fixtures_env: Path) -> None:
    lines = (RAW / "wiki.test.raw").read_text(encoding="utf-8").split("\n")[:-1]  # file ends with "\n"
    rows = get_task("wikitext-2").examples("test")
    assert len(rows) == len(lines)
    # the hub's rows: one per line, line end kept, whitespace-only lines as ""
    assert [r["text"] for r in rows] == [ln + "\n" if ln.strip() else "" for ln in lines]
    assert rows[1]["text"] == " = Article 0 of the corpus = \n" and rows[0]["text"] == ""
    assert "".join(r["text"] for r in rows).count("@-@") == 9
    text = get_task("wikitext-2").text("test")
    assert text == "\n\n".join(r["text"] for r in rows)
    assert {s: len(get_task("wikitext-2").examples(s)) for s in ("train", "dev")} == {"train": 85, "dev": 43}


def test_same_windows_from_a_hub_schema_file(fixtures_env: Path, tmp_path: Path, monkeypatch, llama) -> None:
    _, tok = llama
    rows = get_task("wikitext-2").examples("test")
    reference = get_task("wikitext-2").encode(tok, "test", 64)
    own = tmp_path / "wt2"
    own.mkdir()
    (own / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("STATPRUNE_DATA_WIKITEXT_2", str(own))
    again = get_task("wikitext-2").encode(tok, "test", 64)
    assert len(again) == len(reference) > 10
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(again, reference))


def test_windows_are_full_and_contiguous(fixtures_env: Path, llama) -> None:
    _, tok = llama
    task = get_task("wikitext-2")
    ids = task.token_ids(tok, "test")
    windows = task.encode(tok, "test", 64)
    assert len(windows) == ids.numel() // 64
    assert all(w["input_ids"].shape == (64,) for w in windows)
    assert torch.equal(torch.cat([w["input_ids"] for w in windows]), ids[: 64 * len(windows)])
    # the toy tokenizer is byte-level: one token per UTF-8 byte of the joined text
    assert ids.numel() == len(task.text("test").encode("utf-8"))


def test_perplexity_of_a_tiny_llama(fixtures_env: Path, llama) -> None:
    model, tok = llama
    out = evaluate(model, tok, get_task("wikitext-2"), "test", max_length=64, batch_size=8, progress=False)
    n = len(get_task("wikitext-2").encode(tok, "test", 64))
    assert out["num_examples"] == n and out["num_tokens"] == n * 63 and out["window"] == 64
    assert out["perplexity"] == pytest.approx(math.exp(out["nll"]))
    assert 100 < out["perplexity"] < 5000  # random weights over a 1024-token vocabulary: near uniform


def test_offline_hub_fails_at_once_naming_the_raw_files(tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("STATPRUNE_DATA_DIR", raising=False)
    monkeypatch.delenv("STATPRUNE_DATA_WIKITEXT_2", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    t0 = time.perf_counter()
    with pytest.raises(StatpruneError) as err:
        get_task("wikitext-2").encode(None, "test")
    assert time.perf_counter() - t0 < 5.0
    for part in ("Salesforce/wikitext", "$STATPRUNE_DATA_WIKITEXT_2", "wiki.test", "wikitext-2/"):
        assert part in str(err.value), part
