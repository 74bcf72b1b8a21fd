"""Baseline pruning methods (structured magnitude, Kwon et al. 2022, SliceGPT, FLAP, Wanda-sp).

Each is listed by name in :data:`statprune.methods.METHOD_PATHS` and imported only when used.
"""
