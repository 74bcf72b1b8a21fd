"""The source hash that names a record's code where git cannot (statprune/provenance.py)."""

from __future__ import annotations

from pathlib import Path

from statprune.provenance import source_sha256, tree_sha256


def _tree(root: Path) -> None:
    (root / "sub" / "__pycache__").mkdir(parents=True)
    (root / "a.py").write_text("x = 1\n")
    (root / "sub" / "b.py").write_text("y = 2\n")
    (root / "sub" / "c.json").write_text("{}")
    (root / "sub" / "__pycache__" / "b.cpython-311.pyc").write_bytes(b"\0\1")
    (root / "notes.txt").write_text("ignored")


def test_tree_hash_names_content_and_paths(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    _tree(one), _tree(two)
    base = tree_sha256(one)
    assert base == tree_sha256(two)  # same files elsewhere: same hash
    (two / "notes.txt").write_text("changed")
    (two / "sub" / "__pycache__" / "b.cpython-311.pyc").write_bytes(b"\2")
    assert tree_sha256(two) == base  # neither caches nor other files count
    (two / "sub" / "b.py").write_text("y = 3\n")
    assert tree_sha256(two) != base  # one changed byte of code
    (two / "sub" / "b.py").write_text("y = 2\n")
    assert tree_sha256(two) == base
    (two / "sub" / "b.py").rename(two / "b.py")
    assert tree_sha256(two) != base  # a moved file


def test_source_hash_is_the_package_tree():
    import statprune

    assert source_sha256() == tree_sha256(Path(statprune.__file__).parent)
    assert len(source_sha256()) == 64
