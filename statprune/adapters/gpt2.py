"""GPT-2 decoders: pre-LayerNorm, GELU FFN, multi-head attention, tied embeddings.

GPT-2 stores its projections as ``Conv1D`` (weight in × out, the transpose of a Linear's) and q/k/v
fused in one ``c_attn``. The adapter turns each into a :class:`~statprune.adapters.fused.Fused` of
plain Linears on first use (outputs identical; the state dict keeps GPT-2's layout and key names),
so every method sees ordinary q/k/v/out/fc/proj Linears. The attention splits ``c_attn``'s output
at ``split_size`` and reshapes by ``head_dim``; ``split_size`` follows the kept heads.
"""

from __future__ import annotations

from torch import nn

from statprune.adapters.base import Adapter
from statprune.adapters.fused import Fused, unfuse
from statprune.adapters.registry import register_adapter


@register_adapter
class GPT2Adapter(Adapter):
    model_types = ("gpt2",)
    pre_norm = True
    gated_ffn = False
    causal = True
    prunable = frozenset({"heads", "neurons"})  # LayerNorm with bias: no SliceGPT

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        for block in self.layers():
            a, mlp = block.attn, block.mlp
            if not isinstance(a.c_attn, Fused):
                unfuse(a, "c_attn", [a.split_size] * 3, conv1d=True)
            for parent, name in ((a, "c_proj"), (mlp, "c_fc"), (mlp, "c_proj")):
                mod = getattr(parent, name)
                if not isinstance(mod, Fused):
                    unfuse(parent, name, [mod.weight.shape[1]], conv1d=True)

    def layers(self) -> nn.ModuleList:
        return self.model.base_model.h

    def attention(self, i: int) -> nn.Module:
        return self.layers()[i].attn

    def qkv(self, i: int) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        q, k, v = self.attention(i).c_attn.parts
        return q, k, v

    def out_proj(self, i: int) -> nn.Linear:
        return self.attention(i).c_proj.parts[0]

    def ffn_in(self, i: int) -> list[nn.Linear]:
        return [self.layers()[i].mlp.c_fc.parts[0]]

    def down_proj(self, i: int) -> nn.Linear:
        return self.layers()[i].mlp.c_proj.parts[0]

    def _set_out_proj(self, i: int, linear: nn.Linear) -> None:
        self.attention(i).c_proj.parts[0] = linear

    def _set_down_proj(self, i: int, linear: nn.Linear) -> None:
        self.layers()[i].mlp.c_proj.parts[0] = linear

    def _set_qkv(self, i: int, q: nn.Linear, k: nn.Linear, v: nn.Linear) -> None:
        self.attention(i).c_attn.parts = nn.ModuleList([q, k, v])

    def _set_ffn_in(self, i: int, linears: list[nn.Linear]) -> None:
        (self.layers()[i].mlp.c_fc.parts[0],) = linears

    def _set_head_counts(self, i: int, num_heads: int, num_kv_heads: int) -> None:
        a = self.attention(i)
        a.num_heads = num_heads
        a.split_size = num_heads * a.head_dim

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def head_dim(self) -> int:
        return self.attention(0).head_dim
