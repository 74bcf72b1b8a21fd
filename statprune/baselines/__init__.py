"""Baseline pruning methods (structured magnitude, Kwon et al. 2022, SliceGPT), registered by name."""
