"""Calibration data and the sequential layer walk.

Layer-0 inputs are captured once (a pre-hook records the exact positional and keyword arguments the
stock model passes to its first layer, then stops the forward), so the walk needs no knowledge of
masks, position embeddings or RoPE. Each layer is then run on the stored hidden states; hook-point
activations are streamed into accumulators (Gram matrices), with padding rows dropped, so memory
does not grow with the number of calibration tokens beyond one layer's activations.

Memory discipline for large models (7B on one GPU): the walk holds the calibration set's hidden
states at one layer boundary only (inputs and outputs of the current layer), in ``store_dtype``
(bf16 for bf16 models), on the compute device when they fit or in pinned CPU memory
(``offload=True``), copied to the GPU one batch at a time. Gram accumulators are float64. Models larger than the GPU
keep their weights in host memory and pass a ``stream`` (statprune/streaming.py) that moves one
layer at a time.

Small layers on a GPU (``group=True``, which STAT sets on CUDA): launching a layer's kernels costs
the host more than the GPU takes to run a small layer on one batch, so the walk runs consecutive
batches of one shape as one forward (:func:`walk_groups`), while hooks, hidden states and outputs
stay per batch (BERT-base, 8 batches of 64 × 128: a later prune's forwards 0.27–0.48 → 0.14–0.16 s,
docs/BENCHMARKS.md §3g).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from statprune.adapters import Adapter
from statprune.errors import StatpruneError
from statprune.runtime import MODEL_INPUTS
from statprune.streaming import LayerStreamer, free_bytes


@dataclass
class Calibration:
    """Padded calibration batches (CPU tensors) plus what was drawn, for reports."""

    batches: list[dict[str, torch.Tensor]]
    num_examples: int
    indices: list[int]

    @property
    def num_tokens(self) -> int:
        return int(sum(b["attention_mask"].sum() for b in self.batches))

    @property
    def has_labels(self) -> bool:
        return all("labels" in b for b in self.batches)


def draw_indices(population: int, n: int, seed: int) -> list[int]:
    """``n`` distinct indices from a seeded permutation; nested: a smaller draw is a prefix of a larger one."""
    if n <= 0:
        raise StatpruneError(f"calibration size must be positive, got {n}")
    if n > population:
        raise StatpruneError(f"calibration size {n} is larger than the split ({population} examples)")
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(population, generator=gen)[:n].tolist()


def make_calibration(
    examples: Sequence[dict[str, torch.Tensor]], n: int, seed: int, *, batch_size: int, pad_token_id: int
) -> Calibration:
    """Draw ``n`` encoded examples without replacement and pad them into batches."""
    from statprune.data.collate import collate

    idx = draw_indices(len(examples), n, seed)
    chosen = [examples[i] for i in idx]
    batches = [collate(chosen[s : s + batch_size], pad_token_id) for s in range(0, n, batch_size)]
    return Calibration(batches=batches, num_examples=n, indices=idx)


Hook = Callable[[torch.Tensor, torch.Tensor], None]  # hook(x, mask): a module's input, real tokens


class _Captured(Exception):
    pass


class _Stop(Exception):
    """Raised by the hook of ``LayerWalk.run``'s ``stop_after`` module: the rest of the layer is not needed."""


def _first(out: object) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out  # type: ignore[index]


def _to(x: object, device: torch.device) -> object:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, tuple):
        return tuple(_to(v, device) for v in x)
    if isinstance(x, list):
        return [_to(v, device) for v in x]
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: batch[k].to(device) for k in MODEL_INPUTS if k in batch}


_ALL_REAL = WeakIdKeyDictionary()  # mask tensor → whether every token is real


