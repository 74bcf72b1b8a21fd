"""Gemma-2 and Gemma-3 (text) decoders: Llama-like module names (q/k/v/o, gate/up/down, GQA).

What differs is outside the pruned linears and needs nothing here: RMSNorms scale by (1 + w),
embeddings are multiplied by √hidden, attention logits may be soft-capped, Gemma-3 normalises q and
k per head_dim (weights shared by all heads). The attention output and the FFN output each pass
through their own norm (``post_attention_layernorm``, ``post_feedforward_layernorm``) before the
residual add, so the residual stream is not that of a plain pre-norm model: the pre-norm residual
accessors (SliceGPT) raise and ``hidden`` is not prunable.
"""

from __future__ import annotations

from torch import nn

from statprune.adapters.llama import LlamaAdapter
from statprune.adapters.registry import register_adapter


@register_adapter
class GemmaAdapter(LlamaAdapter):
    model_types = ("gemma2", "gemma3_text")
    causal = True
    plain_residual = False  # attention and FFN outputs pass through their own norms first
    prunable = frozenset({"heads", "neurons"})

    def _no_plain_residual(self) -> nn.Module:
        raise NotImplementedError(
            f"{self.config.model_type}: norms after attention and FFN (no plain pre-norm residual)"
        )

    def input_norm(self, i: int) -> nn.Module:
        return self._no_plain_residual()

    def post_attention_norm(self, i: int) -> nn.Module:
        return self._no_plain_residual()

    def final_norm(self) -> nn.Module:
        return self._no_plain_residual()

    def ffn(self, i: int) -> nn.Module:
        return self._no_plain_residual()
