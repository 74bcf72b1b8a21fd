"""Baseline pruning methods (structured magnitude, Kwon et al. 2022, SliceGPT, FLAP, Wanda-sp), registered by name.

Importing this package registers ``magnitude``, ``kwon``, ``slicegpt``, ``flap`` and ``wanda-sp`` with
:func:`statprune.pruner.register_method`.
"""

from statprune.baselines import (
    flap,  # noqa: F401  (registration)
    kwon,  # noqa: F401  (registration)
    magnitude,  # noqa: F401  (registration)
    slicegpt,  # noqa: F401  (registration)
    wanda_sp,  # noqa: F401  (registration)
)
