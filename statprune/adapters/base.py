"""The adapter seam: the only code that knows a model family's module names.

Algorithms (STAT, baselines, calibration, the FLOPs model) see a model through these hook points:
per layer, the attention head-output point (input of the output projection, tokens × heads·head_dim)
and the FFN neuron point (input of the down projection, tokens × d_ff), the linears that produce and
consume them, and structural operations that make the model physically smaller. After pruning the
model still runs through the stock transformers modules; per-layer shapes are recorded so that a
checkpoint can be rebuilt (:mod:`statprune.models.checkpoint`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import torch
from torch import nn

from statprune.errors import StatpruneError

CAPABILITIES = frozenset({"heads", "neurons", "hidden"})


@dataclass(frozen=True)
class LayerShape:
    """What one transformer layer currently holds; ``num_heads`` counts query heads."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def empty_linear(
    in_features: int, out_features: int, *, bias: bool, device: torch.device, dtype: torch.dtype
) -> nn.Linear:
    """An uninitialised Linear (every entry is copied in by the caller).

    Skipping the default init matters at scale: a CPU kaiming init of one 4096 × 11008 layer takes
    ~0.2 s, ~1 min over a 7B model's pruned linears. The module is assembled directly rather than
    by ``nn.utils.skip_init``, whose init on the meta device still costs ~0.7 ms of host time a
    Linear (96 of them in a BERT-base prune; docs/BENCHMARKS.md §3f).
    """
    new = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(new)
    new.in_features, new.out_features = in_features, out_features
    new.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
    b = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
    new.register_parameter("bias", b)
    return new


def _empty_linear(in_features: int, out_features: int, like: nn.Linear) -> nn.Linear:
    """:func:`empty_linear` on ``like``'s device and dtype, with a bias when it has one."""
    w = like.weight
    return empty_linear(in_features, out_features, bias=like.bias is not None, device=w.device, dtype=w.dtype)


