"""BERT-family encoders (BERT, MiniLM, …): post-LayerNorm, GELU FFN, multi-head attention."""

from __future__ import annotations

from torch import nn

from statprune.adapters.base import Adapter
from statprune.adapters.registry import register_adapter


@register_adapter
class BertAdapter(Adapter):
    model_types = ("bert",)
    pre_norm = False
    gated_ffn = False
    causal = False

    def layers(self) -> nn.ModuleList:
        return self.model.base_model.encoder.layer

    def attention(self, i: int) -> nn.Module:
        return self.layers()[i].attention.self

    def qkv(self, i: int) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        a = self.attention(i)
        return a.query, a.key, a.value

    def out_proj(self, i: int) -> nn.Linear:
        return self.layers()[i].attention.output.dense

    def ffn_in(self, i: int) -> list[nn.Linear]:
        return [self.layers()[i].intermediate.dense]

    def down_proj(self, i: int) -> nn.Linear:
        return self.layers()[i].output.dense

    def _set_out_proj(self, i: int, linear: nn.Linear) -> None:
        self.layers()[i].attention.output.dense = linear

    def _set_down_proj(self, i: int, linear: nn.Linear) -> None:
        self.layers()[i].output.dense = linear

    def _set_qkv(self, i: int, q: nn.Linear, k: nn.Linear, v: nn.Linear) -> None:
        a = self.attention(i)
        a.query, a.key, a.value = q, k, v

    def _set_ffn_in(self, i: int, linears: list[nn.Linear]) -> None:
        (self.layers()[i].intermediate.dense,) = linears

    def _set_head_counts(self, i: int, num_heads: int, num_kv_heads: int) -> None:
        a = self.attention(i)
        a.num_attention_heads = num_heads
        a.all_head_size = num_heads * a.attention_head_size

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def head_dim(self) -> int:
        return self.attention(0).attention_head_size
