"""Triton's installation key, remembered across processes instead of rehashed in each one.

Triton keys its on-disk kernel cache by ``triton_key()``: a sha256 of its Python sources and of
its whole ``libtriton`` library (415 MB in triton 3.6), computed once per process at the first
kernel launch. That is 0.3–0.4 s of every fresh process that runs the fused pivot step on an H200
(a fifth of a BERT-base prune, docs/BENCHMARKS.md §3e) and 1.0 s on the 2-core development machine
(`triton.runtime.cache.triton_key()` timed directly, 2026-12-02). The value changes
only when Triton's files do, so :func:`memoize` keeps it in statprune's cache under a fingerprint
of those files (path, size, modification time and inode of every ``.py`` file of the package and
of everything in ``_C``); any difference — an upgrade, a reinstall, an edited source — and
Triton's own function computes it again. Nothing else of Triton is touched: the key, and so the
kernel cache Triton reads, is the same as without this module (tests/unit/test_triton_key.py
checks both against Triton's own function).

``STATPRUNE_TRITON_KEY_MEMO=0`` turns it off.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from statprune.cache import cache_dir
from statprune.io import write_json_atomic

log = logging.getLogger(__name__)

_MARK = "__statprune_memo__"


def fingerprint(root: Path) -> str:
    """sha256 over (relative path, size, mtime, inode) of every ``.py`` file under ``root`` and
    every file in ``root/_C``: what ``triton_key()`` reads is a subset, so any change it would see
    changes this."""
    h = hashlib.sha256(str(root.resolve()).encode())
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        binary = here.relative_to(root).parts[:1] == ("_C",)
        for name in sorted(filenames):
            if binary or name.endswith(".py"):
                st = (here / name).stat()
                rel = (here / name).relative_to(root)
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
    return h.hexdigest()


def memoized(original: Callable[[], str], root: Path, store: Path) -> Callable[[], str]:
    """``original`` (Triton's ``triton_key``), read from ``store`` while ``root``'s fingerprint
    is the one stored with it; computed by ``original`` and stored otherwise."""

    @functools.cache
    def triton_key() -> str:
        fp = fingerprint(root)
        try:
            saved = json.loads(store.read_text())
            if saved.get("fingerprint") == fp and isinstance(saved.get("key"), str):
                return saved["key"]
        except (OSError, ValueError):
            pass
        key = original()
        try:  # atomic: a concurrent reader sees the old file or the new one
            write_json_atomic(store, {"fingerprint": fp, "key": key})
        except OSError as e:  # an unwritable cache costs the hash next time, nothing else
            log.debug("triton key not stored in %s: %s", store, e)
        return key

    setattr(triton_key, _MARK, True)
    triton_key.original = original  # type: ignore[attr-defined]
    return triton_key


def memoize() -> None:
    """Replace ``triton_key`` in every imported Triton module that refers to it (``runtime.cache``,
    where the kernel cache calls it, and modules that imported it by name) with :func:`memoized`."""
    if os.environ.get("STATPRUNE_TRITON_KEY_MEMO", "1") == "0":
        return
    try:
        import triton
        from triton.runtime import cache
    except ImportError:
        return
    original = getattr(cache, "triton_key", None)
    if not callable(original) or getattr(original, _MARK, False):
        return
    root = Path(triton.__file__).parent
    store = cache_dir() / "triton_key" / f"{triton.__version__}.json"
    replacement = memoized(original, root, store)
    for name, module in list(sys.modules.items()):
        if (name == "triton" or name.startswith("triton.")) and getattr(
            module, "triton_key", None
        ) is original:
            module.triton_key = replacement
