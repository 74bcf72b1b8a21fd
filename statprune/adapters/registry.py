"""Adapters are found by ``config.model_type`` (not by class-name prefixes)."""

from __future__ import annotations

from torch import nn

from statprune.errors import StatpruneError
from statprune.registry import Registry

ADAPTERS: Registry[type] = Registry("model type (no adapter)")
HOW_TO_ADD = "README 'Your own model' > 'Adding a model family'"


def register_adapter(cls: type) -> type:
    for mt in cls.model_types:
        ADAPTERS.add(mt, cls)
    return cls


def supported_model_types() -> list[str]:
    return ADAPTERS.names()


def check_supported(model_type: str) -> None:
    """One-line :class:`StatpruneError` for a model type without an adapter."""
    if model_type not in ADAPTERS:
        raise StatpruneError(
            f"model type {model_type!r} is not supported (no adapter); supported: "
            f"{', '.join(supported_model_types())}; to add one see {HOW_TO_ADD}"
        )


def get_adapter(model: nn.Module):
    """The adapter for ``model`` (dispatch on ``model.config.model_type``)."""
    mt = str(getattr(getattr(model, "config", None), "model_type", None))
    check_supported(mt)
    return ADAPTERS.get(mt)(model)
