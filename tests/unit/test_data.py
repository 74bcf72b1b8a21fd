"""Tasks, splits, encoding, collation and the asset fetcher's bookkeeping, on small synthetic files."""

from __future__ import annotations

import json
import random
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from statprune import assets
from statprune.data import IGNORE_INDEX, batches, collate, get_task, hash_split
from statprune.data.movie import movie_task
from statprune.data.sotu import sotu_task
from statprune.errors import StatpruneError
from statprune.models.shapes import shape_config, toy_tokenizer

N_ROWS = 10_000


def _rating(i: int) -> float:
    return round(((i * 37) % 161) / 20 - 4.0, 4)  # −4…+4 in steps of 0.05, many |r| < 0.5


def _write_movie(path: Path, order: list[int]) -> Path:
    lines = [
        f"{i}\t{_rating(i)}\tsnippet number {i} is {'good' if _rating(i) > 0 else 'bad'}." for i in order
    ]
    lines[0] = lines[0].replace("snippet", "snip\u2028pet")  # a Unicode line separator inside the text
    path.write_bytes(("\r\n".join(lines)).encode("utf-8"))
    return path


@pytest.fixture
def movie_file(tmp_path: Path) -> Path:
    return _write_movie(tmp_path / "movie.txt", list(range(1, N_ROWS + 1)))


def _ids(task, split: str) -> list[str]:
    return [r["id"] for r in task.examples(split)]


def test_movie_split_sizes_and_partition(movie_file: Path) -> None:
    task = movie_task(movie_file, regression=True)
    sizes = {s: len(task.examples(s)) for s in ("train", "dev", "test")}
    assert sum(sizes.values()) == N_ROWS  # regression keeps every row
    # 10 % / 10 % / 80 % by hash: binomial sd is 30 rows for 10k, allow 4 sd
    assert abs(sizes["dev"] - 1000) < 120 and abs(sizes["test"] - 1000) < 120
    all_ids = _ids(task, "train") + _ids(task, "dev") + _ids(task, "test")
    assert len(set(all_ids)) == N_ROWS  # disjoint and complete


def test_movie_splits_stable_across_calls_order_and_tasks(movie_file: Path, tmp_path: Path) -> None:
    shuffled = list(range(1, N_ROWS + 1))
    random.Random(1).shuffle(shuffled)
    other = _write_movie(tmp_path / "shuffled.txt", shuffled)
    a, b = movie_task(movie_file), movie_task(other)
    for split in ("train", "dev", "test"):
        assert _ids(a, split) == _ids(a, split)
        assert sorted(_ids(a, split)) == sorted(_ids(b, split))
        # the binary task's split is the regression task's split minus near-neutral rows
        assert set(_ids(a, split)) <= set(_ids(movie_task(movie_file, regression=True), split))
    assert set(_ids(movie_task(movie_file, seed=1), "dev")) != set(_ids(a, "dev"))


def test_movie_label_rule(movie_file: Path) -> None:
    task = movie_task(movie_file)
    rows = [r for s in ("train", "dev", "test") for r in task.examples(s)]
    expected = sum(abs(_rating(i)) >= 0.5 for i in range(1, N_ROWS + 1))
    assert len(rows) == expected and 0 < expected < N_ROWS
    assert all(abs(r["rating"]) >= 0.5 for r in rows)
    assert all(r["label"] == int(r["rating"] > 0) for r in rows)
    assert {r["label"] for r in rows} == {0, 1}
    reg = movie_task(movie_file, regression=True)
    assert all(isinstance(r["label"], float) and r["label"] == r["rating"] for r in reg.examples("dev"))


def test_movie_parses_crlf_and_inner_separators(movie_file: Path) -> None:
    task = movie_task(movie_file, regression=True)
    rows = {r["id"]: r for s in ("train", "dev", "test") for r in task.examples(s)}
    assert rows["1"]["text"] == "snip\u2028pet number 1 is bad."
    assert rows["2"]["text"] == "snippet number 2 is bad." and rows["2"]["rating"] == _rating(2)
    assert not any("\r" in r["text"] for r in rows.values())


def test_movie_bad_line_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"1\t0.5\tfine\r\n2\tnot-a-number\tbroken\r\n")
    with pytest.raises(StatpruneError, match=r"bad.txt:2:"):
        movie_task(bad).examples("train")


