"""Model-family adapters; importing this package registers every family."""

from statprune.adapters import bert, distilbert, gemma, gpt2, llama, opt, phi3  # noqa: F401  (registration)
from statprune.adapters.base import Adapter, LayerShape, head_dims
from statprune.adapters.registry import check_supported, get_adapter, supported_model_types

__all__ = ["Adapter", "LayerShape", "check_supported", "get_adapter", "head_dims", "supported_model_types"]
