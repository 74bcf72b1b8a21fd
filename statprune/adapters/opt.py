"""OPT decoders (the STAT release's models): LayerNorm (pre-norm unless ``do_layer_norm_before`` is
false, as in opt-350m), ReLU FFN ``fc1``/``fc2``, multi-head attention with biases.

The attention module reshapes with its own ``num_heads``, which is updated when heads are removed.
The decoder layer flattens (batch, tokens) before its FFN; ``fc1``/``fc2`` are wrapped (one-part
:class:`~statprune.adapters.fused.Fused`, stock state-dict keys) so that hooks on them see
(batch, tokens, features) like every other family: a pre-hook on the layer records the token shape.
LayerNorms with biases are not rotation-invariant, so SliceGPT (``hidden``) does not apply.
"""

from __future__ import annotations

from torch import nn

from statprune.adapters.base import Adapter
from statprune.adapters.fused import Fused, unfuse
from statprune.adapters.registry import register_adapter


def _record_token_shape(layer: nn.Module, args: tuple, kwargs: dict) -> None:
    h = args[0] if args else kwargs["hidden_states"]
    layer.fc1.token_shape = layer.fc2.token_shape = tuple(h.shape[:-1])


@register_adapter
class OPTAdapter(Adapter):
    model_types = ("opt",)
    gated_ffn = False
    causal = True
    prunable = frozenset({"heads", "neurons"})

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        for layer in self.layers():
            if isinstance(layer.fc1, Fused):
                continue
            unfuse(layer, "fc1", [layer.fc1.out_features])
            unfuse(layer, "fc2", [layer.fc2.out_features])
            layer.register_forward_pre_hook(_record_token_shape, with_kwargs=True)

    @property
    def pre_norm(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.config, "do_layer_norm_before", True))

    def layers(self) -> nn.ModuleList:
        return self.model.base_model.decoder.layers

    def attention(self, i: int) -> nn.Module:
        return self.layers()[i].self_attn

    def qkv(self, i: int) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        a = self.attention(i)
        return a.q_proj, a.k_proj, a.v_proj

    def out_proj(self, i: int) -> nn.Linear:
        return self.attention(i).out_proj

    def ffn_in(self, i: int) -> list[nn.Linear]:
        return [self.layers()[i].fc1.parts[0]]

    def down_proj(self, i: int) -> nn.Linear:
        return self.layers()[i].fc2.parts[0]

    def _set_out_proj(self, i: int, linear: nn.Linear) -> None:
        self.attention(i).out_proj = linear

    def _set_down_proj(self, i: int, linear: nn.Linear) -> None:
        self.layers()[i].fc2.parts[0] = linear

    def _set_qkv(self, i: int, q: nn.Linear, k: nn.Linear, v: nn.Linear) -> None:
        a = self.attention(i)
        a.q_proj, a.k_proj, a.v_proj = q, k, v

    def _set_ffn_in(self, i: int, linears: list[nn.Linear]) -> None:
        (self.layers()[i].fc1.parts[0],) = linears

    def _set_head_counts(self, i: int, num_heads: int, num_kv_heads: int) -> None:
        self.attention(i).num_heads = num_heads

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def head_dim(self) -> int:
        return self.attention(0).head_dim
