"""Phi-3 decoders: Llama-like (pre-RMSNorm, SwiGLU, RoPE, GQA) with fused ``qkv_proj`` and
``gate_up_proj``.

The fused projections become :class:`~statprune.adapters.fused.Fused` parts on first use (q, k, v;
gate, up), so heads and neurons are pruned on separate Linears and the stock forward still slices
one concatenated output; the state dict keeps Phi-3's fused layout. Phi3Attention finds the end of
the query block from ``config.num_attention_heads``, which is shared by all layers: each attention
module whose heads were pruned gets a :class:`LayerConfig` view with its own head count.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from statprune.adapters.fused import Fused, unfuse
from statprune.adapters.llama import LlamaAdapter
from statprune.adapters.registry import register_adapter


class LayerConfig:
    """The model config with some attributes overridden for one module (everything else shared)."""

    def __init__(self, base: Any, **overrides: Any) -> None:
        self.__dict__.update(overrides, _base=base)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.__dict__["_base"], name)


@register_adapter
class Phi3Adapter(LlamaAdapter):
    model_types = ("phi3",)
    causal = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        for layer in self.layers():
            a, mlp = layer.self_attn, layer.mlp
            if not isinstance(a.qkv_proj, Fused):
                kv = a.num_key_value_heads * a.head_dim
                unfuse(a, "qkv_proj", [a.qkv_proj.out_features - 2 * kv, kv, kv])
            if not isinstance(mlp.gate_up_proj, Fused):
                half = mlp.gate_up_proj.out_features // 2
                unfuse(mlp, "gate_up_proj", [half, half])

    def qkv(self, i: int) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        q, k, v = self.attention(i).qkv_proj.parts
        return q, k, v

    def ffn_in(self, i: int) -> list[nn.Linear]:
        return list(self.layers()[i].mlp.gate_up_proj.parts)

    def _set_qkv(self, i: int, q: nn.Linear, k: nn.Linear, v: nn.Linear) -> None:
        self.attention(i).qkv_proj.parts = nn.ModuleList([q, k, v])

    def _set_ffn_in(self, i: int, linears: list[nn.Linear]) -> None:
        self.layers()[i].mlp.gate_up_proj.parts = nn.ModuleList(linears)

    def _set_head_counts(self, i: int, num_heads: int, num_kv_heads: int) -> None:
        a = self.attention(i)
        a.num_key_value_heads = num_kv_heads
        a.num_key_value_groups = num_heads // num_kv_heads
        a.config = LayerConfig(self.config, num_attention_heads=num_heads)
