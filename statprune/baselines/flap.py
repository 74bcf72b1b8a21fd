"""FLAP (An et al., AAAI 2024): fluctuation-based adaptive structured pruning with bias compensation.

Per layer, for each input channel j of the output projection W_O (head-output hook point) and of the
down projection W_down (neuron hook point), over the real calibration tokens of the *dense* model:

* ``WIFV`` (default) = Var[x_j] · ‖W[:, j]‖² — how much the channel's contribution to the block
  output fluctuates around its mean; ``IFV`` = Var[x_j]; ``WIFN`` = mean_i |W_ij| · √E[x_j²].
* Attention channels use the metric *squared* (as released). Every (layer, block type) is
  standardised, (m − mean) / std (unbiased std), so heads and neurons of all layers share one scale;
  a head unit scores the mean of its channels' standardised metrics (a KV group under GQA: the mean
  over its query heads' channels), a neuron its own.
* ``structure`` picks the allocation: ``AL-AM`` (default, as released) removes units globally in
  ascending standardised score until the FLOPs target is met, each unit costing its FLOPs;
  ``AL-MM`` does that separately for heads (``remove_heads`` units, or with −1 the target fraction
  of the attention FLOPs) and neurons (the rest of the budget); ``UL-UM`` removes ⌊p · units⌋ head
  units from every layer and spreads the rest of the budget uniformly over the FFNs; ``UL-MM`` the
  same with ``remove_heads // L`` head units per layer.
* Removed heads (whole KV groups) and neurons go; with ``bias=true`` the mean of every removed input
  is folded into the consumer's bias, b += W[:, removed] · mean[removed], so the block output keeps
  its expectation (exact for a removed input that is constant over tokens). Llama's o_proj/down_proj
  have no bias: the config's ``attention_bias`` / ``mlp_bias`` switch one on (zero biases on the
  q/k/v resp. gate/up linears), so the pruned model saves and reloads as a stock model.

Differences from the official code (github.com/CASIA-IVA-Lab/FLAP, ``lib/prune.py``,
``lib/layerwrapper.py``), all deliberate:

1. Statistics: exact mean and population variance over all real (non-padding) tokens, in float64.
   The released streaming update drops the first sample's fluctuation and, because
   ``old_baseline_inp`` aliases the running mean it then updates in place, uses deviations from the
   updated running mean; its per-layer scale cancels in the standardisation, the rest is an
   approximation we do not reproduce. The mean is kept in float64 (released: float16).
2. Calibration: the run's calibration draw (the task's data, padding excluded), not WikiText-2
   1024 × 128 tokens. As released, all statistics come from the dense model in one walk (the layer
   outputs that feed the next layer are the unpruned ones) and compression happens afterwards.
3. Budget: the shared FLOPs model, met within one unit (one ``neuron_multiple`` group after
   rounding), instead of parameter counts. ``AL-AM`` released: the threshold whose kept parameter
   count is nearest (argmin |·|) to (1 − p) of the total, each head weighted 512/3 neurons (the
   Llama-7B head/neuron parameter ratio); here: ascending order until the removed FLOPs reach the
   target, each unit weighted by its FLOPs. ``UL-UM`` released removes ⌊p · d_ff⌋ neurons per layer;
   here the FFNs take whatever the floored head counts leave of the FLOPs target (with GQA's few KV
   groups per layer ⌊p · groups⌋ is often 0), uniformly (counts differ by at most one group, the
   extra groups go to layers spread evenly over depth). In the MM structures ``remove_heads=-1``
   (the value the released scripts pass to UL-UM/AL-AM, which ignore it; released default 8) gives
   attention the target fraction of its own FLOPs; released MM needs an explicit count and sizes
   the FFN removal from parameter counts (``cal_remove_neuron``).
4. GQA: whole KV groups are the head units (released: multi-head Llama only, head_dim 128 fixed).
5. Every layer keeps at least one head unit and ``neuron_multiple`` neurons (released AL-AM can
   empty a layer's attention); kept neuron counts are multiples of ``neuron_multiple`` (default 8,
   :func:`statprune.allocation.round_neurons`; released: no rounding).
6. Ties: stable order (released: ``metric > threshold`` removes every unit tied at the threshold).
7. Bias: added to an existing bias (BERT, DistilBERT) instead of replacing it; Llama gets its biases
   through the config switches (released: a modified modeling_llama with o_proj/down_proj biases).
8. Families: every adapter family, encoders included (no labels needed; released: Llama only).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from statprune.adapters import Adapter
from statprune.allocation import BlockCurve, round_neurons, threshold_fill
from statprune.calibration import Calibration, LayerWalk, real_rows
from statprune.errors import StatpruneError
from statprune.flops import layer_flops, unit_costs
from statprune.pruner import MethodOutput, Target, register_method

KINDS = ("heads", "neurons")


@dataclass(frozen=True)
class FlapOptions:
    metric: Literal["WIFV", "IFV", "WIFN"] = "WIFV"
    structure: Literal["AL-AM", "AL-MM", "UL-UM", "UL-MM"] = "AL-AM"
    remove_heads: int = -1  # MM structures: head units removed in the whole model (-1: FLOPs share)
    bias: bool = True
    neuron_multiple: int = 8
    progress: bool = True

    def __post_init__(self) -> None:
        if self.neuron_multiple < 1:
            raise StatpruneError(f"neuron_multiple must be at least 1, got {self.neuron_multiple}")


class ChannelStats:
    """Per-channel count, mean, variance and Σx² of a hook point's input over real tokens (float64).

    Sums are taken around the first batch's mean, so the variance does not cancel catastrophically.
    """

    def __init__(self) -> None:
        self.n = 0
        self.shift: torch.Tensor | None = None
        self.s1: torch.Tensor | None = None
        self.s2: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, chunk_rows: int = 8192) -> None:
        rows = real_rows(x, mask)
        if self.shift is None:
            self.shift = (
                rows.double().mean(0) if len(rows) else rows.new_zeros(rows.shape[1], dtype=torch.float64)
            )
            self.s1 = torch.zeros_like(self.shift)
            self.s2 = torch.zeros_like(self.shift)
        for s in range(0, rows.shape[0], chunk_rows):  # float64 copies of a few rows at a time
            d = rows[s : s + chunk_rows].double() - self.shift
            self.s1 += d.sum(0)
            self.s2 += d.pow(2).sum(0)
        self.n += rows.shape[0]

    def _check(self) -> None:
        if self.shift is None or self.n == 0:
            raise StatpruneError("no calibration tokens reached this hook point")

    @property
    def mean(self) -> torch.Tensor:
        self._check()
        return self.shift + self.s1 / self.n

    @property
    def var(self) -> torch.Tensor:
        self._check()
        return (self.s2 / self.n - (self.s1 / self.n) ** 2).clamp_min(0.0)

    @property
    def sumsq(self) -> torch.Tensor:
        """Σ_t x_tj² (= n · E[x_j²])."""
        self._check()
        return self.s2 + 2.0 * self.shift * self.s1 + self.n * self.shift**2


def collect_stats(
    walk: LayerWalk, adapter: Adapter, i: int, keep_outputs: bool = True
) -> tuple[ChannelStats, ChannelStats, list]:
    """Run layer ``i`` once; statistics of the head-output and neuron hook points, and its outputs."""
    heads, neurons = ChannelStats(), ChannelStats()
    hooks = {adapter.out_proj(i): heads, adapter.down_proj(i): neurons}
    outs = walk.run(i, hooks, keep_outputs=keep_outputs)
    return heads, neurons, outs


def fluctuation(stats: ChannelStats, weight: torch.Tensor, metric: str) -> torch.Tensor:
    """FLAP's per-input-channel metric of the consumer ``weight`` (out × in), float64 on the CPU."""
    w = weight.detach().double()
    if metric == "IFV":
        m = stats.var
    elif metric == "WIFV":
        m = stats.var * w.pow(2).sum(0)
    elif metric == "WIFN":
        m = (w.abs() * (stats.sumsq / stats.n).sqrt()[None, :]).mean(0)
    else:
        raise StatpruneError(f"unknown FLAP metric {metric!r}")
    return m.cpu()