def real_rows(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x[mask]``: the rows of ``x`` (..., d) at real tokens, in order. When every token is real
    (no padding, e.g. packed LM windows) it is ``x`` flattened: a view, with no gather and no host
    synchronisation; that answer is kept per mask tensor (the walk's masks are never modified)."""
    full = _ALL_REAL.get(mask)
    if full is None:
        full = _ALL_REAL[mask] = bool(mask.all())
    return x.reshape(-1, x.shape[-1]) if full else x[mask]


class LayerWalk:
    """Hidden states of the calibration set at the current layer, and a way to run one layer on them.

    Hidden states stay on ``device`` in ``store_dtype`` (bf16 halves the memory of a 7B walk), or
    in pinned CPU memory with ``offload=True`` (moved to ``device`` one batch at a time, without
    blocking the host); each layer runs in the model's dtype. With a ``stream``
    (:class:`~statprune.streaming.LayerStreamer`) the weights stay in host memory and a layer is on
    ``device`` only between the caller's ``stream.fetch(i)`` and ``stream.release(i)``.
    """

    def __init__(
        self,
        adapter: Adapter,
        calib: Calibration,
        *,
        device: torch.device | None = None,
        store_dtype: torch.dtype | None = None,
        offload: bool = False,
        stream: LayerStreamer | None = None,
        group: bool = False,
    ) -> None:
        self.adapter = adapter
        self.stream = stream
        self.calib = calib
        self.device = torch.device(device) if device is not None else adapter.device
        self.store_dtype = store_dtype
        # pinned CPU storage only makes sense when computing on an accelerator
        self.offload = offload and self.device.type != "cpu"
        self.hidden: list[torch.Tensor] = []
        self.args: list[tuple] = []
        self.kwargs: list[dict] = []
        self.masks: list[torch.Tensor] = []  # bool (B, S): real tokens
        self.group = group  # run() runs consecutive batches of one shape as one forward (walk_groups)
        self.groups: list[list[int]] = []
        self._group_inputs: dict[int, tuple[tuple, dict]] = {}  # a multi-batch group's layer-0 args, kwargs
        self.capture()

    @torch.no_grad()
    def capture(self) -> None:
        """Record layer-0 inputs for every calibration batch (and the arguments of each group's forward)."""
        self.hidden, self.args, self.kwargs, self.masks = [], [], [], []
        for batch in self.calib.batches:
            hidden, args, kwargs = self._layer0_inputs(batch)
            self.hidden.append(self._store(hidden))
            self.args.append(args)
            self.kwargs.append(kwargs)
            self.masks.append(batch["attention_mask"].to(self.device).bool())
        self.groups = [[b] for b in range(len(self.hidden))]
        self._group_inputs = {}
        if self.group:
            self.groups = walk_groups(self.calib.batches, self._group_limit())
        for g in self.groups:
            if len(g) > 1:  # the stock model's own arguments for the concatenated batch (masks, RoPE)
                first = self.calib.batches[g[0]]
                cat = {
                    k: torch.cat([self.calib.batches[b][k] for b in g]) for k in MODEL_INPUTS if k in first
                }
                self._group_inputs[g[0]] = self._layer0_inputs(cat)[1:]

    def _group_limit(self) -> Callable[[int], int]:
        """Most tokens per grouped forward at sequence length s: :data:`GROUP_TOKENS`, a forward of
        about :data:`GROUP_WORK` (tokens × the largest layer's parameters), and the layer's
        activations within a quarter of the free memory (per token ≈ 8 hidden-size and 3 FFN-width
        vectors, plus one row of attention scores per head in case the attention materialises them)."""
        ad = self.adapter
        layers = range(ad.num_layers)
        params = max(_parameters(ad.layers()[i]) for i in layers)
        width = max(ad.down_proj(i).in_features for i in layers)
        heads = max(ad.layer_shape(i).num_heads for i in layers)
        budget = free_bytes(self.device) // 4
        itemsize = ad.dtype.itemsize

        def limit(s: int) -> int:
            per_token = (8 * ad.hidden_size + 3 * width) * itemsize + heads * s * 4
            return int(min(GROUP_TOKENS, GROUP_WORK // params, budget // per_token))

        return limit

    def _layer0_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple, dict]:
        """(hidden states, the other positional arguments, the keyword arguments) that the stock
        model passes to its first layer for ``batch``."""
        rec: dict[str, object] = {}

        def hook(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
            rec["args"], rec["kwargs"] = args, kwargs
            raise _Captured

        handle = self.adapter.layers()[0].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with suppress(_Captured):
                self.adapter.model(**model_inputs(batch, self.device), use_cache=False)
        finally:
            handle.remove()
        args, kwargs = rec["args"], dict(rec["kwargs"])  # type: ignore[arg-type]
        hidden = args[0] if args else kwargs.pop("hidden_states")
        return hidden, tuple(args[1:]), kwargs

    def _store(self, h: torch.Tensor) -> torch.Tensor:
        h = h.detach().to(self.store_dtype) if self.store_dtype is not None else h.detach()
        if not self.offload:
            return h
        # Same-stream ordering makes the later host-to-device copy see the finished copy.
        return torch.empty(h.shape, dtype=h.dtype, pin_memory=True).copy_(h, non_blocking=True)

    def _load(self, h: torch.Tensor) -> torch.Tensor:
        return h.to(self.device, non_blocking=True) if self.offload else h

    @torch.no_grad()
    def run(
        self,
        i: int,
        hooks: dict[nn.Module, Hook] | None = None,
        *,
        keep_outputs: bool = True,
        stop_after: nn.Module | None = None,
        forward: Callable[[int], object] | None = None,
    ) -> list[torch.Tensor]:
        """Run layer ``i`` on every batch; ``hooks[module](x, mask)`` sees each module's input.

        ``stop_after`` (a key of ``hooks``): end each batch's forward once that module's hook has
        run, when only statistics up to it are needed (no outputs then). ``forward(b)``: what to run
        on batch ``b`` instead of the layer (part of it, :class:`LayerReplay`; no outputs then).
        """
        if (stop_after is not None or forward is not None) and keep_outputs:
            raise ValueError("stop_after and forward give no outputs (keep_outputs=False)")
        if stop_after is not None and stop_after not in (hooks or {}):
            raise ValueError("stop_after needs a hook on that module")
        layer = self.adapter.layers()[i]
        dtype = self.adapter.dtype
        handles = []
        parts: list[tuple[int, slice]] = []  # the batches in the current forward, and their rows of it
        for mod, fn in (hooks or {}).items():

            def pre(_m: nn.Module, args: tuple, fn: Callable = fn, stop: bool = mod is stop_after) -> None:
                for b, rows in parts:  # one call per batch, as without groups
                    fn(args[0][rows], self.masks[b])
                if stop:
                    raise _Stop

            handles.append(mod.register_forward_pre_hook(pre))
        outs: list[torch.Tensor] = []
        # finiteness is checked once per layer, not per batch: no host sync inside the loop
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        groups = self.groups if forward is None else [[b] for b in range(len(self.hidden))]
        try:
            for g in groups:
                parts[:] = _rows(g, self.hidden)
                if stop_after is not None or forward is not None:
                    try:
                        if forward is not None:
                            forward(g[0])
                        else:
                            self._forward(layer, g, dtype)
                    except _Stop:
                        continue
                    if stop_after is not None:
                        raise StatpruneError(f"layer {i}'s forward never reached the module to stop after")
                    continue
                out = _first(self._forward(layer, g, dtype))
                for b, rows in parts:
                    finite &= torch.isfinite(real_rows(out[rows], self.masks[b])).all()
                    if keep_outputs:
                        outs.append(self._store(out[rows]))
            if not forward and stop_after is None and not bool(finite):
                raise StatpruneError(
                    f"the model produces NaN/inf activations at layer {i} on calibration data; "
                    "check the model dtype (try float32) and the checkpoint"
                )
        finally:
            for hd in handles:
                hd.remove()
            if self.stream is not None:
                self.stream.settle()
        return outs

    def _forward(self, layer: nn.Module, g: list[int], dtype: torch.dtype) -> object:
        """``layer`` run once over the batches ``g`` (concatenated when there are several)."""
        if len(g) == 1:
            return layer(self._load(self.hidden[g[0]]).to(dtype), *self.args[g[0]], **self.kwargs[g[0]])
        args, kwargs = self._group_inputs[g[0]]
        return layer(torch.cat([self._load(self.hidden[b]).to(dtype) for b in g]), *args, **kwargs)

    def advance(self, outputs: list[torch.Tensor]) -> None:
        self.hidden = outputs

    def energy(self) -> float:
        """Squared Frobenius norm of the current hidden states over real tokens."""
        return float(
            sum(real_rows(self._load(h), m).double().pow(2).sum() for h, m in zip(self.hidden, self.masks))
        )


# A forward over a group of batches: at most this many tokens, and tokens × the layer's parameters at
# most this much (≈ 1 TFLOP, a few milliseconds of H200 time: well above the host's launch cost).
GROUP_TOKENS = 65536
GROUP_WORK = 5e11


def walk_groups(
    batches: Sequence[dict[str, torch.Tensor]], max_tokens: Callable[[int], int]
) -> list[list[int]]:
    """Consecutive batches of one shape and the same inputs, grouped while the group has at most
    ``max_tokens(seq_len)`` tokens (:meth:`LayerWalk._group_limit`). A batch alone over the limit (a
    7B layer on 16k tokens) stays alone: such a forward keeps the GPU busy by itself."""
    groups: list[list[int]] = []
    tokens = 0
    for b, batch in enumerate(batches):
        rows, seq = batch["input_ids"].shape
        if groups and _same_inputs(batches[groups[-1][0]], batch) and tokens + rows * seq <= max_tokens(seq):
            groups[-1].append(b)
            tokens += rows * seq
        else:
            groups.append([b])
            tokens = rows * seq
    return groups


def _same_inputs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two batches' model inputs can be concatenated: same keys, same shapes after the batch dim."""
    keys = [k for k in MODEL_INPUTS if k in a]
    return keys == [k for k in MODEL_INPUTS if k in b] and all(a[k].shape[1:] == b[k].shape[1:] for k in keys)


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _rows(g: list[int], hidden: list[torch.Tensor]) -> list[tuple[int, slice]]:
    """Each batch of group ``g`` with its rows of the group's concatenated forward."""
    out, start = [], 0
    for b in g:
        n = hidden[b].shape[0]
        out.append((b, slice(start, start + n)))
        start += n
    return out


class LayerReplay:
    """STAT's apply walk on a layer with a plain pre-norm residual, without rerunning the layer.

    Where the adapter says ``plain_residual`` (layer(x) = m + ffn(norm₂(m)), m = x + W_O·z, z the
    out projection's input, h the down projection's input), one stopped forward per sublayer does:

    1. :meth:`attention_hooks`: the forward that feeds the head Gram (stopped at W_O) records z;
    2. :meth:`ffn_inputs`, after the heads were pruned: m = x + W_O'·z[kept], then norm₂ and the FFN's
       input linears on m (stopped at W2), with the caller's hooks on W2, recording h;
    3. :meth:`outputs`, after the neurons were pruned: m + W2'·h[kept].

    These are the operations a rerun of the pruned layer performs minus attention (twice) and the
    FFN's input linears, up to float noise (the rerun's row-sliced GEMMs may round differently).
    Recordings are in the model's dtype on the walk's device (:func:`replay_fits` decides).
    """

    def __init__(self, walk: LayerWalk, i: int) -> None:
        self.walk, self.i = walk, i
        self.z: list[torch.Tensor] = []
        self.m: list[torch.Tensor] = []
        self.h: list[torch.Tensor] = []

    def attention_hooks(self, hooks: dict[nn.Module, Hook]) -> dict[nn.Module, Hook]:
        """``hooks`` with W_O's hook also recording z."""
        out_proj = self.walk.adapter.out_proj(self.i)
        return {**hooks, out_proj: _recording(hooks.get(out_proj), self.z)}

    def ffn_inputs(self, kept_dims: torch.Tensor | None, hooks: dict[nn.Module, Hook]) -> None:
        """Run the FFN's first half on m = x + W_O'·z[kept_dims] (None: all), ``hooks`` seeing W2's input."""
        adapter, walk = self.walk.adapter, self.walk
        out_proj, down = adapter.out_proj(self.i), adapter.down_proj(self.i)
        norm, ffn = adapter.post_attention_norm(self.i), adapter.ffn(self.i)

        def forward(b: int) -> None:
            z = self.z[b] if kept_dims is None else self.z[b].index_select(-1, kept_dims.to(self.z[b].device))
            self.z[b] = torch.empty(0)  # freed as the walk goes
            m = walk._load(walk.hidden[b]).to(adapter.dtype) + out_proj(z)
            self.m.append(m)
            ffn(norm(m))

        walk.run(
            self.i,
            {**hooks, down: _recording(hooks.get(down), self.h)},
            keep_outputs=False,
            stop_after=down,
            forward=forward,
        )
        self.z = []

    def outputs(self, kept: torch.Tensor | None) -> list[torch.Tensor]:
        """The layer's outputs with the pruned down projection; ``kept``: the kept neurons, in the
        order of its new columns (None: all)."""
        down = self.walk.adapter.down_proj(self.i)
        outs = []
        finite = torch.ones((), dtype=torch.bool, device=self.walk.device)
        for b, (m, h) in enumerate(zip(self.m, self.h)):
            if kept is not None:
                h = h.index_select(-1, kept.to(h.device))
            out = m + down(h)
            finite &= torch.isfinite(real_rows(out, self.walk.masks[b])).all()
            outs.append(self.walk._store(out))
            self.m[b] = self.h[b] = torch.empty(0)
        self.m, self.h = [], []
        if not bool(finite):
            raise StatpruneError(f"NaN/inf activations at layer {self.i} after pruning")
        return outs


def _recording(inner: Hook | None, store: list[torch.Tensor]) -> Hook:
    def record(x: torch.Tensor, mask: torch.Tensor) -> None:
        if inner is not None:
            inner(x, mask)
        store.append(x.detach().clone())

    return record


def replay_fits(walk: LayerWalk) -> bool:
    """Whether :class:`LayerReplay` applies: the adapter has a plain residual, no module of a layer
    has a forward hook that could change its output (e.g. SliceGPT's shortcuts), the hidden states
    are not offloaded, and one layer's recordings take at most a quarter of the free memory."""
    adapter = walk.adapter
    if walk.offload or not adapter.plain_residual:
        return False
    if any(m._forward_hooks for m in adapter.layers().modules()):
        return False
    width = max(adapter.down_proj(i).in_features for i in range(adapter.num_layers)) + 2 * adapter.hidden_size
    need = sum(h.shape[0] * h.shape[1] for h in walk.hidden) * width * adapter.dtype.itemsize
    return need <= free_bytes(walk.device) // 4


GramPrecision = Literal["auto", "exact_products", "float64"]


class Gram:
    """Streaming XᵀX over real (non-padding) tokens, accumulated in ``dtype`` (float64 by default).

    ``precision`` picks how each chunk of ``chunk_rows`` tokens is multiplied before it is added
    into the accumulator:

    * ``exact_products`` (default): bf16/fp16 rows on CUDA take a GEMM with float32 output (~10×
      the float64 rate on an H100/H200). A product of two half-precision numbers
      is exact in float32; only the within-chunk sums round, ~√chunk·2⁻²⁴ relative. Other rows are
      multiplied in ``dtype``.
    * ``auto``: as above, and float32 (or half) rows on the CPU are multiplied in float32 too (twice
      the float64 GEMM peak; the Grams are about a quarter of a CPU STAT run). Products of float32
      numbers round (2⁻²⁴ each), so with u = 2⁻²⁴ and c = ``chunk_rows``:
      |ΔG_ij| ≤ (c + 1)·u·Σ_t |x_ti||x_tj| ≤ (c + 1)·u·√(G_ii·G_jj), a worst case of 1.2e-4 relative
      at c = 2048; measured on SmolLM2 and MiniLM activations ‖ΔG‖_F/‖G‖_F ≤ 3.3e-7 at every hook
      point (benchmarks/cpu_gram.py), the order of the rounding that computing the activations in
      float32 has already put into X. A chunk whose float32 diagonal reaches 1e38 (some partial
      sum may have overflowed) is redone in ``dtype``.
    * ``float64``: every product and sum in ``dtype``.

    The two float32-output paths multiply only the column blocks on and above the diagonal
    (:func:`upper_blocks`: 0.56 of the full GEMM at d = 11008 on a GPU, 0.58 at d = 1536 on the
    CPU) and accumulate them into G's upper block triangle; the blocks below are copied from it
    when ``G`` is read, so G is exactly symmetric. Every entry is the same dot product over the same
    rows as in the full product; the GEMM kernel for a block may sum in another order.
    """

    def __init__(
        self,
        dim: int,
        device: torch.device,
        dtype: torch.dtype = torch.float64,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        chunk_rows: int | None = None,
        precision: GramPrecision = "exact_products",
    ) -> None:
        self._G = torch.zeros(dim, dim, device=device, dtype=dtype)
        self._cuts: list[int] | None = None  # block cuts whose lower blocks are stale
        self.count = 0
        self.transform = transform
        self.precision = precision
        cuda = torch.device(device).type == "cuda"
        self.chunk_rows = chunk_rows or (16384 if cuda else CPU_CHUNK_ROWS)
        self.block, self.align = (GPU_GRAM_BLOCK, BLOCK_ALIGN) if cuda else (GRAM_BLOCK, 1)

    @property
    def G(self) -> torch.Tensor:
        """The Gram matrix (the blocks below the diagonal filled in from those above, if stale)."""
        if self._cuts is not None:
            for a0, a in itertools.pairwise(self._cuts):
                self._G[a:, a0:a].copy_(self._G[a0:a, a:].T)
            self._cuts = None
        return self._G

    def __call__(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        rows = real_rows(x, mask)
        if self.transform is not None:
            rows = self.transform(rows)
        self.count += rows.shape[0]
        if self.precision == "float64" or self._G.dtype not in (torch.float32, torch.float64):
            self._exact(rows)
        elif _half_gram(rows, self._G):
            mm = _float32_product
            for s in range(0, rows.shape[0], self.chunk_rows):
                self._add_upper(upper_blocks(rows[s : s + self.chunk_rows], self.block, self.align, mm))
        elif rows.device.type == "cpu" and self._float32_ok(rows.dtype):
            for s in range(0, rows.shape[0], self.chunk_rows):
                r = rows[s : s + self.chunk_rows].float()
                blocks = list(upper_blocks(r, self.block, self.align))
                # every partial sum |Σ x_ti·x_tj| ≤ max(G_ii, G_jj): a finite diagonal means no overflow
                if max(float(g[:, : a - a0].diagonal().max()) for a0, a, g in blocks) < 1e38:
                    self._add_upper(blocks)
                else:
                    self._exact(r)
        else:
            self._exact(rows)

    def _add_upper(self, blocks: Iterable[tuple[int, int, torch.Tensor]]) -> None:
        cuts = [0]
        for a0, a, g in blocks:
            self._G[a0:a, a0:].add_(g)
            cuts.append(a)
        self._cuts = cuts  # the same for every chunk: they depend on d and the block size only

    def _float32_ok(self, dtype: torch.dtype) -> bool:
        half = dtype in (torch.bfloat16, torch.float16)  # products exact in float32
        return (
            self.precision == "auto" and self._G.dtype == torch.float64 and (half or dtype == torch.float32)
        )

    def _exact(self, rows: torch.Tensor) -> None:
        rows = rows.to(self._G.dtype)
        self.G.addmm_(rows.T, rows)  # the whole matrix: G is made whole first


CPU_CHUNK_ROWS = 2048  # float32 partial sums over at most this many tokens (error bound above)
GRAM_BLOCK = 256  # column block of the CPU Gram: blocks on and above the diagonal only
GPU_GRAM_BLOCK = 1536  # on a GPU larger blocks keep each GEMM efficient (d = 11008: 8 blocks)
BLOCK_ALIGN = 64  # GPU block edges at multiples of 64 columns (aligned half-precision GEMM operands)


def _float32_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.mm(a, b, out_dtype=torch.float32)


def upper_blocks(
    r: torch.Tensor,
    block: int,
    align: int = 1,
    mm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.mm,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """rᵀr's block rows on and right of the diagonal, ``(start, end, mm(r[:, start:end]ᵀ, r[:, start:]))``,
    one at a time: (k + 1)/2k of the full GEMM's work for k blocks of about ``block`` columns, edges
    rounded down to multiples of ``align``; every entry is the same dot product over the same rows
    as in the full product."""
    d = r.shape[1]
    k = max(1, math.ceil(d / block))
    cuts = sorted({(d * j // k) // align * align for j in range(k)} | {d})
    for a0, a in itertools.pairwise(cuts):
        yield a0, a, mm(r[:, a0:a].T, r[:, a0:])


_HALF_GRAM_OK: bool | None = None


def _half_gram(rows: torch.Tensor, G: torch.Tensor) -> bool:
    """Whether the half-precision GEMM with float32 output can be used (probed once per process)."""
    global _HALF_GRAM_OK
    if rows.dtype not in (torch.bfloat16, torch.float16) or rows.device.type != "cuda":
        return False
    if G.dtype not in (torch.float32, torch.float64):
        return False
    if _HALF_GRAM_OK is None:
        try:
            probe = torch.ones(4, 4, dtype=rows.dtype, device=rows.device)
            _HALF_GRAM_OK = bool(torch.mm(probe, probe, out_dtype=torch.float32).dtype == torch.float32)
        except (RuntimeError, TypeError):
            _HALF_GRAM_OK = False
    return _HALF_GRAM_OK
