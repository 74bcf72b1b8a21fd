"""The source hash that names a record's code where git cannot (statprune/provenance.py)."""

from __future__ import annotations

from pathlib import Path

from statprune.data.origin import content_sha256
from statprune.provenance import source_files, source_sha256


def _tree(root: Path) -> None:
    (root / "sub" / "__pycache__").mkdir(parents=True)
    (root / "a.py").write_text("x = 1\n")
    (root / "sub" / "b.py").write_text("y = 2\n")
    (root / "sub" / "c.json").write_text("{}")
    (root / "sub" / "__pycache__" / "b.cpython-311.pyc").write_bytes(b"\0\1")
    (root / "notes.txt").write_text("ignored")


def _digest(root: Path) -> str:
    return content_sha256(source_files(root), root=root)


def test_source_files_are_code_and_data_without_caches(tmp_path):
    _tree(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in source_files(tmp_path)] == [
        "a.py",
        "sub/b.py",
        "sub/c.json",
    ]


def test_source_digest_names_content_and_paths(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    _tree(one), _tree(two)
    base = _digest(one)
    assert base == _digest(two)  # same files elsewhere: same hash
    (two / "notes.txt").write_text("changed")
    (two / "sub" / "__pycache__" / "b.cpython-311.pyc").write_bytes(b"\2")
    assert _digest(two) == base  # neither caches nor other files count
    # file hashes are cached per (path, size, mtime): each edit changes the size
    (two / "sub" / "b.py").write_text("y = 23\n")
    assert _digest(two) != base  # edited code
    (two / "sub" / "b.py").rename(two / "b.py")
    (one / "sub" / "b.py").write_text("y = 23\n")
    assert _digest(two) != _digest(one)  # a moved file


def test_source_hash_is_the_package_tree():
    import statprune

    package = Path(statprune.__file__).parent
    assert source_sha256() == _digest(package)
    assert len(source_sha256()) == 64
