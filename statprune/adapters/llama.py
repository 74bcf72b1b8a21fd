"""Llama-family decoders (Llama, Mistral, Qwen2, Qwen3, SmolLM2): pre-RMSNorm, SwiGLU, RoPE, GQA.

RoPE is applied per head, so keeping whole heads (and their KV groups) is exact. The GQA group
size is cached in ``num_key_value_groups`` and is updated when heads are removed. Qwen3's q/k norms
act on each head's head_dim vector with weights shared by all heads, so removing heads leaves them as
they are.
"""

from __future__ import annotations

from torch import nn

from statprune.adapters.base import Adapter, add_zero_bias
from statprune.adapters.registry import register_adapter
from statprune.errors import StatpruneError


@register_adapter
class LlamaAdapter(Adapter):
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    pre_norm = True
    gated_ffn = True
    causal = True
    plain_residual = True

    def layers(self) -> nn.ModuleList:
        return self.model.base_model.layers

    def attention(self, i: int) -> nn.Module:
        return self.layers()[i].self_attn

    def qkv(self, i: int) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        a = self.attention(i)
        return a.q_proj, a.k_proj, a.v_proj

    def out_proj(self, i: int) -> nn.Linear:
        return self.attention(i).o_proj

    def ffn_in(self, i: int) -> list[nn.Linear]:
        mlp = self.layers()[i].mlp
        return [mlp.gate_proj, mlp.up_proj]

    def down_proj(self, i: int) -> nn.Linear:
        return self.layers()[i].mlp.down_proj

    def input_norm(self, i: int) -> nn.Module:
        return self.layers()[i].input_layernorm

    def post_attention_norm(self, i: int) -> nn.Module:
        return self.layers()[i].post_attention_layernorm

    def final_norm(self) -> nn.Module:
        return self.model.base_model.norm

    def ffn(self, i: int) -> nn.Module:
        return self.layers()[i].mlp

    def _set_out_proj(self, i: int, linear: nn.Linear) -> None:
        self.attention(i).o_proj = linear

    def _set_down_proj(self, i: int, linear: nn.Linear) -> None:
        self.layers()[i].mlp.down_proj = linear

    def _set_qkv(self, i: int, q: nn.Linear, k: nn.Linear, v: nn.Linear) -> None:
        a = self.attention(i)
        a.q_proj, a.k_proj, a.v_proj = q, k, v

    def _set_ffn_in(self, i: int, linears: list[nn.Linear]) -> None:
        mlp = self.layers()[i].mlp
        mlp.gate_proj, mlp.up_proj = linears

    def _set_head_counts(self, i: int, num_heads: int, num_kv_heads: int) -> None:
        self.attention(i).num_key_value_groups = num_heads // num_kv_heads

    def enable_biases(self, part: str) -> None:
        """Llama's ``attention_bias`` / ``mlp_bias`` switch biases on for q/k/v/o resp. gate/up/down;
        the ones a method does not use stay zero. Mistral and Qwen2 have no such switch for o/down."""
        flag = {"attention": "attention_bias", "ffn": "mlp_bias"}[part]
        if self.config.model_type != "llama":
            raise StatpruneError(
                f"{self.config.model_type}: the stock modules cannot hold a bias on the "
                f"{'output' if part == 'attention' else 'down'} projection (no config switch); "
                "run without bias compensation"
            )
        for i in range(self.num_layers):
            lins = (
                [*self.qkv(i), self.out_proj(i)]
                if part == "attention"
                else [*self.ffn_in(i), self.down_proj(i)]
            )
            for lin in lins:
                add_zero_bias(lin)
        setattr(self.config, flag, True)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def head_dim(self) -> int:
        return self.attention(0).head_dim