def _select_rows(linear: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    """A new Linear keeping output rows ``idx`` (and their bias)."""
    idx = idx.to(linear.weight.device)
    new = _empty_linear(linear.in_features, len(idx), linear)
    with torch.no_grad():
        new.weight.copy_(linear.weight.index_select(0, idx))
        if linear.bias is not None:
            new.bias.copy_(linear.bias.index_select(0, idx))
    return new


def _with_weight(linear: nn.Linear, weight: torch.Tensor) -> nn.Linear:
    """A new Linear with the given (out × in) weight, keeping the old bias (output side is unchanged)."""
    new = _empty_linear(weight.shape[1], weight.shape[0], linear)
    with torch.no_grad():
        new.weight.copy_(weight.to(new.weight.dtype))
        if linear.bias is not None:
            new.bias.copy_(linear.bias)
    return new


def add_zero_bias(linear: nn.Linear) -> None:
    """Give ``linear`` a zero bias in place (nothing changes when it already has one)."""
    if linear.bias is None:
        w = linear.weight
        linear.bias = nn.Parameter(torch.zeros(linear.out_features, device=w.device, dtype=w.dtype))


def head_dims(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Feature indices (in a heads·head_dim layout) of the given heads, in the given order."""
    heads = torch.as_tensor(heads, dtype=torch.long)
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


class Adapter(ABC):
    """Hook points and structural operations of one architecture family.

    Subclasses set ``model_types`` (values of ``config.model_type``) and implement the module
    accessors; everything structural is written once here in terms of those accessors.
    ``prunable`` says which structures can be removed: ``heads`` (attention heads), ``neurons``
    (FFN neurons), ``hidden`` (the residual width, SliceGPT). An architecture with per-head state
    shared across layers (e.g. a relative-position bias computed once) leaves out ``heads``.
    """

    model_types: tuple[str, ...] = ()
    pre_norm: bool = True
    # layer(x) = m + ffn(post_attention_norm(m)), m = x + out_proj(z), ffn's output = down_proj's
    # (no norm, scale or dropout after either projection in eval mode): a walk may then finish a
    # layer from recorded projection inputs (statprune.calibration.LayerReplay)
    plain_residual: bool = False
    gated_ffn: bool = False
    prunable: frozenset[str] = CAPABILITIES

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.config = model.config

    # --- accessors (family specific) -------------------------------------------------
    @abstractmethod
    def layers(self) -> nn.ModuleList: ...

    @abstractmethod
    def attention(self, i: int) -> nn.Module:
        """The attention module holding the q/k/v/o linears."""

    @abstractmethod
    def qkv(self, i: int) -> tuple[nn.Linear, nn.Linear, nn.Linear]: ...

    @abstractmethod
    def out_proj(self, i: int) -> nn.Linear:
        """Consumer of the head outputs; its input is the head-output hook point."""

    @abstractmethod
    def ffn_in(self, i: int) -> list[nn.Linear]:
        """Producers of the neurons (``[up]`` or ``[gate, up]``): rows are neurons."""

    @abstractmethod
    def down_proj(self, i: int) -> nn.Linear:
        """Consumer of the neurons; its input is the neuron hook point."""

    @abstractmethod
    def _set_out_proj(self, i: int, linear: nn.Linear) -> None: ...

    @abstractmethod
    def _set_down_proj(self, i: int, linear: nn.Linear) -> None: ...

    @abstractmethod
    def _set_qkv(self, i: int, q: nn.Linear, k: nn.Linear, v: nn.Linear) -> None: ...

    @abstractmethod
    def _set_ffn_in(self, i: int, linears: list[nn.Linear]) -> None: ...

    @abstractmethod
    def _set_head_counts(self, i: int, num_heads: int, num_kv_heads: int) -> None:
        """Update module attributes that cache head counts (e.g. GQA group size)."""

    @property
    @abstractmethod
    def hidden_size(self) -> int: ...

    @property
    @abstractmethod
    def head_dim(self) -> int: ...

    # --- residual layout of pre-norm families (SliceGPT); others raise NotImplementedError ---
    def input_norm(self, i: int) -> nn.Module:
        """The norm in front of layer ``i``'s attention (pre-norm families)."""
        raise NotImplementedError(f"{type(self).__name__} has no pre-attention norm")

    def post_attention_norm(self, i: int) -> nn.Module:
        """The norm in front of layer ``i``'s FFN; its input is the residual after attention."""
        raise NotImplementedError(f"{type(self).__name__} has no pre-FFN norm")

    def final_norm(self) -> nn.Module:
        """The norm after the last layer, in front of the LM head."""
        raise NotImplementedError(f"{type(self).__name__} has no final norm")

    def ffn(self, i: int) -> nn.Module:
        """The FFN module of layer ``i``, whose output is added to the residual stream."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its FFN module")

    def embeddings(self) -> nn.Embedding:
        """The token embedding (transformers' generic accessor)."""
        return self.model.get_input_embeddings()

    def lm_head(self) -> nn.Linear | None:
        """The output projection to the vocabulary, or None (encoders, classification heads)."""
        return self.model.get_output_embeddings()

    # --- generic ---------------------------------------------------------------------
    def require(self, *capabilities: str, method: str = "this method") -> None:
        """Refuse (one-line :class:`StatpruneError`) when the architecture cannot prune what is asked."""
        unknown = set(capabilities) - CAPABILITIES
        if unknown:
            raise ValueError(f"unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITIES)}")
        missing = [c for c in capabilities if c not in self.prunable]
        if missing:
            raise StatpruneError(
                f"{method}: cannot remove {' or '.join(missing)} from model type {self.config.model_type!r}; "
                f"its adapter ({type(self).__name__}) declares prunable: {', '.join(sorted(self.prunable)) or 'none'}"
            )

    @property
    def causal(self) -> bool:
        """Tokens attend to earlier tokens only (decoders): the FLOPs model counts half the attention core.

        Families set it as a class attribute; this fallback asks transformers' causal-LM mapping.
        """
        from statprune.models.load import is_decoder

        return is_decoder(self.config)

    @property
    def num_layers(self) -> int:
        return len(self.layers())

    def layer_shape(self, i: int) -> LayerShape:
        q, k, _ = self.qkv(i)
        hd = self.head_dim
        return LayerShape(
            num_heads=q.out_features // hd,
            num_kv_heads=k.out_features // hd,
            head_dim=hd,
            intermediate=self.down_proj(i).in_features,
        )

    def shapes(self) -> list[LayerShape]:
        return [self.layer_shape(i) for i in range(self.num_layers)]

    def keep_heads(self, i: int, heads: torch.Tensor) -> None:
        """Keep query heads ``heads`` of layer ``i`` (sorted), with the KV heads they use.

        GQA: the kept heads must form the same number per KV group, so the layer stays a stock
        grouped-query layer; KV groups with no kept head are dropped.
        """
        shape = self.layer_shape(i)
        heads = torch.as_tensor(heads, dtype=torch.long).sort().values
        if len(heads) != shape.num_heads:
            self.require("heads", method=f"layer {i}")
        g = shape.group_size
        groups, counts = torch.unique(heads // g, return_counts=True)
        if len(counts) and not bool((counts == counts[0]).all()):
            raise ValueError(
                f"layer {i}: kept heads must be uniform across KV groups, got counts {counts.tolist()}"
            )
        q, k, v = self.qkv(i)
        hd = shape.head_dim
        q_new = _select_rows(q, head_dims(heads, hd))
        kv_idx = head_dims(groups, hd)
        self._set_qkv(i, q_new, _select_rows(k, kv_idx), _select_rows(v, kv_idx))
        o = self.out_proj(i)
        self._set_out_proj(i, _with_weight(o, o.weight[:, head_dims(heads, hd).to(o.weight.device)]))
        self._set_head_counts(i, len(heads), len(groups))

    def keep_neurons(self, i: int, neurons: torch.Tensor) -> None:
        """Keep FFN neurons ``neurons`` of layer ``i`` (producer rows and consumer columns)."""
        neurons = torch.as_tensor(neurons, dtype=torch.long).sort().values
        if len(neurons) != self.layer_shape(i).intermediate:
            self.require("neurons", method=f"layer {i}")
        self._set_ffn_in(i, [_select_rows(lin, neurons) for lin in self.ffn_in(i)])
        d = self.down_proj(i)
        self._set_down_proj(i, _with_weight(d, d.weight[:, neurons.to(d.weight.device)]))

    def replace_out_proj(self, i: int, weight: torch.Tensor) -> None:
        """Set the output projection's weight (hidden × kept head dims); the bias is unchanged."""
        self._set_out_proj(i, _with_weight(self.out_proj(i), weight))

    def replace_down_proj(self, i: int, weight: torch.Tensor) -> None:
        """Set the down projection's weight (hidden × kept neurons); the bias is unchanged."""
        self._set_down_proj(i, _with_weight(self.down_proj(i), weight))

    def add_output_bias(self, i: int, part: str, delta: torch.Tensor) -> None:
        """Add ``delta`` to the bias of layer ``i``'s output projection (``part="attention"``) or down
        projection (``"ffn"``), e.g. FLAP's compensation of removed inputs by their mean. A family
        whose stock modules have no such bias gets zero biases first (:meth:`enable_biases`)."""
        lin = self.out_proj(i) if part == "attention" else self.down_proj(i)
        if lin.bias is None:
            self.enable_biases(part)
            lin = self.out_proj(i) if part == "attention" else self.down_proj(i)
        with torch.no_grad():
            lin.bias.add_(delta.to(device=lin.bias.device, dtype=lin.bias.dtype))

    def enable_biases(self, part: str) -> None:
        """Give the ``part`` ("attention" | "ffn") linears of every layer a bias, the way the family's
        config switches them on, so a stock model rebuilt from the saved config has the same tensors.
        Families whose linears always have biases (BERT, DistilBERT) never get here."""
        raise NotImplementedError(f"{type(self).__name__}: stock {part} modules have no bias to add")

    def set_shapes(self, shapes: list[LayerShape]) -> None:
        """Resize a freshly built model to per-layer ``shapes`` (weights are loaded afterwards)."""
        for i, s in enumerate(shapes):
            cur = self.layer_shape(i)
            if (s.num_heads, s.num_kv_heads) != (cur.num_heads, cur.num_kv_heads):
                g_new = s.num_heads // s.num_kv_heads
                heads = torch.cat(
                    [torch.arange(g_new) + grp * cur.group_size for grp in range(s.num_kv_heads)]
                )
                self.keep_heads(i, heads)
            if s.intermediate != cur.intermediate:
                self.keep_neurons(i, torch.arange(s.intermediate))

    def prunable_linears(self, i: int) -> list[nn.Linear]:
        return [*self.qkv(i), self.out_proj(i), *self.ffn_in(i), self.down_proj(i)]

    def extra_linears(self, i: int, part: str) -> list[nn.Linear]:
        """Linears a method added to a block (e.g. SliceGPT's residual shortcuts), for the FLOPs model."""
        return list(getattr(self.layers()[i], "statprune_extra", {}).get(part, []))

    @property
    def dtype(self) -> torch.dtype:
        return self.out_proj(0).weight.dtype

    @property
    def device(self) -> torch.device:
        return self.out_proj(0).weight.device