def standardise(m: torch.Tensor) -> torch.Tensor:
    """(m − mean) / std over one (layer, block type); a constant block scores 0 everywhere."""
    centred = m - m.mean()
    std = float(m.std()) if m.numel() > 1 else 0.0
    return centred / std if std > 0 and math.isfinite(std) else centred


def head_unit_channels(adapter: Adapter, i: int) -> int:
    """Channels per head unit: a KV group's query heads (one head without GQA)."""
    s = adapter.layer_shape(i)
    return s.group_size * s.head_dim


def layer_scores(adapter: Adapter, i: int, h: ChannelStats, n: ChannelStats, metric: str) -> dict:
    """Standardised FLAP scores of layer ``i``'s head units and neurons."""
    att = standardise(fluctuation(h, adapter.out_proj(i).weight, metric) ** 2)
    ffn = standardise(fluctuation(n, adapter.down_proj(i).weight, metric))
    return {"heads": att.reshape(-1, head_unit_channels(adapter, i)).mean(1), "neurons": ffn}


# --- allocation (shared with Wanda-sp) ---------------------------------------------------------


@dataclass
class Block:
    """One layer's heads or neurons: unit scores and the FLOPs one unit costs."""

    layer: int
    kind: str
    scores: torch.Tensor | None
    n_units: int
    unit_flops: float
    min_units: int

    @property
    def removal_order(self) -> torch.Tensor:
        assert self.scores is not None
        return torch.argsort(self.scores, stable=True)

    def curve(self) -> BlockCurve:
        """errors[c] = summed score of the units removed when keeping the c best (for rounding)."""
        assert self.scores is not None
        removed = torch.cat(
            [torch.zeros(1, dtype=torch.float64), self.scores.double()[self.removal_order].cumsum(0)]
        )
        return BlockCurve(self.layer, self.kind, removed.flip(0), self.unit_flops, min_units=self.min_units)


