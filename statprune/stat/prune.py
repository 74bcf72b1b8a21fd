"""STAT: structured pruning by interpolative decomposition, with correction, no fine-tuning.

Two walks over the layers:

1. *Measure* (original model): per layer, stream the head-output and neuron Gram matrices, compute
   the error of every possible head/neuron count, then allocate counts globally under the FLOPs target.
2. *Apply*: walk again; per layer, prune heads (selection + W_O correction), then neurons (selection +
   W2 correction). With ``repropagate=true`` (default) every statistic comes from the model pruned so
   far: the FFN Gram is taken after the layer's attention was pruned, and the next layer sees the
   pruned layer's output. With ``repropagate=false`` all statistics come from the original model (the
   released OPT code's single pass). The head-Gram and FFN-Gram forwards stop at W_O's resp. W2's
   input; families with a plain pre-norm residual (``adapter.plain_residual``: Llama, Qwen, Mistral,
   Phi-3) replay the rest from recorded inputs (:class:`~statprune.calibration.LayerReplay`): per
   layer, one attention forward, then W_O', the FFN's input linears and W2' — not three full layers.

Placement and scale (options ``device``, ``hidden_device``, ``sketch``): the walk runs on ``device``
(default: where the model is; ``auto``: CUDA when available); the calibration hidden states stay on
that device when two copies fit in half its free memory, else in pinned CPU memory
(``hidden_device=auto``); on CUDA with the hidden states there, consecutive batches of a small
layer run as one forward (:func:`~statprune.calibration.walk_groups`; the Grams still take each
batch's rows apart). The token dimension can be sketched before the Gram
(``sketch=gaussian|countsketch``, ``sketch_ratio`` sketch rows per token, seeded): cheaper Grams,
approximate statistics; the exact path is the default. ``neuron_multiple=m`` (default 8) keeps every
pruned layer's neuron count a multiple of m, still meeting the FLOPs target (within one group of m),
because GEMMs whose dimensions are not multiples of 8 lose the fast tensor-core kernels on GPUs
(BERT-base at 50%: 1.26× faster than dense with m=1, 2.35× with m=8). ``profile=true`` synchronises around every
Gram update so that ``timings`` splits ``gram`` from ``calibration_forward`` (the forward alone).
``gram_precision=auto`` (default) lets :class:`~statprune.calibration.Gram` multiply float32
activations in float32 on the CPU (2× the float64 rate, ~1e-7 relative); ``float64`` forces exact products.

Models larger than the device (option ``weights``): ``stream`` keeps the model in host memory and
moves one layer at a time to ``device`` in both walks (statprune/streaming.py), the next layer
copied ahead while the current one computes; the pruned model ends in host memory, where it was.
``auto`` (default) streams when a host model's weights exceed 3/4 of the device's free memory,
else moves the whole model to ``device`` (where it stays); ``device`` always moves it.

Allocation (``allocation``): ``reference`` is the released code's rule, i.e. the paper's (encoder or
decoder variant by ``adapter.causal``; every difference from the release is listed in
:mod:`statprune.stat.allocate`); ``share`` is this project's fixed head/FFN FLOPs share with a
per-type threshold on depth-weighted errors (``paper`` is its deprecated old name); ``greedy``
removes the unit with the least error increase per FLOP across all blocks.

Defaults (``error_norm=auto``, ``allocation=auto``, :func:`effective_options`): decoders
(``adapter.causal``) get ``error_norm=loss`` with ``allocation=greedy``, encoders ``residual`` with
``share`` — what the dev splits chose (docs/STAT_VARIANTS.md: on SmolLM2 loss+greedy is best on dev
at 10/20/30%, by up to 22%; on MiniLM it ties the encoder default, which therefore stays). ``auto``
follows an explicit setting of the other option: ``allocation=reference`` takes ``residual`` (the
rule reads raw statistics), an explicit ``error_norm=loss`` takes ``greedy``, any other explicit
norm ``share``; these are resolved when the options are parsed, so a record's resolved options
say them (only ``error_norm=auto`` waits for the model). A decoder streamed from host memory
(``weights=stream``) cannot take the loss's backward pass, so there ``auto`` means
``residual``/``share``, with a warning. The record's ``diagnostics.auto_options`` says what
``auto`` became.

Issue 15 variants, all off by default (docs/STAT_VARIANTS.md): ``max_layer_departure`` /
``protect_layers`` bound each block's removal (:func:`statprune.allocation.bound_curves`);
``correction_target=dense`` and ``damping`` change the correction (:mod:`statprune.stat.dense`);
``damping_select=holdout`` chooses λ per sub-block instead: the apply walk's Grams are taken on
even and odd calibration examples apart, λ ∈ :data:`statprune.stat.holdout.GRID` minimises the
two-fold held-out output error of the fit made on the other part (from Grams only), and the fit is
redone on all tokens; the choices are in the diagnostics' ``damping_selected`` (:mod:`statprune.stat.holdout`);
``head_selection=exact`` enumerates head-unit subsets; ``error_norm=depth_fit`` smooths the layer
normalisation over depth; ``rounds`` re-measures between parts of the budget. ``neuron_selection=obs`` (``share``/``greedy``)
selects FFN neurons by the exact output-space error instead of the pivoted QR: greedy backward
elimination (OBS, one rank-one downdate of G⁻¹ per removed neuron) gives the nested kept sets and
the whole curve in the QR curve's units, and √ of its error increments replace |R_jj| in ``share``;
the kept neurons are refit by least squares (:mod:`statprune.stat.obs`). ``error_norm=loss``
(``share``/``greedy``): before each measure walk one backward pass over the calibration batches
gives g_l = E_t[(∂L/∂y_l)²] for every sub-block output y_l (W_O's, W_down's), and each layer's errors
become Σ_d g_l[d]·‖(C − Ĉ)W_outᵀ[:, d]‖² — W_out's rows scaled by √g_l in the curves, no per-layer
division; unit selection and the correction are unchanged (derivation in
:mod:`statprune.stat.loss_weights`).

Cheap ablation (:mod:`statprune.stat.curve_cache`): with ``STATPRUNE_CURVE_CACHE=1`` in the
environment, round 1's curves (and loss weights) are stored on disk under a hash of the model's
weights and config, the calibration batches, the seed, device and dtype, ``seq_len``, the FLOPs
model, the measuring code, and every option except :data:`AFTER_MEASURE`; a later run with the
same key (e.g. another ``allocation``) skips the measure walk, with bit-identical results.
``diagnostics.curves_cache`` says ``hit``, ``miss`` or ``off``. An environment switch, not an
option: a cache changes neither run ids nor fingerprints.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from statprune import runtime
from statprune.adapters import Adapter
from statprune.allocation import (
    BlockCurve,
    bound_curves,
    enforce_bounds,
    greedy_allocation,
    parse_protect,
    round_neurons,
)
from statprune.calibration import Calibration, Gram, LayerReplay, LayerWalk, real_rows, replay_fits
from statprune.errors import StatpruneError
from statprune.flops import layer_flops, unit_costs
from statprune.pruner import MethodOutput, Target, neutral, register_method
from statprune.stat import curve_cache
from statprune.stat.allocate import StatCurve, exp_depth_fit, reference_allocation, share_allocation
from statprune.stat.dense import PairedGrams, dense_walk
from statprune.stat.heads import EXACT_MAX_UNITS, exact_units, head_curve, head_units, prune_heads
from statprune.stat.holdout import Holdout, SplitGram
from statprune.stat.id import clear_workspaces
from statprune.stat.loss_weights import Weights, output_grad_weights
from statprune.stat.neurons import neuron_curve, prune_neurons
from statprune.streaming import LayerStreamer, device_free_bytes, module_bytes, move_outside_layers
from statprune.timing import StageTimer


@dataclass(frozen=True)
class StatOptions:
    # auto: greedy for decoders, share for encoders (effective_options; docs/STAT_VARIANTS.md)
    allocation: Literal["auto", "greedy", "share", "reference", "paper"] = "auto"
    correction: bool = True
    repropagate: bool = True
    gqa: Literal["group", "uniform"] = "group"
    # auto: loss for decoders, residual for encoders (effective_options)
    error_norm: Literal["auto", "residual", "median", "trimmed", "none", "depth_fit", "loss"] = "auto"
    head_share: float | None = None
    rel_tol: float = 1e-12
    device: str | None = None
    store_dtype: Literal["model", "bfloat16", "float32"] = "model"
    hidden_device: Literal["auto", "device", "cpu"] = "auto"
    sketch: Literal["none", "gaussian", "countsketch"] = "none"
    sketch_ratio: float = 0.05
    profile: bool = False
    neuron_multiple: int = 8
    progress: bool = True
    weights: Literal["auto", "device", "stream"] = "auto"
    gram_precision: Literal["auto", "float64"] = "auto"  # calibration.Gram: float32 GEMM on CPU
    # issue 15 variants (docs/STAT_VARIANTS.md). Each default is the behaviour before the option
    # existed (pruner.neutral), so records made before these options stay current.
    max_layer_departure: float | None = neutral(None)  # δ: each block removes t ± δ of its own FLOPs
    protect_layers: str | None = neutral(None)  # "N" (first and last N) or "first:a,last:b": untouched
    correction_target: Literal["self", "dense"] = neutral("self")  # fit the pruned or the dense output
    damping: float = neutral(0.0)  # ridge λ of the correction, a fraction of the Gram's mean diagonal
    # holdout: λ per sub-block from stat.holdout.GRID by two-fold error on even/odd calibration examples
    damping_select: Literal["fixed", "holdout"] = neutral("fixed")
    head_selection: Literal["qr", "exact"] = neutral("qr")  # exact: best subset of ≤ 8 head units
    rounds: int = neutral(1)  # iterated allocation: r/R of the budget per round, re-measured in between
    neuron_selection: Literal["qr", "obs"] = neutral("qr")  # obs: greedy backward elimination (stat/obs.py)

    def __post_init__(self) -> None:
        if self.allocation == "paper":  # old name of ``share``; it was never the paper's rule
            warnings.warn(
                "allocation=paper is deprecated and means allocation=share (the paper's rule is "
                "allocation=reference)",
                FutureWarning,
                stacklevel=3,
            )
            object.__setattr__(self, "allocation", "share")
        # auto decided without the model where it can be (so the record's resolved options say it):
        if self.error_norm == "auto" and self.allocation == "reference":  # reads raw statistics
            object.__setattr__(self, "error_norm", "residual")
        if self.allocation == "auto" and self.error_norm != "auto":
            object.__setattr__(self, "allocation", "greedy" if self.error_norm == "loss" else "share")
        if not 0.0 < self.sketch_ratio <= 1.0:
            raise StatpruneError(f"sketch_ratio must be in (0, 1], got {self.sketch_ratio}")
        if self.neuron_multiple < 1:
            raise StatpruneError(f"neuron_multiple must be at least 1, got {self.neuron_multiple}")
        if self.max_layer_departure is not None and not 0.0 <= self.max_layer_departure <= 1.0:
            raise StatpruneError(f"max_layer_departure must be in [0, 1], got {self.max_layer_departure}")
        if self.rounds < 1:
            raise StatpruneError(f"rounds must be at least 1, got {self.rounds}")
        if self.rounds > 1 and self.allocation == "reference":
            raise StatpruneError("rounds > 1 needs allocation=share or greedy (reference needs equal layers)")
        if self.error_norm == "loss" and self.allocation == "reference":
            raise StatpruneError(
                "error_norm=loss needs allocation=share or greedy (reference reads raw statistics)"
            )
        if self.neuron_selection == "obs" and self.allocation == "reference":
            raise StatpruneError(
                "neuron_selection=obs needs allocation=share or greedy (reference reads the pivoted "
                "QR's |R_jj| and ID residuals)"
            )
        if self.damping < 0:
            raise StatpruneError(f"damping must be non-negative, got {self.damping}")
        if self.damping_select == "holdout" and (self.damping != 0 or not self.correction):
            raise StatpruneError(
                "damping_select=holdout chooses λ itself: it needs damping=0 and correction=true"
            )
        if self.damping_select == "holdout" and self.sketch != "none":
            raise StatpruneError("damping_select=holdout takes exact Grams (sketch=none)")
        if self.correction_target == "dense" and not self.repropagate:
            raise StatpruneError("correction_target=dense needs repropagate=true (else it equals self)")
        if self.correction_target == "dense" and self.sketch != "none":
            raise StatpruneError("correction_target=dense takes exact Grams (sketch=none)")
        if self.protect_layers is not None:
            try:
                parse_protect(self.protect_layers, 1)
            except ValueError as e:
                raise StatpruneError(str(e)) from None


# Below this many calibration tokens ``error_norm=auto`` on a decoder warns: the calibration-size study
# (README) measured 108.8 ± 9.0 perplexity at 2,048 tokens against 50.5 for residual + share, a tie at 4,096.
FEW_LOSS_TOKENS = 4096

# The options that leave round 1's curves unchanged (they act after the measure pass, or only on
# display/timing): the only ones left out of the curve-cache key (statprune/stat/curve_cache.py).
# Deny by default: an option not listed here is in the key. List one only when measure_curves and
# output_grad_weights provably ignore it.
AFTER_MEASURE = frozenset(
    {
        "allocation",  # allocate
        "head_share",  # allocate (share)
        "neuron_multiple",  # allocate (round_neurons)
        "max_layer_departure",  # allocate (bound_curves)
        "protect_layers",  # allocate (bound_curves)
        "rounds",  # how much round 1 removes; later rounds re-measure (never cached)
        "correction",  # apply_pruning
        "correction_target",  # apply_pruning
        "damping",  # apply_pruning
        "damping_select",  # apply_pruning (stat/holdout.py)
        "repropagate",  # apply_pruning (measure always walks the original model)
        "profile",  # timing only
        "progress",  # display only
    }
)


def effective_options(opts: StatOptions, *, causal: bool, streamed: bool = False) -> StatOptions:
    """``opts`` with ``error_norm=auto`` (and the ``allocation=auto`` that follows it) made concrete
    for the model: ``StatOptions`` already resolved every ``auto`` that does not depend on it."""
    if opts.error_norm != "auto":
        return opts
    if causal and streamed:
        warnings.warn(
            "stat: the decoder default error_norm=loss needs the whole model on the device; "
            "streamed (weights=stream), it prunes with error_norm=residual allocation=share "
            "(diagnostics.auto_options)",
            stacklevel=2,
        )
    # replace() runs __post_init__ again, which turns allocation=auto into greedy (loss) or share
    return dataclasses.replace(opts, error_norm="loss" if causal and not streamed else "residual")


def measure_options(opts: StatOptions) -> dict:
    """The options that enter the curve-cache key: all but :data:`AFTER_MEASURE`."""
    return {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts) if f.name not in AFTER_MEASURE}


def _store_dtype(name: str) -> torch.dtype | None:
    return {"model": None, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


class _Timer(StageTimer):
    def __init__(self, device: torch.device, profile: bool = False) -> None:
        super().__init__(device)
        self.profile = profile

    def report(self) -> dict[str, float]:
        """Stage totals; with profiling, ``gram`` is taken out of ``calibration_forward``."""
        out = dict(self.totals)
        if "gram" in out:
            out["calibration_forward"] = out.get("calibration_forward", 0.0) - out["gram"]
        return out


class _Sketch:
    """Token-dimension sketch S·X of one batch's rows (E[SᵀS] = I), seeded per accumulator."""

    def __init__(self, kind: str, ratio: float, device: torch.device, seed: int) -> None:
        self.kind, self.ratio = kind, ratio
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        n_tok = rows.shape[0]
        m = max(1, math.ceil(self.ratio * n_tok))
        x = rows.float()
        if self.kind == "gaussian":
            S = torch.randn(m, n_tok, generator=self.gen, device=x.device, dtype=x.dtype)
            return (S @ x) / math.sqrt(m)
        bucket = torch.randint(m, (n_tok,), generator=self.gen, device=x.device)
        sign = torch.randint(2, (n_tok, 1), generator=self.gen, device=x.device).to(x.dtype) * 2 - 1
        return torch.zeros(m, x.shape[1], device=x.device, dtype=x.dtype).index_add_(0, bucket, x * sign)


