"""Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers" (arXiv 2204.09656).

Fisher (:mod:`.fisher`) → mask search (:mod:`.search`) → mask rearrangement (:mod:`.rearrange`) →
least-squares mask tuning (:mod:`.tune`); the tuned scales are folded into W_O / W2 columns and the
pruned heads and neurons are removed, so the result is a smaller dense stock model.

Calibration: Kwon uses its own sample count. It takes the first ``min(num_samples, calib size)``
examples of the calibration draw it is given (a prefix, so no new randomness) and re-batches them in
mini-batches of ``batch_size`` — the Fisher is a sum over mini-batches of squared mean gradients, so
the mini-batch size is part of the method. ``batch_size=None`` (default) keeps the official count of
squared-gradient terms: 32 at 2048 samples (as released), smaller mini-batches on smaller sets so
the sum has ≥ 64 terms or one per example (:func:`~.fisher.auto_batch_size`); ``batch_size=32`` on
32–128 examples reproduces the earlier 1–4-term Fisher for ablation (SQuAD: the release batches
12, pass ``batch_size=12``). ``num_samples`` defaults to 2048 (the paper's) and is capped by the
run's calibration size (the count used is reported as ``samples_used``): a run at
``calib_size`` 512 compares all methods on the same 512 examples, and Kwon at its own default is a
run at ``calib_size`` 2048 (experiments/minilm_movie.toml has both; seeded draws are nested, so the
2048 draw starts with the 512 one). Encoders need labels (task loss); decoders use the LM loss.

Teacher for mask tuning: ``teacher="dense"`` (default) fits every layer to the unpruned model, the
objective the paper states and the same reference STAT and SliceGPT reconstruct, so the comparison is
on equal terms. ``teacher="assistant"`` is the released code's variant: the teacher is the model
masked at √(kept FLOPs fraction) — a milder pruning, searched (not rearranged, not width-rounded,
as released) — which is closer to the student and can be easier to fit at high sparsity. Measured
(fine-tuned MiniLM-L6, movie-sentiment dev accuracy, 512 samples; dense 0.8774): at 30% both tuned variants are within 0.4
points of dense (dense teacher 0.8764, assistant 0.8805); at 50% rearrange-only 0.8641, dense
teacher 0.8754, assistant 0.8713. On SmolLM2-135M at 30% (SOTU, 32 × 512 tokens, perplexity on 16
dev windows; dense 22.9): rearrange-only 70.7, dense teacher 69.6, assistant 67.2. Neither wins
everywhere; the dense teacher keeps the comparison with STAT on the same reference. (Those numbers
predate the per-example Fisher, the released LSMR solve and 8-aligned widths.)

``neuron_multiple`` (default 8, as STAT): kept FFN widths are multiples of 8 with the FLOPs target
met within one group (:func:`~.search.round_selection`); 1 gives the released code's free widths.
Tuning (``solver``, ``on_failure``) is described in :mod:`.tune`: by default as released.

Remaining differences from the released code (WoosukKwon/retraining-free-pruning), besides those
listed in :mod:`.search` and :mod:`.tune`: the default teacher is the dense model; samples are a
prefix of the run's seeded calibration draw (released: ``np.random.choice`` with replacement from
the training set); the MAC-constrained search only (no latency lookup tables); GQA heads are pruned
by KV group; decoders use the LM loss.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch

from statprune.adapters import Adapter
from statprune.baselines.kwon.fisher import MaskGrads, collect_mask_grads, is_causal_lm, rebatch
from statprune.baselines.kwon.masks import Masks
from statprune.baselines.kwon.rearrange import objective, rearrange
from statprune.baselines.kwon.search import Selection, round_selection, search
from statprune.baselines.kwon.tune import tune_masks
from statprune.calibration import Calibration
from statprune.errors import StatpruneError
from statprune.flops import unit_costs
from statprune.pruner import MethodOutput, Target, register_method


@dataclass(frozen=True)
class KwonOptions:
    stop_after: Literal["search", "rearrange", "tune"] = "tune"
    teacher: Literal["dense", "assistant"] = "dense"
    num_samples: int = 2048
    batch_size: int | None = None  # None: ≥ 64 squared-gradient terms (official 2048 / 32), see fisher
    max_tokens: int = 4096  # memory bound: a mini-batch is differentiated in pieces (same gradient)
    damp: float = 1.0
    scale_bound: float = 10.0
    solver: Literal["lsmr", "ridge"] = "lsmr"  # lsmr: as released, on the damped normal equations
    on_failure: Literal["stop", "skip"] = "stop"  # stop: as released, a failed fit ends tuning
    neuron_multiple: int = 8
    progress: bool = True

    def __post_init__(self) -> None:
        if (
            self.num_samples < 1
            or (self.batch_size is not None and self.batch_size < 1)
            or self.max_tokens < 1
        ):
            raise StatpruneError("kwon: num_samples, batch_size and max_tokens must be ≥ 1")
        if self.neuron_multiple < 1:
            raise StatpruneError(f"neuron_multiple must be at least 1, got {self.neuron_multiple}")


def _group_grads(grads: MaskGrads, adapter: Adapter) -> list[torch.Tensor]:
    """Per layer (batches × KV groups): a group's mask gradient is the sum over its query heads."""
    out = []
    for i, g in enumerate(grads.head):
        gs = adapter.layer_shape(i).group_size
        out.append(g.reshape(g.shape[0], -1, gs).sum(-1))
    return out


