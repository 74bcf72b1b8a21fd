"""Models: loading (alias, local directory, hub id, random shape) and named shapes.

Cheap to import: transformers is imported on the first load.
"""

from statprune.models.load import build_random, is_decoder, load_model, model_class
from statprune.models.shapes import SHAPES, Shape, shape_config, toy_tokenizer

__all__ = [
    "SHAPES",
    "Shape",
    "build_random",
    "is_decoder",
    "load_model",
    "model_class",
    "shape_config",
    "toy_tokenizer",
]
