"""Kwon et al. 2022: Fisher-based mask search, rearrangement and least-squares mask tuning.

Registered as the ``kwon`` method; see :mod:`statprune.baselines.kwon.method` for the options.
"""

from statprune.baselines.kwon.method import KwonOptions, kwon_prune

__all__ = ["KwonOptions", "kwon_prune"]