def _grams(
    adapter: Adapter,
    i: int,
    device: torch.device,
    heads: bool,
    neurons: bool,
    opts: StatOptions | None = None,
    seed: int = 0,
    phase: int = 0,
    split: bool = False,
) -> dict:
    """``split``: :class:`~statprune.stat.holdout.SplitGram` accumulators (``damping_select=holdout``)."""

    def make(dim: int, part: int) -> Gram | SplitGram:
        if split:
            return SplitGram(dim, device, opts.gram_precision if opts is not None else "exact_products")
        sketch = None
        if opts is not None and opts.sketch != "none":
            sketch = _Sketch(
                opts.sketch, opts.sketch_ratio, device, seed * 1_000_003 + (4 * i + 2 * part + phase)
            )
        precision = opts.gram_precision if opts is not None else "exact_products"
        return Gram(dim, device, transform=sketch, precision=precision)

    out = {}
    if heads:
        out["heads"] = (adapter.out_proj(i), make(adapter.out_proj(i).in_features, 0))
    if neurons:
        out["neurons"] = (adapter.down_proj(i), make(adapter.down_proj(i).in_features, 1))
    return out


def _hooks(grams: dict, timer: _Timer | None = None) -> dict:
    if timer is None or not timer.profile:
        return {mod: acc for mod, acc in grams.values()}

    def timed(acc: Gram) -> Callable[[torch.Tensor, torch.Tensor], None]:
        def hook(x: torch.Tensor, mask: torch.Tensor) -> None:
            with timer("gram"):
                acc(x, mask)

        return hook

    return {mod: timed(acc) for mod, acc in grams.values()}


