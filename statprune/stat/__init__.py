"""STAT core: interpolative decomposition (``id``), heads, neurons, allocation, and the method."""

from statprune.stat.prune import StatOptions

__all__ = ["StatOptions"]
