"""SliceGPT: fold norms, rotate each block's residual basis by PCA, slice the hidden dimension.

Registered as the ``slicegpt`` method; see :mod:`statprune.baselines.slicegpt.method`.
"""

from statprune.baselines.slicegpt.method import SliceGPTOptions, restore_slicegpt, slicegpt_prune

__all__ = ["SliceGPTOptions", "restore_slicegpt", "slicegpt_prune"]
