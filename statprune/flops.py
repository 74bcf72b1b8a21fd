"""One FLOPs/params model for every method and every report (METHODS.md §2, Kwon et al.).

FLOPs are counted as multiply-accumulates (one MAC = one FLOP, Kwon et al.'s ``mac.py`` convention)
of one sequence of ``s`` tokens. Per layer, with query heads H, head size d_h:

* every prunable linear (Q, K, V, O; up/gate, down; linears a method adds, e.g. SliceGPT's
  shortcuts) costs s·in·out, read from its actual shape — so GQA, pruned layers and a SliceGPT model
  with a smaller hidden size are all measured the same way;
* the attention core (scores QKᵀ and the weighted sum with V), per query head: bidirectional
  encoders 2·s²·d_h (as ``mac.py``); causal decoders (``Adapter.causal``) s(s+1)·d_h, i.e.
  2·d_h·s(s+1)/2 — only the lower triangle, what causal SDPA/flash kernels run.

Not counted: embeddings and the task/LM head (reported as params), norms, softmax, activations and
the SwiGLU product, RoPE, biases, residual adds. Records before 2026-12-01 counted decoders'
attention core as bidirectional (2·s²·d_h).

:data:`FLOPS_MODEL_VERSION` numbers this model; it enters every sweep record's fingerprint
(:mod:`statprune.sweep.fingerprint`), so a change here marks earlier records outdated.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from statprune.adapters import Adapter

# 1: every attention core 2·s²·d_h; 2 (2026-12-01): causal decoders s(s+1)·d_h. Bump on any change.
FLOPS_MODEL_VERSION = 2


@dataclass(frozen=True)
class UnitCosts:
    """Marginal FLOPs of one query head, one KV head and one neuron of a layer."""

    q_head: float
    kv_head: float
    neuron: float

    def group(self, group_size: int) -> float:
        """One GQA group: its query heads and its KV head."""
        return group_size * self.q_head + self.kv_head


def _linear_macs(lin: nn.Linear, s: float) -> float:
    return s * lin.in_features * lin.out_features


def attention_core_macs(adapter: Adapter, head_dim: int, seq_len: float) -> float:
    """Score and weighted-sum MACs of one query head: 2·s²·d_h, causal s(s+1)·d_h."""
    s = float(seq_len)
    return (s * (s + 1.0) if adapter.causal else 2.0 * s * s) * head_dim


def layer_flops(adapter: Adapter, i: int, seq_len: float) -> tuple[float, float]:
    """(attention, FFN) FLOPs of layer ``i`` for one sequence of ``seq_len`` tokens."""
    s = float(seq_len)
    shape = adapter.layer_shape(i)
    q, k, v = adapter.qkv(i)
    att = sum(_linear_macs(x, s) for x in (q, k, v, adapter.out_proj(i)))
    att += shape.num_heads * attention_core_macs(adapter, shape.head_dim, s)
    att += sum(_linear_macs(x, s) for x in adapter.extra_linears(i, "attention"))
    ffn = sum(_linear_macs(x, s) for x in [*adapter.ffn_in(i), adapter.down_proj(i)])
    ffn += sum(_linear_macs(x, s) for x in adapter.extra_linears(i, "ffn"))
    return att, ffn


def unit_costs(adapter: Adapter, i: int, seq_len: float) -> UnitCosts:
    """What removing one unit of layer ``i`` saves in :func:`layer_flops` (exactly)."""
    s = float(seq_len)
    hd = adapter.layer_shape(i).head_dim
    q, k, v = adapter.qkv(i)
    o = adapter.out_proj(i)
    q_head = s * hd * (q.in_features + o.out_features) + attention_core_macs(adapter, hd, s)
    kv_head = s * hd * (k.in_features + v.in_features)
    neuron = s * (sum(x.in_features for x in adapter.ffn_in(i)) + adapter.down_proj(i).out_features)
    return UnitCosts(q_head=q_head, kv_head=kv_head, neuron=neuron)


def prunable_flops(adapter: Adapter, seq_len: float) -> float:
    return sum(sum(layer_flops(adapter, i, seq_len)) for i in range(adapter.num_layers))


def prunable_params(adapter: Adapter) -> int:
    total = 0
    for i in range(adapter.num_layers):
        for part in ("attention", "ffn"):
            total += sum(p.numel() for lin in adapter.extra_linears(i, part) for p in lin.parameters())
        total += sum(p.numel() for lin in adapter.prunable_linears(i) for p in lin.parameters())
    return total


def total_params(model: nn.Module) -> int:
    """All distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@dataclass(frozen=True)
class CostReport:
    flops: float
    params_prunable: int
    params_total: int

    def to_dict(self) -> dict[str, float]:
        return {
            "flops": self.flops,
            "params_prunable": self.params_prunable,
            "params_total": self.params_total,
        }


def cost_report(adapter: Adapter, seq_len: float) -> CostReport:
    return CostReport(
        flops=prunable_flops(adapter, seq_len),
        params_prunable=prunable_params(adapter),
        params_total=total_params(adapter.model),
    )
