"""SliceGPT's residual shortcut matrices, run through the stock decoder layer by hooks.

After rotation, the residual stream entering a sub-block (attention or FFN) lives in that block's
input basis Q_in while the sub-block writes into the next basis Q_out, so the skip connection must
carry x ↦ x·Q_inᵀQ_out (sliced: k × k). The stock layer computes ``x + block(norm(x))``; a forward
hook on the block adds ``shortcut(x) − x`` to its output, so the sum becomes
``shortcut(x) + block(norm(x))`` without touching the layer's code. ``x`` is taken by a pre-hook on
the norm in front of the block (its input is the residual stream).

A :class:`Shortcut` is a bias-free ``nn.Linear`` whose hook functions are its own bound methods, so
``copy.deepcopy`` of the model carries working hooks. It is a registered submodule of the layer
(``statprune_shortcut_attention`` / ``statprune_shortcut_ffn``: saved in the state dict, moved by
``.to``) and listed in ``layer.statprune_extra`` so the FLOPs model counts it.

A rectangular shortcut (k → d: the last layer's FFN when the LM head keeps its full width, SliceGPT's
``do_slice_head=False``) cannot go through the layer's own k-wide residual add: the block hook
stores the d-wide sum and returns −x, so the layer's add gives exactly 0, and a forward hook on the
layer replaces that output by the stored sum.
"""

from __future__ import annotations

import torch
from torch import nn

from statprune.adapters import Adapter

NAMES = {"attention": "statprune_shortcut_attention", "ffn": "statprune_shortcut_ffn"}


class Shortcut(nn.Linear):
    """x ↦ x·M on a residual path; ``weight`` holds Mᵀ (out × in) as for any linear."""

    def __init__(self, in_features: int, out_features: int, *, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=False, device=device, dtype=dtype)
        self._x: torch.Tensor | None = None
        self._wide: torch.Tensor | None = None

    def keep_input(self, _module: nn.Module, args: tuple) -> None:
        self._x = args[0]

    def add_to_output(self, _module: nn.Module, _args: tuple, out):
        x, self._x = self._x, None
        y = out[0] if isinstance(out, tuple) else out
        if self.in_features == self.out_features:
            y = y + self(x) - x
        else:  # widening: the layer's own add yields x − x = 0, replaced in replace_layer_output
            self._wide = y + self(x)
            y = -x
        return (y, *out[1:]) if isinstance(out, tuple) else y

    def replace_layer_output(self, _module: nn.Module, _args: tuple, out):
        if self._wide is None:
            return None
        wide, self._wide = self._wide, None
        return (wide, *out[1:]) if isinstance(out, tuple) else wide

    def attach(self, norm: nn.Module, block: nn.Module, layer: nn.Module) -> None:
        norm.register_forward_pre_hook(self.keep_input)
        block.register_forward_hook(self.add_to_output)
        if self.in_features != self.out_features:
            layer.register_forward_hook(self.replace_layer_output)

    def detach(self, norm: nn.Module, block: nn.Module, layer: nn.Module) -> None:
        """Remove this shortcut's hooks (found by owner, so this also works on a deep copy)."""
        for hooks in (norm._forward_pre_hooks, block._forward_hooks, layer._forward_hooks):
            for key, fn in list(hooks.items()):
                if getattr(fn, "__self__", None) is self:
                    del hooks[key]


def _modules(adapter: Adapter, i: int, kind: str) -> tuple[nn.Module, nn.Module]:
    if kind == "attention":
        return adapter.input_norm(i), adapter.attention(i)
    return adapter.post_attention_norm(i), adapter.ffn(i)


@torch.no_grad()
def set_shortcut(adapter: Adapter, i: int, kind: str, matrix: torch.Tensor) -> Shortcut:
    """Install (or replace) layer ``i``'s ``kind`` ("attention"/"ffn") shortcut x ↦ x·``matrix``."""
    layer = adapter.layers()[i]
    norm, block = _modules(adapter, i, kind)
    old = getattr(layer, NAMES[kind], None)
    if isinstance(old, Shortcut):
        old.detach(norm, block, layer)
    ref = adapter.out_proj(i).weight
    sc = Shortcut(matrix.shape[0], matrix.shape[1], device=ref.device, dtype=ref.dtype)
    sc.weight.copy_(matrix.T.to(device=ref.device, dtype=ref.dtype))
    setattr(layer, NAMES[kind], sc)
    sc.attach(norm, block, layer)
    extra = dict(getattr(layer, "statprune_extra", {}))
    extra[kind] = [sc]
    layer.statprune_extra = extra
    return sc


def get_shortcut(adapter: Adapter, i: int, kind: str) -> Shortcut | None:
    return getattr(adapter.layers()[i], NAMES[kind], None)
