"""Where statprune keeps fetched assets, converted models and fine-tuned checkpoints."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$STATPRUNE_CACHE``, else ``$XDG_CACHE_HOME/statprune``, else ``~/.cache/statprune``."""
    env = os.environ.get("STATPRUNE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "statprune"
