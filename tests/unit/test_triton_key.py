"""Triton's installation key remembered across processes (statprune/stat/triton_key.py): the same
key as Triton's own function, read back without hashing, recomputed when Triton's files change."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from statprune.stat.triton_key import fingerprint, memoized

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed (pip install triton)"
)


def _never() -> str:
    raise AssertionError("Triton's key was computed again")


def _counting(calls: list[int], value: str = "3.6.0-abc"):
    def key() -> str:
        calls.append(1)
        return value + str(len(calls))

    return key


def _fake_triton(root: Path) -> None:
    (root / "_C").mkdir(parents=True)
    (root / "_C" / "libtriton.so").write_bytes(b"\0" * 64)
    (root / "runtime").mkdir()
    (root / "runtime" / "cache.py").write_text("x = 1\n")
    (root / "README.md").write_text("not hashed by triton_key\n")


def _tritons_own_key():
    from triton.runtime import cache

    return getattr(cache.triton_key, "original", cache.triton_key)


@needs_triton
def test_the_remembered_key_is_tritons_and_is_read_back_without_hashing(tmp_path):
    import triton

    root, store = Path(triton.__file__).parent, tmp_path / "key.json"
    own = _tritons_own_key()
    key = memoized(own, root, store)()
    assert key == own() and key.startswith(triton.__version__)
    assert json.loads(store.read_text())["key"] == key
    # a later process: the stored key, Triton's function not called
    assert memoized(_never, root, store)() == key


def test_a_changed_source_or_library_computes_the_key_again(tmp_path):
    root, store, calls = tmp_path / "triton", tmp_path / "key.json", []
    _fake_triton(root)
    assert memoized(_counting(calls), root, store)() == "3.6.0-abc1"
    assert memoized(_counting(calls), root, store)() == "3.6.0-abc1" and len(calls) == 1
    (root / "README.md").write_text("changed, but triton_key does not read it\n")
    assert memoized(_counting(calls), root, store)() == "3.6.0-abc1" and len(calls) == 1
    (root / "runtime" / "cache.py").write_text("x = 2\n")
    assert memoized(_counting(calls), root, store)() == "3.6.0-abc2" and len(calls) == 2
    before = fingerprint(root)
    lib = root / "_C" / "libtriton.so"
    lib.unlink()
    lib.write_bytes(b"\0" * 64)  # a reinstall: same size, another inode or time
    os.utime(lib, ns=(1, 1))
    assert fingerprint(root) != before
    assert memoized(_counting(calls), root, store)() == "3.6.0-abc3" and len(calls) == 3


def test_an_unreadable_or_unwritable_store_costs_only_the_hash(tmp_path):
    root, calls = tmp_path / "triton", []
    _fake_triton(root)
    (tmp_path / "file").write_text("{not json")
    assert memoized(_counting(calls), root, tmp_path / "file")() == "3.6.0-abc1"  # garbage: recomputed
    blocked = tmp_path / "file" / "key.json"  # its parent is a file: cannot be written
    assert memoized(_counting(calls), root, blocked)() == "3.6.0-abc2"
    assert len(calls) == 2


PROBE = """
import json, sys
from statprune.stat import triton_key
triton_key.memoize()
from triton.runtime import autotuner, cache
fn = cache.triton_key
print(json.dumps({
    "patched": hasattr(fn, "original"),
    "autotuner": autotuner.triton_key is fn,
    "equal": fn() == getattr(fn, "original", fn)(),
}))
"""


@needs_triton
@pytest.mark.parametrize("memo", ["1", "0"])
def test_memoize_replaces_the_key_where_triton_calls_it(tmp_path, memo):
    env = {**os.environ, "STATPRUNE_CACHE": str(tmp_path), "STATPRUNE_TRITON_KEY_MEMO": memo}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    assert got == {"patched": memo == "1", "autotuner": True, "equal": True}
    assert (len(list(tmp_path.rglob("*.json"))) == 1) == (memo == "1")
