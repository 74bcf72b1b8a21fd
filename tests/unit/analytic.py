"""Closed-form MACs of a model from its recorded per-layer shapes, written independently of
``statprune.flops`` so tests can check what a method achieved without asking the code under test.

Per layer (s tokens, hidden d): Q and O 2·s·d·H·d_h, K and V 2·s·d·H_kv·d_h, attention core
2·s²·d_h per query head (encoders) or s(s+1)·d_h (causal decoders), FFN 2·s·d·d_ff (3 with SwiGLU).
"""

from __future__ import annotations

from statprune.adapters import LayerShape

# family -> (causal, gated FFN), for the families of tests/unit/tiny.py
KINDS = {
    "bert": (False, False),
    "distilbert": (False, False),
    "llama": (True, True),
    "llama-gqa": (True, True),
    "opt": (True, False),
    "gpt2": (True, False),
    "qwen3": (True, True),
    "phi3": (True, True),
    "gemma2": (True, True),
    "gemma3": (True, True),
}


def layer_macs(shape: LayerShape, d: int, s: float, family: str) -> float:
    causal, gated = KINDS[family]
    hd = shape.head_dim
    core = s * (s + 1) if causal else 2 * s * s
    return (
        2 * s * d * shape.num_heads * hd
        + 2 * s * d * shape.num_kv_heads * hd
        + shape.num_heads * hd * core
        + (3 if gated else 2) * s * d * shape.intermediate
    )


def model_macs(shapes: list[LayerShape], d: int, s: float, family: str) -> float:
    return sum(layer_macs(sh, d, s, family) for sh in shapes)


def largest_unit(shape: LayerShape, d: int, s: float, family: str, neuron_multiple: int = 1) -> float:
    """MACs of the largest removable unit: a KV group with its query heads, one query head of every
    group, or ``neuron_multiple`` neurons."""
    causal, gated = KINDS[family]
    hd, g = shape.head_dim, shape.group_size
    core = s * (s + 1) if causal else 2 * s * s
    q_head = 2 * s * d * hd + hd * core
    group = g * q_head + 2 * s * d * hd
    return max(group, shape.num_kv_heads * q_head, neuron_multiple * (3 if gated else 2) * s * d)
