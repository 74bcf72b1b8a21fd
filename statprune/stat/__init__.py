"""STAT core: interpolative decomposition (``id``), heads, neurons, allocation, and the method."""

from statprune.stat import prune as _prune  # noqa: F401  (registers the "stat" method)
from statprune.stat.prune import StatOptions

__all__ = ["StatOptions"]