def make_blocks(adapter: Adapter, target: Target, multiple: int, scores: dict | None = None) -> list[Block]:
    blocks = []
    for i in range(adapter.num_layers):
        shape = adapter.layer_shape(i)
        costs = unit_costs(adapter, i, target.seq_len)
        n_units = {"heads": shape.num_kv_heads, "neurons": shape.intermediate}
        flops = {"heads": costs.group(shape.group_size), "neurons": costs.neuron}
        mins = {"heads": 1, "neurons": min(multiple, shape.intermediate)}
        for kind in KINDS:
            s = None if scores is None else scores[(i, kind)]
            blocks.append(Block(i, kind, s, n_units[kind], flops[kind], mins[kind]))
    return blocks


def _fill(blocks: list[Block], budget: float, unit_cost: bool = False) -> dict:
    """Removed units per block: ascending score over all ``blocks`` until ``budget`` (FLOPs or units)."""
    removed = threshold_fill(
        [b.scores[b.removal_order] for b in blocks],
        [1.0 if unit_cost else b.unit_flops for b in blocks],
        [b.min_units for b in blocks],
        budget,
    )
    return {(b.layer, b.kind): r for b, r in zip(blocks, removed)}


def spread_order(n: int) -> list[int]:
    """0…n−1 such that every prefix is spread evenly (van der Corput radical inverse)."""
    out: list[int] = []
    seen: set[int] = set()
    k = 0
    while len(out) < n:
        v, f, kk = 0.0, 0.5, k
        while kk:
            v += f * (kk & 1)
            kk >>= 1
            f /= 2
        k += 1
        j = min(int(v * n), n - 1)
        if j not in seen:
            seen.add(j)
            out.append(j)
    return out