def test_hash_split_fractions() -> None:
    counts = {"train": 0, "dev": 0, "test": 0}
    for i in range(50_000):
        counts[hash_split(str(i))] += 1
    assert abs(counts["dev"] / 50_000 - 0.1) < 0.006 and abs(counts["test"] / 50_000 - 0.1) < 0.006
    assert hash_split("42") == hash_split("42") and hash_split("42", seed=0) == hash_split("42")


def test_unknown_task_and_split() -> None:
    with pytest.raises(
        StatpruneError, match=r"unknown task 'movie-sentimen'.*did you mean 'movie-sentiment'"
    ):
        get_task("movie-sentimen")
    task = get_task("sotu")
    with pytest.raises(StatpruneError, match=r"no split 'validaton'; valid splits: train, dev, test"):
        task.examples("validaton")
    assert task.canonical_split("validation") == "dev"
    assert get_task("movie-sentiment").num_labels == 2
    assert get_task("movie-sentiment-regression").kind == "regression"


# ------------------------------------------------------------------------------------------ encode


@pytest.fixture(scope="module")
def bert_tok():
    return toy_tokenizer(shape_config("tiny-bert"))


@pytest.fixture(scope="module")
def byte_tok():
    return toy_tokenizer(shape_config("tiny-llama"))


def test_encode_classification_and_regression(movie_file: Path, bert_tok) -> None:
    enc = movie_task(movie_file).encode(bert_tok, "dev", max_length=16)
    rows = movie_task(movie_file).examples("dev")
    assert len(enc) == len(rows)
    assert all(len(e["input_ids"]) <= 16 for e in enc) and max(len(e["input_ids"]) for e in enc) == 16
    first = enc[0]
    assert first["input_ids"][0] == bert_tok.cls_token_id and first["input_ids"][-1] == bert_tok.sep_token_id
    assert first["token_type_ids"].shape == first["input_ids"].shape and first["labels"].dtype == torch.long
    reg = movie_task(movie_file, regression=True).encode(bert_tok, "dev")
    assert reg[0]["labels"].dtype == torch.float32 and reg[0]["labels"].dim() == 0


def _write_sotu(folder: Path) -> Path:
    folder.mkdir()
    for year in (2008, 2009, 2010, 2015, 2016, 2016, 2021):
        stem = f"{year}_p{len(list(folder.iterdir()))}"
        text = f"Address of {year}. " * (40 + year % 7) + "Café ✓"
        (folder / f"{stem}.json").write_text(
            json.dumps({"year": year, "name": "P", "party": "X", "text": text})
        )
    return folder


def test_sotu_splits_by_year(tmp_path: Path) -> None:
    task = sotu_task(_write_sotu(tmp_path / "sotu"))
    years = {s: [r["year"] for r in task.examples(s)] for s in ("train", "dev", "test")}
    assert years == {"train": [2008, 2009], "dev": [2010, 2015], "test": [2016, 2016, 2021]}


def test_lm_windows_exact(tmp_path: Path, byte_tok) -> None:
    task = sotu_task(_write_sotu(tmp_path / "sotu"))
    text = "\n\n".join(r["text"] for r in task.examples("test"))
    total = len(text.encode("utf-8"))  # the toy byte-level tokenizer gives one token per byte
    stream = task.token_ids(byte_tok, "test")
    assert stream.numel() == total
    for window in (64, 100, total):
        enc = task.encode(byte_tok, "test", max_length=window)
        assert len(enc) == total // window and len(enc) * window <= total
        assert all(
            e["input_ids"].shape == (window,) and torch.equal(e["labels"], e["input_ids"]) for e in enc
        )
        # consecutive, non-overlapping: the windows concatenated are the head of the stream
        assert torch.equal(torch.cat([e["input_ids"] for e in enc]), stream[: len(enc) * window])
    assert task.encode(byte_tok, "test", max_length=total + 1) == []
    assert task.measure_seq_len(byte_tok, max_length=64) == 64.0


# ----------------------------------------------------------------------------------------- collate


def test_collate_pads_and_masks() -> None:
    ex = [
        {
            "input_ids": torch.tensor([5, 6, 7]),
            "token_type_ids": torch.tensor([0, 0, 1]),
            "labels": torch.tensor(1),
        },
        {"input_ids": torch.tensor([8]), "token_type_ids": torch.tensor([0]), "labels": torch.tensor(0)},
    ]
    b = collate(ex, pad_token_id=9)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 9, 9]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]]
    assert b["labels"].tolist() == [1, 0] and b["labels"].dtype == torch.long


