"""Head and neuron masks applied through the adapter's hook points.

transformers 5 has no ``head_mask``, so a mask is a forward pre-hook: the head-output point (input of
the output projection, features laid out head by head) is multiplied per head, the neuron point (input
of the down projection) per neuron. Masks are per layer (layers may differ in shape) and may require
grad (Fisher) or hold real values (tuned scales). A layer whose mask is ``None`` runs unmasked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from statprune.adapters import Adapter


@dataclass
class Masks:
    """One value per query head and per neuron, per layer."""

    head: list[torch.Tensor | None]
    neuron: list[torch.Tensor | None]

    @classmethod
    def ones(
        cls, adapter: Adapter, *, requires_grad: bool = False, device: torch.device | None = None
    ) -> Masks:
        dev = device or adapter.device
        shapes = adapter.shapes()
        return cls(
            head=[torch.ones(s.num_heads, device=dev, requires_grad=requires_grad) for s in shapes],
            neuron=[torch.ones(s.intermediate, device=dev, requires_grad=requires_grad) for s in shapes],
        )

    def clone(self) -> Masks:
        return Masks(
            [None if m is None else m.detach().clone() for m in self.head],
            [None if m is None else m.detach().clone() for m in self.neuron],
        )


class MaskHooks:
    """Installs mask pre-hooks on every layer; ``active`` selects which :class:`Masks` they apply."""

    def __init__(self, adapter: Adapter, active: Masks | None = None) -> None:
        self.adapter = adapter
        self.active = active
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _head_hook(self, i: int, head_dim: int):
        def pre(_m: nn.Module, args: tuple) -> tuple | None:
            m = None if self.active is None else self.active.head[i]
            if m is None:
                return None
            x = args[0]
            return (x * m.to(x.dtype).repeat_interleave(head_dim), *args[1:])

        return pre

    def _neuron_hook(self, i: int):
        def pre(_m: nn.Module, args: tuple) -> tuple | None:
            m = None if self.active is None else self.active.neuron[i]
            if m is None:
                return None
            x = args[0]
            return (x * m.to(x.dtype), *args[1:])

        return pre

    @contextmanager
    def attached(self) -> Iterator[MaskHooks]:
        hd = self.adapter.head_dim
        for i in range(self.adapter.num_layers):
            # prepend: masks act before any measuring hook a caller registers later
            self._handles.append(
                self.adapter.out_proj(i).register_forward_pre_hook(self._head_hook(i, hd), prepend=True)
            )
            self._handles.append(
                self.adapter.down_proj(i).register_forward_pre_hook(self._neuron_hook(i), prepend=True)
            )
        try:
            yield self
        finally:
            for h in self._handles:
                h.remove()
            self._handles = []
