"""DistilBERT encoders: post-LayerNorm, GELU FFN (``lin1``/``lin2``), multi-head attention."""

from __future__ import annotations

from torch import nn

from statprune.adapters.base import Adapter
from statprune.adapters.registry import register_adapter


@register_adapter
class DistilBertAdapter(Adapter):
    model_types = ("distilbert",)
    pre_norm = False
    gated_ffn = False
    causal = False

    def layers(self) -> nn.ModuleList:
        return self.model.base_model.transformer.layer

    def attention(self, i: int) -> nn.Module:
        return self.layers()[i].attention

    def qkv(self, i: int) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        a = self.attention(i)
        return a.q_lin, a.k_lin, a.v_lin

    def out_proj(self, i: int) -> nn.Linear:
        return self.attention(i).out_lin

    def ffn_in(self, i: int) -> list[nn.Linear]:
        return [self.layers()[i].ffn.lin1]

    def down_proj(self, i: int) -> nn.Linear:
        return self.layers()[i].ffn.lin2

    def _set_out_proj(self, i: int, linear: nn.Linear) -> None:
        self.attention(i).out_lin = linear

    def _set_down_proj(self, i: int, linear: nn.Linear) -> None:
        self.layers()[i].ffn.lin2 = linear

    def _set_qkv(self, i: int, q: nn.Linear, k: nn.Linear, v: nn.Linear) -> None:
        a = self.attention(i)
        a.q_lin, a.k_lin, a.v_lin = q, k, v

    def _set_ffn_in(self, i: int, linears: list[nn.Linear]) -> None:
        (self.layers()[i].ffn.lin1,) = linears

    def _set_head_counts(self, i: int, num_heads: int, num_kv_heads: int) -> None:
        self.attention(i).n_heads = num_heads

    @property
    def hidden_size(self) -> int:
        return self.config.dim

    @property
    def head_dim(self) -> int:
        return self.attention(0).attention_head_size