def _ladder(n: int, multiple: int, min_units: int) -> list[int]:
    """Allowed kept neuron counts, from n down: multiples of ``multiple`` no smaller than ``min_units``."""
    lower = [k * multiple for k in range((n - 1) // multiple, 0, -1) if k * multiple >= min_units]
    return [n, *lower]


def uniform_fill(blocks: list[Block], budget: float, multiple: int) -> dict:
    """Kept neurons per FFN block: one ladder step from every block per round (blocks in
    :func:`spread_order`) until ``budget`` FLOPs are removed, so counts differ by at most one group."""
    ladders = [_ladder(b.n_units, multiple, b.min_units) for b in blocks]
    pos = [0] * len(blocks)
    removed = 0.0
    order = spread_order(len(blocks))
    while removed < budget:
        moved = False
        for b in order:
            if pos[b] + 1 < len(ladders[b]):
                removed += (ladders[b][pos[b]] - ladders[b][pos[b] + 1]) * blocks[b].unit_flops
                pos[b] += 1
                moved = True
                if removed >= budget:
                    break
        if not moved:
            break
    return {(b.layer, b.kind): ladders[k][pos[k]] for k, b in enumerate(blocks)}


def allocate(
    adapter: Adapter, blocks: list[Block], target: Target, structure: str, remove_heads: int, multiple: int
) -> dict[tuple[int, str], int]:
    """Kept units per (layer, kind) under the FLOPs target, by one of FLAP's four structures."""
    heads = [b for b in blocks if b.kind == "heads"]
    ffns = [b for b in blocks if b.kind == "neurons"]
    kept = {(b.layer, b.kind): b.n_units for b in blocks}
    to_remove = target.flops_to_remove
    if structure.startswith("UL"):
        L = len(heads)
        for b in heads:
            r = (
                remove_heads // L
                if structure == "UL-MM" and remove_heads >= 0
                else int(target.sparsity * b.n_units)
            )
            kept[(b.layer, "heads")] = b.n_units - min(max(r, 0), b.n_units - b.min_units)
        rest = to_remove - sum((b.n_units - kept[(b.layer, b.kind)]) * b.unit_flops for b in heads)
        kept.update(uniform_fill(ffns, rest, multiple))
        return kept
    if structure == "AL-AM":
        removed = _fill(blocks, to_remove)
    elif structure == "AL-MM":
        if remove_heads >= 0:
            removed = _fill(heads, remove_heads, unit_cost=True)
        else:
            attention = sum(layer_flops(adapter, b.layer, target.seq_len)[0] for b in heads)
            removed = _fill(heads, target.sparsity * attention)
        rest = to_remove - sum(removed[(b.layer, b.kind)] * b.unit_flops for b in heads)
        removed.update(_fill(ffns, rest))
    else:
        raise StatpruneError(f"unknown FLAP structure {structure!r}")
    for b in blocks:
        kept[(b.layer, b.kind)] = b.n_units - removed[(b.layer, b.kind)]
    return round_neurons(kept, [b.curve() for b in blocks], multiple, to_remove)


def kept_units(block: Block, n_keep: int) -> torch.Tensor:
    """The ``n_keep`` best-scoring units of ``block``, sorted."""
    return block.removal_order[block.n_units - n_keep :].sort().values


def apply_units(adapter: Adapter, i: int, kind: str, keep: torch.Tensor) -> None:
    """Keep head units (KV groups with their query heads) or neurons ``keep`` of layer ``i``."""
    if kind == "heads":
        g = adapter.layer_shape(i).group_size
        adapter.keep_heads(i, (keep[:, None] * g + torch.arange(g)[None, :]).reshape(-1))
    else:
        adapter.keep_neurons(i, keep)


def compensation(adapter: Adapter, i: int, kind: str, keep: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """W[:, removed] · mean[removed] for the consumer of ``kind`` (before its columns are removed)."""
    lin = adapter.out_proj(i) if kind == "heads" else adapter.down_proj(i)
    width = head_unit_channels(adapter, i) if kind == "heads" else 1
    removed = torch.ones(lin.in_features, dtype=torch.bool)
    removed[(keep[:, None] * width + torch.arange(width)[None, :]).reshape(-1)] = False
    idx = removed.nonzero().squeeze(1).to(lin.weight.device)
    return lin.weight.detach().double()[:, idx] @ mean.to(lin.weight.device).double()[idx]


@register_method("flap", FlapOptions)
@torch.no_grad()
def flap_prune(
    model, adapter: Adapter, calib: Calibration, target: Target, *, seed: int, options: FlapOptions
) -> MethodOutput:
    """FLAP: fluctuation scores from one dense walk, adaptive allocation, removal with bias compensation."""
    t0 = time.perf_counter()
    if options.bias:  # fail before the walk when the family cannot hold the biases
        for part, lin in (("attention", adapter.out_proj(0)), ("ffn", adapter.down_proj(0))):
            if lin.bias is None:
                adapter.enable_biases(part)
    walk = LayerWalk(adapter, calib)
    scores, means = {}, {}
    for i in tqdm(range(adapter.num_layers), desc="flap: measure", disable=not options.progress):
        h, n, outs = collect_stats(walk, adapter, i)
        for kind, sc in layer_scores(adapter, i, h, n, options.metric).items():
            scores[(i, kind)] = sc
        means[(i, "heads")], means[(i, "neurons")] = h.mean, n.mean
        walk.advance(outs)
    del walk
    t1 = time.perf_counter()
    blocks = make_blocks(adapter, target, options.neuron_multiple, scores)
    kept = allocate(adapter, blocks, target, options.structure, options.remove_heads, options.neuron_multiple)
    t2 = time.perf_counter()
    for b in blocks:
        if kept[(b.layer, b.kind)] == b.n_units:
            continue
        keep = kept_units(b, kept[(b.layer, b.kind)])
        if options.bias:
            delta = compensation(adapter, b.layer, b.kind, keep, means[(b.layer, b.kind)])
            adapter.add_output_bias(b.layer, "attention" if b.kind == "heads" else "ffn", delta)
        apply_units(adapter, b.layer, b.kind, keep)
    t3 = time.perf_counter()
    return MethodOutput(
        timings={"calibration_forward": t1 - t0, "allocation": t2 - t1, "weight_update": t3 - t2},
        diagnostics={"kept_units": {f"{layer}.{kind}": c for (layer, kind), c in sorted(kept.items())}},
    )
