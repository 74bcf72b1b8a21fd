"""Adapters are found by ``config.model_type`` (not by class-name prefixes)."""

from __future__ import annotations

from torch import nn

from statprune.registry import Registry

ADAPTERS: Registry[type] = Registry("model type (no adapter)")


def register_adapter(cls: type) -> type:
    for mt in cls.model_types:
        ADAPTERS.add(mt, cls)
    return cls


def supported_model_types() -> list[str]:
    return ADAPTERS.names()


def get_adapter(model: nn.Module):
    """The adapter for ``model`` (dispatch on ``model.config.model_type``)."""
    mt = getattr(getattr(model, "config", None), "model_type", None)
    return ADAPTERS.get(str(mt))(model)