def layer_scale(walk: LayerWalk, norm: str) -> float:
    """Energy of the layer's input hidden states (real tokens) that its errors are divided by.

    ``residual``: the squared Frobenius norm, which a few outliers can dominate in a decoder.
    ``median``: tokens × the median per-token energy (ignores a few outlier tokens, e.g. attention
    sinks); ``trimmed``: the per-dimension energies without the largest 1% of dimensions (at least
    one), rescaled to all dimensions (ignores a few massive-activation dimensions). ``none``,
    ``depth_fit`` (applied once every layer is measured, :func:`depth_fit_normalise`) and ``loss``
    (the curves are loss-weighted instead, :mod:`statprune.stat.loss_weights`): 1.
    """
    if norm in ("none", "depth_fit", "loss"):
        return 1.0
    if norm == "auto":
        raise StatpruneError("layer_scale needs a concrete error_norm, not 'auto' (effective_options)")
    if norm == "residual":
        return walk.energy()
    per_token, per_dim = [], 0.0
    for h, m in zip(walk.hidden, walk.masks):  # one batch at a time: no second copy of the walk
        sq = real_rows(h.to(walk.device), m).double().pow(2)
        per_token.append(sq.sum(1))
        per_dim = per_dim + sq.sum(0)
    if norm == "median":
        tokens = torch.cat(per_token)
        return float(tokens.median()) * len(tokens)
    if norm == "trimmed":
        d = len(per_dim)
        keep = d - max(1, d // 100)
        return float(torch.sort(per_dim).values[:keep].sum()) * d / keep
    raise StatpruneError(f"unknown error_norm {norm!r}")


def depth_fit_normalise(curves: list[BlockCurve]) -> None:
    """``error_norm=depth_fit``: per kind, divide layer l's errors by exp(a·l + b), the least-squares
    line through (l, log errors_l[0]) — the released decoder code's smoothed depth fit (there on
    norms; on squared errors the fit is its square) — in place. Raw statistics are left alone."""
    for kind in ("heads", "neurons"):
        blocks = sorted((c for c in curves if c.kind == kind), key=lambda c: c.layer)
        if not blocks:
            continue
        fit = exp_depth_fit(torch.stack([c.errors[0] for c in blocks]))
        for c, f in zip(blocks, fit.tolist()):
            c.errors = c.errors / f
            if c.pivots is not None:
                c.pivots = c.pivots / f**0.5


def measure_curves(
    adapter: Adapter,
    walk: LayerWalk,
    target: Target,
    opts: StatOptions,
    timer: _Timer,
    progress: bool,
    seed: int = 0,
    weights: Weights | None = None,
) -> list[BlockCurve]:
    """Every block's error curve; ``weights`` (``error_norm=loss``): g per sub-block output."""
    if (opts.error_norm == "loss") != (weights is not None):
        raise StatpruneError("error_norm=loss and loss weights go together")
    curves: list[BlockCurve] = []
    for i in tqdm(range(adapter.num_layers), desc="stat: measure", disable=not progress):
        scale = layer_scale(walk, opts.error_norm)
        _fetch(walk, i, timer)
        grams = _grams(adapter, i, walk.device, True, True, opts, seed, 0)
        with timer("calibration_forward"):
            outs = walk.run(i, _hooks(grams, timer))
        shape = adapter.layer_shape(i)
        costs = unit_costs(adapter, i, target.seq_len)
        sg_h = sg_n = None  # √g over W_O's / W_down's rows (error_norm=loss)
        if weights is not None:
            sg_h, sg_n = weights[(i, "heads")].sqrt(), weights[(i, "neurons")].sqrt()
        with timer("factorization"):
            G_att = grams["heads"][1].G
            W_O = adapter.out_proj(i).weight
            units = head_units(G_att, shape, opts.gqa, rel_tol=opts.rel_tol)
            if opts.head_selection == "exact" and len(units) <= EXACT_MAX_UNITS:
                h_err = exact_units(G_att, W_O, units, shape.head_dim, out_weight=sg_h)[0]
            else:
                W_h = W_O if sg_h is None else W_O.double() * sg_h.to(W_O.device)[:, None]
                h_err = head_curve(G_att, W_h, units, shape.head_dim, rel_tol=opts.rel_tol)
            n_err, piv, id_res = neuron_curve(
                grams["neurons"][1].G,
                adapter.down_proj(i).weight,
                rel_tol=opts.rel_tol,
                out_weight=sg_n,
                selection=opts.neuron_selection,
            )
        unit_size = len(units[0])
        head_unit_flops = (
            costs.group(shape.group_size)
            if opts.gqa == "group" or shape.group_size == 1
            else unit_size * costs.q_head
        )
        curves.append(StatCurve(i, "heads", h_err / scale, head_unit_flops, raw=h_err.sqrt()))
        curves.append(
            StatCurve(
                i,
                "neurons",
                n_err / scale,
                costs.neuron,
                pivots=piv / scale**0.5,
                raw=piv,
                id_residual=id_res,
            )
        )
        _release(walk, i, timer, modified=False)
        walk.advance(outs)
    if opts.error_norm == "depth_fit":
        depth_fit_normalise(curves)
    return curves


def allocate(
    adapter: Adapter,
    curves: list[BlockCurve],
    target: Target,
    opts: StatOptions,
    to_remove: float | None = None,
) -> dict:
    """Kept heads and neurons per layer: the allocation rule, then widths in ``neuron_multiple``s.

    ``to_remove``: FLOPs still to remove (a later round of ``rounds``); default the whole target.
    """
    to_remove = target.flops_to_remove if to_remove is None else to_remove
    bounded = opts.max_layer_departure is not None or opts.protect_layers is not None
    if bounded:
        protect = parse_protect(opts.protect_layers, adapter.num_layers)
        curves = bound_curves(curves, to_remove, delta=opts.max_layer_departure, protect=protect)
    if opts.allocation == "greedy":
        kept = greedy_allocation(curves, to_remove)
    elif opts.allocation == "reference":
        variant = "decoder" if adapter.causal else "encoder"
        kept = reference_allocation(curves, to_remove, variant=variant)
    elif opts.allocation == "share":
        share = opts.head_share
        if share is None:
            attention = sum(layer_flops(adapter, i, target.seq_len)[0] for i in range(adapter.num_layers))
            share = attention / target.dense
        kept = share_allocation(curves, to_remove, num_layers=adapter.num_layers, head_share=share)
    else:  # auto: stat_prune resolves it first (effective_options)
        raise StatpruneError(
            f"allocate needs a concrete allocation, not {opts.allocation!r} (effective_options)"
        )
    if bounded:
        kept = enforce_bounds(kept, curves, to_remove)
    return round_neurons(kept, curves, opts.neuron_multiple, to_remove)


def apply_pruning(
    adapter: Adapter,
    walk: LayerWalk,
    kept: dict,
    opts: StatOptions,
    timer: _Timer,
    progress: bool,
    seed: int = 0,
    weights: Weights | None = None,
) -> dict[str, dict[str, float]]:
    """Prune every layer to ``kept``; returns ``damping_select=holdout``'s choice per sub-block
    (:meth:`~statprune.stat.holdout.Holdout.report`, keyed ``"layer.kind"``; empty otherwise).
    ``weights`` (``error_norm=loss``) weight ``neuron_selection=obs``."""
    if opts.correction_target == "dense":
        return _apply_dense_target(adapter, walk, kept, opts, timer, progress, weights)
    split = opts.damping_select == "holdout"
    chosen: dict[str, dict[str, float]] = {}
    # repropagate: every pass but the last stops where its statistic is taken; with a plain
    # residual (calibration.LayerReplay) the layer is finished from recorded projection inputs
    replay = opts.repropagate and replay_fits(walk)
    for i in tqdm(range(adapter.num_layers), desc="stat: prune", disable=not progress):
        k_heads, k_neurons = kept[(i, "heads")], kept[(i, "neurons")]
        _fetch(walk, i, timer)
        rec = LayerReplay(walk, i) if replay else None
        grams = _grams(adapter, i, walk.device, True, not opts.repropagate, opts, seed, 1, split)
        hooks = _hooks(grams, timer)
        with timer("calibration_forward"):
            outs = walk.run(
                i,
                rec.attention_hooks(hooks) if rec else hooks,
                keep_outputs=not opts.repropagate,
                stop_after=adapter.out_proj(i) if opts.repropagate else None,
            )
        with timer("weight_update"):
            hold = grams["heads"][1].holdout() if split else None
            kept_dims = prune_heads(
                adapter,
                i,
                grams["heads"][1].G,
                k_heads,
                mode=opts.gqa,
                correction=opts.correction,
                rel_tol=opts.rel_tol,
                damping=opts.damping,
                selection=opts.head_selection,
                holdout=hold,
            )
            _record(chosen, i, "heads", hold)
        if opts.repropagate:
            grams = _grams(adapter, i, walk.device, False, True, opts, seed, 1, split)
            hooks = _hooks(grams, timer)
            with timer("calibration_forward"):
                if rec:
                    rec.ffn_inputs(kept_dims, hooks)
                else:
                    walk.run(i, hooks, keep_outputs=False, stop_after=adapter.down_proj(i))
        with timer("weight_update"):
            hold = grams["neurons"][1].holdout() if split else None
            kept_neurons = prune_neurons(
                adapter,
                i,
                grams["neurons"][1].G,
                k_neurons,
                correction=opts.correction,
                rel_tol=opts.rel_tol,
                damping=opts.damping,
                holdout=hold,
                **_obs_args(opts, weights, i),
            )
            _record(chosen, i, "neurons", hold)
        if opts.repropagate:
            with timer("calibration_forward"):
                outs = rec.outputs(kept_neurons) if rec else walk.run(i)
        _release(walk, i, timer, modified=True)
        walk.advance(outs)
    return chosen


def _record(chosen: dict[str, dict[str, float]], i: int, kind: str, hold: Holdout | None) -> None:
    if hold is not None and hold.chosen is not None:  # None: the block was left whole
        chosen[f"{i}.{kind}"] = hold.report()


def _obs_args(opts: StatOptions, weights: Weights | None, i: int) -> dict:
    """prune_neurons' selection arguments (none for ``qr``: that call is unchanged)."""
    if opts.neuron_selection == "qr":
        return {}
    sg = None if weights is None else weights[(i, "neurons")].sqrt()
    return {"selection": opts.neuron_selection, "out_weight": sg}


def _apply_dense_target(
    adapter: Adapter,
    walk: LayerWalk,
    kept: dict,
    opts: StatOptions,
    timer: _Timer,
    progress: bool,
    weights: Weights | None = None,
) -> dict[str, dict[str, float]]:
    """The apply walk with ``correction_target=dense``: a dense walk in lockstep (stat/dense.py)."""
    if walk.stream is not None:
        raise StatpruneError("correction_target=dense does not stream weights (weights=stream)")
    with timer("calibration_forward"):
        dense = dense_walk(walk)
    split = opts.damping_select == "holdout"
    chosen: dict[str, dict[str, float]] = {}
    for i in tqdm(range(adapter.num_layers), desc="stat: prune (dense target)", disable=not progress):
        pair = PairedGrams(walk, dense, i)
        with timer("calibration_forward"):
            G, M, dense_outs, hold = pair(adapter.out_proj(i), keep_dense=True, split=split)
        with timer("weight_update"):
            prune_heads(
                adapter,
                i,
                G,
                kept[(i, "heads")],
                mode=opts.gqa,
                correction=opts.correction,
                rel_tol=opts.rel_tol,
                cross=M,
                damping=opts.damping,
                selection=opts.head_selection,
                holdout=hold,
            )
            _record(chosen, i, "heads", hold)
        with timer("calibration_forward"):
            G, M, _, hold = pair(adapter.down_proj(i), split=split)
        with timer("weight_update"):
            prune_neurons(
                adapter,
                i,
                G,
                kept[(i, "neurons")],
                correction=opts.correction,
                rel_tol=opts.rel_tol,
                cross=M,
                damping=opts.damping,
                holdout=hold,
                **_obs_args(opts, weights, i),
            )
            _record(chosen, i, "neurons", hold)
        with timer("calibration_forward"):
            outs = walk.run(i)
        del pair
        walk.advance(outs)
        dense.advance(dense_outs)
    return chosen


def _fetch(walk: LayerWalk, i: int, timer: _Timer) -> None:
    if walk.stream is not None:
        with timer("weight_transfer"):
            walk.stream.fetch(i)


def _release(walk: LayerWalk, i: int, timer: _Timer, *, modified: bool) -> None:
    if walk.stream is not None:
        with timer("weight_transfer"):
            walk.stream.release(i, modified=modified)


def _stream_weights(mode: str, model: torch.nn.Module, home: torch.device, device: torch.device) -> bool:
    """Stream layers when asked, or (``auto``) when a host model would not leave room on the device."""
    if mode != "auto":
        return mode == "stream"
    if device.type != "cuda" or home == device:
        return False
    return module_bytes(model) > 0.75 * device_free_bytes(device)


def resolve_device(name: str | None, current: torch.device) -> torch.device:
    """``None`` → where the model is; otherwise :func:`statprune.runtime.resolve_device`."""
    return runtime.resolve_device(name) if name else current


def _offload(
    mode: str, adapter: Adapter, calib: Calibration, device: torch.device, store: torch.dtype | None
) -> bool:
    """Pinned CPU storage when two copies of the hidden states would take over half the free memory."""
    if device.type != "cuda" or mode == "device":
        return False
    if mode == "cpu":
        return True
    itemsize = torch.empty((), dtype=store or adapter.dtype).element_size()
    need = 2 * sum(b["input_ids"].numel() for b in calib.batches) * adapter.hidden_size * itemsize
    return need > 0.5 * device_free_bytes(device)


@register_method("stat", StatOptions)
@torch.no_grad()
def stat_prune(
    model, adapter: Adapter, calib: Calibration, target: Target, *, seed: int, options: StatOptions
) -> MethodOutput:
    """Prune ``model`` in place with STAT (deterministic given the calibration draw and seed)."""
    adapter.require("heads", "neurons", method="stat")
    home = adapter.device
    device = resolve_device(options.device, home)
    streamed = _stream_weights(options.weights, model, home, device)
    auto = {k: getattr(options, k) == "auto" for k in ("error_norm", "allocation")}
    options = effective_options(options, causal=adapter.causal, streamed=streamed)
    if auto["error_norm"] and options.error_norm == "loss" and calib.num_tokens < FEW_LOSS_TOKENS:
        warnings.warn(
            f"stat: {calib.num_tokens} calibration tokens; the decoder default's loss weights are "
            f"noisy below {FEW_LOSS_TOKENS} (SmolLM2 at 2,048 tokens: twice the perplexity of "
            "error_norm=residual; docs/STAT_VARIANTS.md): consider --opt error_norm=residual",
            stacklevel=2,
        )
    if streamed and options.error_norm == "loss":
        raise StatpruneError("error_norm=loss needs the whole model on the device (not weights=stream)")
    stream = LayerStreamer(adapter.layers(), device) if streamed else None
    if streamed:
        move_outside_layers(model, adapter.layers(), device)
    elif device != home:
        model.to(device)
    timer = _Timer(device, options.profile)
    store = _store_dtype(options.store_dtype)
    offload = _offload(options.hidden_device, adapter, calib, device, store)

    def loss_weights() -> Weights | None:  # of the model as it is now (partly pruned after round 1)
        if options.error_norm != "loss":
            return None
        with timer("loss_gradients"):
            return output_grad_weights(model, adapter, calib, device, progress=options.progress)

    key, cached = None, None
    if curve_cache.enabled():  # round 1's curves from disk (module docstring: cheap ablation)
        with timer("curves_cache"):
            key = curve_cache.curve_key(
                model,
                calib,
                seed=seed,
                device=device,
                dtype=adapter.dtype,
                seq_len=target.seq_len,
                options=measure_options(options),
            )
            cached = curve_cache.load(key, device)
    try:
        t_measure = time.perf_counter()
        weights = cached.weights if cached else loss_weights()  # before the walk holds the hidden states
        with timer("calibration_forward"):
            walk = LayerWalk(
                adapter,
                calib,
                device=device,
                store_dtype=store,
                offload=offload,
                stream=stream,
                group=device.type == "cuda" and not offload,  # small layers: batches run together
            )
        removed = 0.0
        for r in range(1, options.rounds + 1):  # rounds > 1: re-measure the partly pruned model
            if r > 1:
                weights = loss_weights()
                with timer("calibration_forward"):
                    walk.capture()
            if r == 1 and cached is not None:
                curves = cached.curves
            else:
                curves = measure_curves(
                    adapter, walk, target, options, timer, options.progress, seed, weights
                )
            if r == 1 and key is not None and cached is None:
                seconds = time.perf_counter() - t_measure
                with timer("curves_cache"):
                    curve_cache.save(key, curve_cache.Measured(curves, weights), measure_seconds=seconds)
            amount = target.flops_to_remove * r / options.rounds - removed
            with timer("allocation"):
                kept = allocate(adapter, curves, target, options, to_remove=amount)
            removed += sum((c.n_units - kept[(c.layer, c.kind)]) * c.unit_flops for c in curves)
            with timer("calibration_forward"):
                walk.capture()
            chosen = apply_pruning(adapter, walk, kept, options, timer, options.progress, seed, weights)
        del walk
    finally:
        if stream is not None:
            stream.close()
            move_outside_layers(model, adapter.layers(), home)
        clear_workspaces()
    return MethodOutput(
        timings=timer.report(),
        diagnostics={
            "kept_units": {f"{layer}.{kind}": n for (layer, kind), n in sorted(kept.items())},
            "predicted_error": float(sum(float(c.errors[kept[(c.layer, c.kind)]]) for c in curves)),
            "device": str(device),
            "curves_cache": "off" if key is None else "hit" if cached is not None else "miss",
            "auto_options": {k: getattr(options, k) for k, was_auto in auto.items() if was_auto},
            "hidden_offloaded": offload,
            "weights_streamed": streamed,
            # error_norm=loss: Σ_d g_l[d] per sub-block (the last round's), to read the allocation
            **(
                {"loss_weight_totals": {f"{i}.{k}": float(g.sum()) for (i, k), g in sorted(weights.items())}}
                if weights is not None
                else {}
            ),
            # damping_select=holdout: per pruned sub-block, λ and its held-out error / λ=0's (last round)
            **({"damping_selected": chosen} if options.damping_select == "holdout" else {}),
        },
    )
