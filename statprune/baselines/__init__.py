"""Baseline pruning methods (structured magnitude, Kwon et al. 2022, SliceGPT), registered by name.

Importing this package registers ``magnitude``, ``kwon`` and ``slicegpt`` with
:func:`statprune.pruner.register_method`.
"""

from statprune.baselines import (
    kwon,  # noqa: F401  (registration)
    magnitude,  # noqa: F401  (registration)
    slicegpt,  # noqa: F401  (registration)
)
