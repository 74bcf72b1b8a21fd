"""SliceGPT step 1: make the model rotation-invariant without changing its outputs.

* Untie the LM head from the token embedding (the embedding is rotated on its output side, the head
  on its input side, so they stop being the same matrix).
* Fold every RMSNorm scale γ into the linears that read the norm's output: W ← W·diag(γ); the norm
  keeps its stock class with weight = 1, which is exactly a weightless RMSNorm. Then
  RMSNorm(x Q) = RMSNorm(x) Q for any orthogonal Q (computational invariance).

Pre-norm decoders only; LayerNorm families would also need the mean subtraction baked into the
preceding projections, which no supported pre-norm family uses (Llama, Mistral, Qwen2 are RMSNorm).
"""

from __future__ import annotations

import torch
from torch import nn

from statprune.adapters import Adapter
from statprune.errors import StatpruneError


def check_applicable(adapter: Adapter) -> None:
    if not adapter.pre_norm:
        raise StatpruneError("slicegpt is not applicable: post-LayerNorm architecture")
    if adapter.lm_head() is None:
        raise StatpruneError("slicegpt needs a causal LM with an LM head (the head is rotated and sliced)")
    try:
        adapter.final_norm()
    except NotImplementedError:
        raise StatpruneError(
            f"slicegpt is not implemented for model type {adapter.config.model_type!r} (its adapter "
            "does not expose the pre-norm residual layout)"
        ) from None


@torch.no_grad()
def untie_head(adapter: Adapter) -> bool:
    """Give the LM head its own weight if it shares the embedding's; returns whether it did."""
    head, emb = adapter.lm_head(), adapter.embeddings()
    tied = head.weight is emb.weight or head.weight.data_ptr() == emb.weight.data_ptr()
    if tied:
        head.weight = nn.Parameter(emb.weight.detach().clone())
    adapter.config.tie_word_embeddings = False
    text_cfg = adapter.config.get_text_config() if hasattr(adapter.config, "get_text_config") else None
    if text_cfg is not None and text_cfg is not adapter.config and hasattr(text_cfg, "tie_word_embeddings"):
        text_cfg.tie_word_embeddings = False
    return tied


@torch.no_grad()
def _fold(norm: nn.Module, readers: list[nn.Linear]) -> None:
    w = getattr(norm, "weight", None)
    if w is None:
        return
    gamma = w.detach().double()
    if getattr(norm, "bias", None) is not None:
        raise StatpruneError("slicegpt: norms with a bias are not supported")
    for lin in readers:
        lin.weight.copy_((lin.weight.double() * gamma.to(lin.weight.device)[None, :]).to(lin.weight.dtype))
    w.fill_(1.0)


@torch.no_grad()
def fuse_norms(adapter: Adapter) -> None:
    """Fold each norm's scale into its readers (q/k/v, gate/up, LM head); norms become weightless."""
    for i in range(adapter.num_layers):
        _fold(adapter.input_norm(i), list(adapter.qkv(i)))
        _fold(adapter.post_attention_norm(i), adapter.ffn_in(i))
    _fold(adapter.final_norm(), [adapter.lm_head()])