def select(
    adapter: Adapter,
    head_grads: list[torch.Tensor],
    neuron_grads: list[torch.Tensor],
    keep_flops: float,
    seq_len: float,
    *,
    rearranged: bool,
    neuron_multiple: int = 1,
) -> Selection:
    """Search (then width rounding, then rearrangement if asked) under ``keep_flops``."""
    costs = [unit_costs(adapter, i, seq_len) for i in range(adapter.num_layers)]
    head_cost = [c.group(adapter.layer_shape(i).group_size) for i, c in enumerate(costs)]
    neuron_imp = [g.pow(2).sum(0) for g in neuron_grads]
    neuron_cost = [c.neuron for c in costs]
    budget = keep_flops * (1 + 1e-12)
    sel = search([g.pow(2).sum(0) for g in head_grads], head_cost, neuron_imp, neuron_cost, budget)
    sel = round_selection(sel, head_cost, neuron_imp, neuron_cost, budget, neuron_multiple)
    if rearranged:
        sel = Selection(
            heads=[rearrange(g, k) for g, k in zip(head_grads, sel.heads)],
            neurons=[rearrange(g, k) for g, k in zip(neuron_grads, sel.neurons)],
        )
    return sel


def to_masks(adapter: Adapter, sel: Selection) -> Masks:
    dev = adapter.device
    heads = [
        h.float().repeat_interleave(adapter.layer_shape(i).group_size).to(dev)
        for i, h in enumerate(sel.heads)
    ]
    return Masks(head=heads, neuron=[n.float().to(dev) for n in sel.neurons])


@torch.no_grad()
def apply_masks(adapter: Adapter, masks: Masks) -> None:
    """Fold real-valued scales into W_O / W2 columns, then physically remove the zero-mask units."""
    hd = adapter.head_dim
    for i in range(adapter.num_layers):
        h, n = masks.head[i].detach(), masks.neuron[i].detach()
        W = adapter.out_proj(i).weight.detach()
        if not bool((h == 1).all()):
            adapter.replace_out_proj(i, W.double() * h.double().repeat_interleave(hd).to(W.device)[None, :])
        kept = torch.nonzero(h != 0).flatten().cpu()
        if len(kept) < len(h):
            adapter.keep_heads(i, kept)
        W2 = adapter.down_proj(i).weight.detach()
        if not bool((n == 1).all()):
            adapter.replace_down_proj(i, W2.double() * n.double().to(W2.device)[None, :])
        kept_n = torch.nonzero(n != 0).flatten().cpu()
        if len(kept_n) < len(n):
            adapter.keep_neurons(i, kept_n)


@register_method("kwon", KwonOptions)
def kwon_prune(
    model, adapter: Adapter, calib: Calibration, target: Target, *, seed: int, options: KwonOptions
) -> MethodOutput:
    """Prune ``model`` in place with Kwon et al.'s Fisher/search/rearrange/tune pipeline."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    data = rebatch(calib, options.num_samples, options.batch_size)
    grads = collect_mask_grads(model, adapter, data, progress=options.progress, max_tokens=options.max_tokens)
    head_g, neuron_g = _group_grads(grads, adapter), grads.neuron
    timings["fisher"] = time.perf_counter() - t

    t = time.perf_counter()
    sel = select(
        adapter,
        head_g,
        neuron_g,
        target.flops_to_keep,
        target.seq_len,
        rearranged=False,
        neuron_multiple=options.neuron_multiple,
    )
    timings["search"] = time.perf_counter() - t
    diagnostics: dict = {
        "samples_used": data.num_examples,
        "num_batches": len(data.batches),
        "batch_size": int(data.batches[0]["input_ids"].shape[0]) if data.batches else 0,
        "kept_after_search": sel.counts(),
    }

    if options.stop_after != "search":
        t = time.perf_counter()
        before = sum(objective(g, ~k) for g, k in zip([*head_g, *neuron_g], [*sel.heads, *sel.neurons]))
        sel = Selection(
            heads=[rearrange(g, k) for g, k in zip(head_g, sel.heads)],
            neurons=[rearrange(g, k) for g, k in zip(neuron_g, sel.neurons)],
        )
        after = sum(objective(g, ~k) for g, k in zip([*head_g, *neuron_g], [*sel.heads, *sel.neurons]))
        timings["rearrange"] = time.perf_counter() - t
        diagnostics["rearrange_objective"] = {"before": before, "after": after}

    masks = to_masks(adapter, sel)
    if options.stop_after == "tune":
        t = time.perf_counter()
        teacher = None
        if options.teacher == "assistant":
            ta = select(
                adapter,
                head_g,
                neuron_g,
                math.sqrt(1.0 - target.sparsity) * target.dense,
                target.seq_len,
                rearranged=False,
            )
            teacher = to_masks(adapter, ta)
            diagnostics["teacher_assistant_kept"] = ta.counts()
        masks, report = tune_masks(
            adapter,
            data,
            masks,
            teacher,
            damp=options.damp,
            bound=options.scale_bound,
            solver=options.solver,
            on_failure=options.on_failure,
            cls_last_ffn=not is_causal_lm(model) and "start_positions" not in data.batches[0],
            progress=options.progress,
        )
        timings["tune"] = time.perf_counter() - t
        diagnostics["tune"] = report.to_dict()

    t = time.perf_counter()
    apply_masks(adapter, masks)
    timings["weight_update"] = time.perf_counter() - t
    diagnostics["kept_units"] = sel.counts()
    return MethodOutput(timings=timings, diagnostics=diagnostics)
