"""Which data a task reads: the ``provenance()`` dict that records carry next to the task name.

Every dict has ``source`` (``asset`` | ``hub`` | ``local``) and ``content_sha256`` (a hash of the
bytes read, or None where they cannot be reached, e.g. a hub dataset not yet downloaded), plus

* ``asset``: ``id`` (the alias), ``version`` (the registry requirement), ``archive_sha256``;
* ``hub``: ``id`` (the dataset), ``config``, ``revision`` (the cache's revision folder, when cached);
* ``local``: ``path`` (absolute, a file or a folder).

Hashes are over the relative path and bytes of every file, in sorted order, so renaming, adding,
removing or editing a file changes them. They are cached per (path, size, mtime), so asking again
costs a ``stat`` per file.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Provenance = dict[str, Any]


@functools.lru_cache(maxsize=4096)
def _file_sha256(path: str, _size: int, _mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_sha256(paths: Iterable[Path], root: Path | None = None) -> str:
    """sha256 over (name relative to ``root``, file sha256) of ``paths``, sorted by name."""
    entries = []
    for p in paths:
        st = p.stat()
        name = str(p.relative_to(root)) if root is not None else p.name
        entries.append((name, _file_sha256(str(p.resolve()), st.st_size, st.st_mtime_ns)))
    return hashlib.sha256(json.dumps(sorted(entries)).encode()).hexdigest()


def tree_files(path: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    """The regular files under ``path`` (or ``path`` itself), hidden files and ``skip`` names excluded."""
    if path.is_file():
        return [path]
    return [
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.name not in skip
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    ]


def local_provenance(path: str | Path) -> Provenance:
    """A user's file or folder: its absolute path and the hash of everything in it."""
    p = Path(path).expanduser().resolve()
    root = p if p.is_dir() else p.parent
    return {"source": "local", "path": str(p), "content_sha256": content_sha256(tree_files(p), root)}


def asset_provenance(alias: str, subpath: str | None = None) -> Provenance:
    """A packaged asset (fetched on first use): alias, version, archive hash and the files read."""
    from statprune.assets import ASSETS, MANIFEST, asset_path

    folder = asset_path(alias)
    manifest = json.loads((folder / MANIFEST).read_text())
    read = folder / subpath if subpath else folder
    return {
        "source": "asset",
        "id": alias,
        "version": ASSETS.get(alias).requirement,
        "archive_sha256": manifest.get("sha256"),
        "content_sha256": content_sha256(tree_files(read, skip=(MANIFEST,)), folder),
    }


def hub_provenance(path: str, config: str | None) -> Provenance:
    """A hub dataset: id, config and, when ``datasets`` has it cached, its revision and file hash.

    Never downloads: a dataset not in the cache yet records ``revision``/``content_sha256`` None.
    """
    out: Provenance = {
        "source": "hub",
        "id": path,
        "config": config,
        "revision": None,
        "content_sha256": None,
    }
    files = _hub_cache_files(path, config)
    if files:
        out["revision"] = files[0].parent.name  # datasets' cache: <org___name>/<config>/<version>/<revision>/
        out["content_sha256"] = content_sha256(files, files[0].parent)
    return out


def _hub_cache_files(path: str, config: str | None) -> list[Path]:
    """The arrow files of the prepared ``datasets`` cache of (path, config), newest revision first."""
    import os
    import re

    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        return []
    root = Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets")
    org, _, name = path.rpartition("/")
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()
    for folder in dict.fromkeys((path.replace("/", "___"), "___".join(filter(None, (org, snake))))):
        base = root / folder / (config or "default")
        revisions = sorted(
            (d for d in base.glob("*/*") if d.is_dir() and any(d.glob("*.arrow"))),
            key=lambda d: d.stat().st_mtime,
            reverse=True,
        )
        if revisions:
            return sorted(revisions[0].glob("*.arrow"))
    return []


def indices_sha256(indices: Iterable[int]) -> str:
    """Hash of the calibration example indices (which rows of the split were drawn, in order)."""
    return hashlib.sha256(json.dumps([int(i) for i in indices]).encode()).hexdigest()