def test_collate_per_token_labels_ignore_padding() -> None:
    ex = [
        {"input_ids": torch.tensor([1, 2]), "labels": torch.tensor([1, 2])},
        {"input_ids": torch.tensor([3]), "labels": torch.tensor([3])},
    ]
    b = collate(ex, pad_token_id=0)
    assert b["labels"].tolist() == [[1, 2], [3, IGNORE_INDEX]]
    reg = collate([{"input_ids": torch.tensor([1]), "labels": torch.tensor(0.25)}] * 2, pad_token_id=0)
    assert reg["labels"].dtype == torch.float32 and reg["labels"].tolist() == [0.25, 0.25]


def test_batches_sizes_and_order() -> None:
    ex = [{"input_ids": torch.arange(i + 1), "labels": torch.tensor(i)} for i in range(7)]
    out = list(batches(ex, 3, pad_token_id=0))
    assert [len(b["labels"]) for b in out] == [3, 3, 1]
    assert torch.cat([b["labels"] for b in out]).tolist() == list(range(7))
    assert out[1]["input_ids"].shape == (3, 6)
    with pytest.raises(ValueError):
        list(batches(ex, 0))


# ------------------------------------------------------------------------------- asset bookkeeping


def _fake_asset(build) -> assets.Asset:
    return assets.Asset("fake", "data", "pip", "fake-pkg==1.0", build, "test asset")


@pytest.fixture
def fake_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A registry-free download: a small tar.gz written into the fetch's temporary folder."""
    monkeypatch.setenv("STATPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(assets, "SHIPPED_CHECKSUMS", tmp_path / "none.json")
    calls: list[str] = []  # sha256 of each archive handed out

    payload = tmp_path / "payload.txt"
    payload.write_text("hello")
    source = tmp_path / "fake-1.0.tar.gz"
    with tarfile.open(source, "w:gz") as tar:
        tar.add(payload, arcname="package/data/x.txt")

    def download(asset: assets.Asset, dest: Path) -> Path:
        archive = Path(shutil.copy(source, dest))
        calls.append(assets.sha256_file(archive))
        return archive

    monkeypatch.setattr(assets, "_download", download)
    return calls


def _build_ok(archive: Path, dest: Path, progress: bool) -> None:
    with tarfile.open(archive) as tar:
        assets._extract_tar_members(tar, lambda n: Path(n).name, dest)


def test_fetch_is_atomic_and_idempotent(tmp_path: Path, fake_download) -> None:
    def build_fails(archive: Path, dest: Path, progress: bool) -> None:
        (dest / "half.bin").write_bytes(b"x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        assets._fetch_one(_fake_asset(build_fails), progress=False)
    root = tmp_path / "cache" / "assets"
    assert not (root / "fake").exists() and not list(root.glob(".tmp-*"))

    folder = assets._fetch_one(_fake_asset(_build_ok), progress=False)
    assert (folder / "x.txt").read_text() == "hello" and (folder / assets.MANIFEST).is_file()
    recorded = json.loads((root / "checksums.json").read_text())["fake-pkg==1.0"]
    assert recorded == {"alias": "fake", "archive": "fake-1.0.tar.gz", "sha256": fake_download[-1]}
    assert assets._fetch_one(_fake_asset(_build_ok), progress=False) == folder
    assert len(fake_download) == 2  # the failed fetch and the first good one; the third was a no-op


def test_fetch_checksum_mismatch_installs_nothing(tmp_path: Path, fake_download) -> None:
    root = tmp_path / "cache" / "assets"
    root.mkdir(parents=True)
    (root / "checksums.json").write_text(
        json.dumps({"fake-pkg==1.0": {"alias": "fake", "archive": "fake-1.0.tar.gz", "sha256": "0" * 64}})
    )
    with pytest.raises(StatpruneError, match="checksum mismatch for asset 'fake'"):
        assets._fetch_one(_fake_asset(_build_ok), progress=False)
    assert not (root / "fake").exists() and not list(root.glob(".tmp-*"))


def test_unknown_asset_lists_aliases() -> None:
    with pytest.raises(StatpruneError, match=r"unknown asset 'sotu2'.*minilm-l6.*sotu.*did you mean 'sotu'"):
        assets.fetch(["sotu2"])


def test_shipped_checksums_cover_every_asset() -> None:
    shipped = json.loads(assets.SHIPPED_CHECKSUMS.read_text())
    for alias in assets.ASSETS:
        entry = shipped[assets.ASSETS.get(alias).requirement]
        assert entry["alias"] == alias and len(entry["sha256"]) == 64
