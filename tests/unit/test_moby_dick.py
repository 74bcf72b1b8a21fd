"""The Moby-Dick LM task and asset builder on small synthetic section files (no download)."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import pytest
import torch

from statprune import assets
from statprune.data import get_task
from statprune.data.moby_dick import moby_dick_task
from statprune.errors import StatpruneError
from statprune.models.shapes import shape_config, toy_tokenizer

SECTIONS = ["etymology", "extracts", "chapter_1", "chapter_2", "chapter_87", "chapter_88"]
SECTIONS += ["chapter_110", "chapter_111", "chapter_135", "epilogue"]


def _write_book(folder: Path, order: list[str]) -> Path:
    folder.mkdir()
    for stem in order:  # written in the given order: the task must not depend on it
        (folder / f"{stem}.txt").write_text(f"{stem.upper()}.\n\nThe whale, said {stem}. ✓\n" * 20)
    return folder


@pytest.fixture
def book(tmp_path: Path) -> Path:
    return _write_book(tmp_path / "book", SECTIONS)


def test_split_by_chapter_in_book_order(book: Path) -> None:
    task = moby_dick_task(book)
    ids = {s: [r["id"] for r in task.examples(s)] for s in ("train", "dev", "test")}
    assert ids == {
        "train": ["etymology", "extracts", "chapter_1", "chapter_2", "chapter_87"],
        "dev": ["chapter_88", "chapter_110"],
        "test": ["chapter_111", "chapter_135", "epilogue"],
    }
    assert [r["chapter"] for r in task.examples("test")] == [111, 135, 136]
    assert sorted(i for split_ids in ids.values() for i in split_ids) == sorted(
        SECTIONS
    )  # disjoint, complete
    assert task.examples("test")[0]["text"].startswith("CHAPTER_111.\n\nThe whale")
    assert not task.examples("test")[0]["text"].endswith("\n")  # no blank runs where sections join


def test_windows_do_not_depend_on_file_order(tmp_path: Path, book: Path) -> None:
    shuffled = SECTIONS[:]
    random.Random(0).shuffle(shuffled)
    other = moby_dick_task(_write_book(tmp_path / "other", shuffled))
    tok = toy_tokenizer(shape_config("tiny-llama"))
    for split in ("train", "dev", "test"):
        a, b = moby_dick_task(book).encode(tok, split, 64), other.encode(tok, split, 64)
        assert len(a) == len(b) > 0 and all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
        total = len(moby_dick_task(book).text(split).encode())  # byte tokenizer: one token per byte
        assert len(a) == total // 64


def test_provenance_tracks_the_files(book: Path) -> None:
    task = moby_dick_task(book)
    prov = task.provenance()
    assert (
        prov["source"] == "local"
        and prov["path"] == str(book.resolve())
        and len(prov["content_sha256"]) == 64
    )
    (book / "chapter_2.txt").write_text("CHAPTER 2. changed\n")
    assert task.provenance()["content_sha256"] != prov["content_sha256"]
    registered = get_task("moby-dick")
    assert registered.name == "moby-dick" and registered.kind == "lm" and registered.max_length == 512


def test_bad_split_and_bad_file_names(book: Path, tmp_path: Path) -> None:
    with pytest.raises(
        StatpruneError, match=r"task 'moby-dick' has no split 'tset'; valid splits: train, dev, test"
    ):
        get_task("moby-dick").examples("tset")
    assert get_task("moby-dick").canonical_split("validation") == "dev"
    (book / "chapter_136.txt").write_text("not in the book")
    with pytest.raises(StatpruneError, match=r"unexpected Moby-Dick section file 'chapter_136'"):
        moby_dick_task(book).examples("train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StatpruneError, match=r"no Moby-Dick \.txt files"):
        moby_dick_task(tmp_path / "empty").examples("train")


def _package(path: Path, stems: list[str]) -> Path:
    """A tarball laid out like the npm package: section .txt + .json copies, data.txt, LICENSE, NOTICE."""
    names = [f"package/data/{s}.txt" for s in stems] + [f"package/data/{s}.json" for s in stems]
    names += ["package/data/data.txt", "package/data/contents.txt", "package/LICENSE", "package/NOTICE"]
    names += ["package/lib/index.js"]
    with tarfile.open(path, "w:gz") as tar:
        for name in names:
            body = name.encode()
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return path


def test_builder_keeps_sections_and_licence(tmp_path: Path) -> None:
    stems = ["etymology", "extracts", *(f"chapter_{i}" for i in range(1, 136)), "epilogue"]
    dest = tmp_path / "out"
    dest.mkdir()
    assets._build_moby_dick(_package(tmp_path / "ok.tgz", stems), dest, False)
    assert sorted(p.name for p in dest.iterdir()) == ["LICENSE", "NOTICE", "data"]
    assert sorted(p.stem for p in (dest / "data").iterdir()) == sorted(stems)
    assert (dest / "data" / "chapter_7.txt").read_text() == "package/data/chapter_7.txt"
    short = tmp_path / "short"
    short.mkdir()
    with pytest.raises(StatpruneError, match="holds 137 of the 138 expected section files"):
        assets._build_moby_dick(_package(tmp_path / "bad.tgz", stems[:-1]), short, False)
