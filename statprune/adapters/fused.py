"""Fused projections (Phi-3's qkv_proj/gate_up_proj, GPT-2's Conv1D c_attn) as separate Linears.

Pruning needs one ``nn.Linear`` per produced quantity (q, k, v; gate, up) so that rows can be
selected independently. :class:`Fused` holds those parts, concatenates their outputs in forward
(what the stock module's caller slices), and keeps the stock layout in the state dict: saving
concatenates the parts into the original ``weight``/``bias`` (transposed for GPT-2's Conv1D), loading
splits them at the parts' current sizes. Checkpoints therefore keep the stock key names and layout.

A single part is also useful: it re-expresses a Conv1D as a Linear, or (``token_shape``, set by the
adapter before each layer call) gives hooks a (batch, tokens, features) input where the stock layer
flattens tokens (OPT's FFN), so that the calibration masks apply unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from statprune.adapters.base import empty_linear


class Fused(nn.Module):
    """Parts whose outputs are concatenated on the last dimension; ``conv1d``: stored as (in, out)."""

    def __init__(self, parts: list[nn.Linear], conv1d: bool = False) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.conv1d = conv1d
        self.token_shape: tuple[int, ...] | None = None
        self.register_state_dict_post_hook(_save_fused)
        self.register_load_state_dict_pre_hook(_load_fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = self.token_shape
        flat = shape is not None and x.dim() == 2 and len(shape) == 2 and x.shape[0] == shape[0] * shape[1]
        if flat:
            x = x.view(*shape, x.shape[-1])
        y = self.parts[0](x) if len(self.parts) == 1 else torch.cat([p(x) for p in self.parts], dim=-1)
        return y.reshape(-1, y.shape[-1]) if flat else y


def _save_fused(module: Fused, state: dict, prefix: str, _meta: object) -> None:
    n = len(module.parts)
    weights = [state.pop(f"{prefix}parts.{j}.weight") for j in range(n)]
    biases = [state.pop(f"{prefix}parts.{j}.bias", None) for j in range(n)]
    w = torch.cat(weights, 0)
    state[f"{prefix}weight"] = w.T.contiguous() if module.conv1d else w
    if all(b is not None for b in biases):
        state[f"{prefix}bias"] = torch.cat(biases, 0)


def _load_fused(module: Fused, state: dict, prefix: str, *_args: object) -> None:
    if f"{prefix}weight" not in state:
        return
    w = state.pop(f"{prefix}weight")
    w = w.T if module.conv1d else w
    sizes = [p.out_features for p in module.parts]
    for j, part in enumerate(w.split(sizes, 0)):
        state[f"{prefix}parts.{j}.weight"] = part.contiguous()
    b = state.pop(f"{prefix}bias", None)
    if b is not None:
        for j, part in enumerate(b.split(sizes, 0)):
            state[f"{prefix}parts.{j}.bias"] = part.contiguous()


def unfuse(parent: nn.Module, name: str, sizes: list[int], conv1d: bool = False) -> Fused:
    """Replace ``parent.<name>`` (a Linear, or a Conv1D with ``conv1d``) by a :class:`Fused` of
    Linears with output sizes ``sizes``, unless it already is one; returns the Fused module."""
    old = getattr(parent, name)
    if isinstance(old, Fused):
        return old
    weight = old.weight.T if conv1d else old.weight  # (out, in)
    bias = getattr(old, "bias", None)
    parts = []
    for j, w in enumerate(weight.split(sizes, 0)):
        lin = empty_linear(w.shape[1], w.shape[0], bias=bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
            if bias is not None:
                lin.bias.copy_(bias.split(sizes, 0)[j])
        parts.append(lin)
    fused = Fused(parts, conv1d=conv1d)
    fused.train(old.training)
    setattr(parent, name, fused)
    return fused
