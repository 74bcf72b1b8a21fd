"""Interpolative decomposition from streamed statistics: greedy pivoted Cholesky of a Gram matrix.

Column-pivoted QR of activations A (N × n) and greedy diagonal-pivoted Cholesky of G = AᵀA pick the
same pivots with R = Lᵀ (both are determined by G), so the token dimension never has to be held.
The factorization is blocked like LAPACK's ``pstrf``: pivots are chosen one at a time from the
up-to-date diagonal, while the trailing matrix is updated once per block with one matrix product,
so the cost is BLAS-3 and runs on the GPU as well as the CPU. Only triangular solves are used.

Rank deficiency (dead neurons, duplicated heads): a pivot whose residual falls below
``rel_tol · max diag(G)`` stops the factorization (or, with ``blocks``, ends that block), so every
factor stays finite and interpolation coefficients are supported on numerically independent columns.

GPU speed: a pivot step is ~20 tiny kernels, so on a GPU the cost is launch latency and host
synchronisation, not arithmetic (n = 11008: 11008 steps, 5 MB each). Steps therefore run without
reading anything back to the host: the pivot index stays a device tensor, and a step whose pivot
fails the tolerance writes a zero column and leaves the state unchanged (so every later step of the
chunk fails too). The host reads the chunk's pass/fail flags once per chunk (≤ ``block_size``
steps) and keeps the leading passed steps, which is exactly where the step-by-step loop would
have stopped. On CUDA not even that: the chunks are queued on the assumption that every step
passes and the flags are read once, at the end (``speculate``); a failure where that assumption
could have placed later steps differently reruns the factorization chunk by chunk. On CUDA a chunk
is captured once as a CUDA graph and replayed (per matrix size and chunk position), which removes
the per-kernel launch cost; graph and eager run the same kernels, so results are identical. ``STATPRUNE_CUDA_GRAPHS=0`` turns graphs off.

Even replayed, a step of ~20 torch kernels costs 50–70 µs on an H200 (one of them reads a column of
the row-major n × n matrix, a strided read), which made the factorization 33 s of a 7B prune. So on
CUDA, when triton imports, a step is the fused Triton step of ``pivot_kernel`` instead: one kernel
reduces the previous step's per-block (max, argmax) partials to the pivot, computes the new column
from a row of the workspace (which then holds Gᵀ: a coalesced read), updates the diagonal and masks
and emits its own partials, still on the device, so chunks are captured as graphs as before. Same
arithmetic, other summation order: pivots identical except on near ties, L and residuals equal to
rounding (docs/BENCHMARKS.md §3b: 3.3× faster at n = 11008 as two kernels a step, 21 vs 70 µs).
``STATPRUNE_TRITON=0`` (or ``fused=False``) keeps the torch step; the CPU path never uses Triton.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)

GRAPH_MIN_SIZE = 256  # below this a factorization is cheap enough eagerly
OVERRUN_STEP = 64  # an overrun chunk runs a multiple of this many steps (``pivoted_cholesky``)


@dataclass
class PivotedCholesky:
    """G[p, q] ≈ Σ_c L[p, c] L[q, c]; ``perm[c]`` is the column pivoted at step c.

    ``residual[c]`` is trace of the Schur complement after c steps (‖A − A_I T‖_F² for the first
    c pivots); ``block_ends[b]`` is the step count at which block b was finished (block mode).
    """

    L: torch.Tensor  # (n, rank), rows in original column order
    perm: torch.Tensor  # (rank,) long
    residual: torch.Tensor  # (rank + 1,) float64
    block_ends: list[int]

    @property
    def rank(self) -> int:
        return int(self.perm.numel())

    @property
    def pivot_values(self) -> torch.Tensor:
        """|R_cc| = L[perm[c], c]: the magnitude of each pivot (the paper's per-unit error)."""
        return self.L[self.perm, torch.arange(self.rank, device=self.L.device)]


@dataclass
class _Workspace:
    """Device state of one factorization; fixed addresses so that CUDA graphs can replay on it.

    ``Lc`` holds the columns of the current update block (row t = column j0 + t of L); ``A`` is G
    minus the columns already folded in; ``d`` the residual diagonal; ``inactive`` the pivoted
    columns; ``blocked`` the columns not eligible now (pivoted or outside the current block).
    """

    A: torch.Tensor
    d: torch.Tensor
    inactive: torch.Tensor
    blocked: torch.Tensor
    Lc: torch.Tensor
    perm: torch.Tensor
    ok: torch.Tensor
    res: torch.Tensor
    tol: torch.Tensor
    ar: torch.Tensor
    zero: torch.Tensor
    graphs: dict[tuple[int, int, bool], torch.cuda.CUDAGraph] = field(default_factory=dict)
    stream: torch.cuda.Stream | None = None
    scratch: object | None = None  # pivot_kernel.Scratch, made on the first fused chunk

    @classmethod
    def new(cls, n: int, block_size: int, device: torch.device) -> _Workspace:
        f64 = dict(dtype=torch.float64, device=device)
        return cls(
            A=torch.empty(n, n, **f64),
            d=torch.empty(n, **f64),
            inactive=torch.zeros(n, dtype=torch.bool, device=device),
            blocked=torch.zeros(n, dtype=torch.bool, device=device),
            Lc=torch.zeros(block_size, n, **f64),
            perm=torch.zeros(block_size, dtype=torch.long, device=device),
            ok=torch.zeros(block_size, dtype=torch.bool, device=device),
            res=torch.zeros(block_size, **f64),
            tol=torch.zeros((), **f64),
            ar=torch.arange(n, device=device),
            zero=torch.zeros((), **f64),
        )


_WORKSPACES: dict[tuple[int, int, str], _Workspace] = {}
_GRAPHS_BROKEN = False


def clear_workspaces() -> None:
    """Free the cached GPU workspaces and graphs (one n × n float64 matrix per matrix size)."""
    _WORKSPACES.clear()


def _workspace(n: int, block_size: int, device: torch.device) -> _Workspace:
    """A workspace for this size: cached on CUDA (graphs stay valid across calls), fresh on CPU."""
    if device.type != "cuda":
        return _Workspace.new(n, block_size, device)
    key = (n, block_size, str(device))
    if key not in _WORKSPACES:
        _WORKSPACES[key] = _Workspace.new(n, block_size, device)
    return _WORKSPACES[key]


def _step(ws: _Workspace, t: int) -> None:
    """Pivot step t of the current update block; no host synchronisation."""
    cand = ws.d.masked_fill(ws.blocked, float("-inf"))
    p = cand.argmax().view(1)
    piv = cand.index_select(0, p)
    ok = piv > ws.tol
    s = piv.sqrt()  # NaN when nothing is eligible; such a step is masked to zero below
    col = ws.A.index_select(1, p).view(-1)
    if t:
        Lb = ws.Lc[:t]
        col = col - Lb.T.mv(Lb.index_select(1, p).view(-1))
    col = col / s
    col.masked_fill_(ws.inactive, 0.0)
    col.index_copy_(0, p, s)
    out = ws.Lc[t]
    torch.where(ok, col, ws.zero, out=out)
    ws.d.sub_(out * out)
    upd = (ws.ar == p) & ok
    ws.d.masked_fill_(upd, 0.0)
    ws.d.clamp_min_(0.0)
    ws.inactive.logical_or_(upd)
    ws.blocked.logical_or_(upd)
    ws.res[t].copy_(ws.d.sum())
    ws.perm[t : t + 1].copy_(p)
    ws.ok[t : t + 1].copy_(ok)


def _steps(ws: _Workspace, t0: int, c: int, fused: bool) -> None:
    """Steps t0 … t0+c−1, as torch kernels or as the fused Triton step (``pivot_kernel``)."""
    if not fused:
        for t in range(t0, t0 + c):
            _step(ws, t)
        return
    from statprune.stat import pivot_kernel

    if ws.scratch is None:
        ws.scratch = pivot_kernel.Scratch.new(ws.d.numel(), ws.d.device)
    pivot_kernel.chunk(ws, ws.scratch, t0, c)


def _run_chunk(ws: _Workspace, t0: int, c: int, use_graph: bool, fused: bool = False) -> None:
    """Steps t0 … t0+c−1; on CUDA the chunk is captured on first use and replayed afterwards."""
    global _GRAPHS_BROKEN
    key = (t0, c, fused)
    graph = ws.graphs.get(key) if use_graph else None
    if graph is not None:
        graph.replay()
        return
    if not use_graph or _GRAPHS_BROKEN:
        _steps(ws, t0, c, fused)
        return
    # The workspace's first capture: run the chunk eagerly on a side stream first (the warm-up
    # PyTorch asks for before a capture: cuBLAS handles and workspaces for that stream, and the
    # Triton kernels compiled and loaded), then record it there; recording runs nothing, so the
    # state is advanced exactly once. Later chunk shapes of the workspace use the same kernels and
    # stream: they are recorded, then replayed once (half the host work of a warm-up run).
    warm = bool(ws.graphs)
    current = torch.cuda.current_stream(ws.A.device)
    if ws.stream is None:
        ws.stream = torch.cuda.Stream(ws.A.device)
    ws.stream.wait_stream(current)
    if not warm:
        with torch.cuda.stream(ws.stream):
            _steps(ws, t0, c, fused)
        current.wait_stream(ws.stream)
    try:
        ws.graphs[key] = g = _capture(ws.stream, lambda: _steps(ws, t0, c, fused))
    except Exception as e:  # pragma: no cover - depends on the CUDA runtime
        _GRAPHS_BROKEN = True
        log.warning("pivoted Cholesky: CUDA graph capture failed (%s); running eagerly", e)
        current.wait_stream(ws.stream)
        if warm:
            _steps(ws, t0, c, fused)
        return
    current.wait_stream(ws.stream)
    if warm:
        g.replay()


def _capture(stream: torch.cuda.Stream, fn: Callable[[], None]) -> torch.cuda.CUDAGraph:
    """``fn``'s kernels recorded on ``stream`` as a graph. Not ``torch.cuda.graph``, whose entry
    synchronises the device and empties the allocator's cache before every capture (22 captures a
    BERT-base prune: the walk's next forward then allocates its activations from the driver again);
    a fused chunk allocates nothing and a torch-step chunk small temporaries (from the graph's own
    pool), so a capture needs no memory freed."""
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        g.capture_begin()
        try:
            fn()
        finally:
            g.capture_end()
    return g


def _graphs_enabled(n: int, device: torch.device) -> bool:
    return (
        device.type == "cuda"
        and n >= GRAPH_MIN_SIZE
        and not _GRAPHS_BROKEN
        and os.environ.get("STATPRUNE_CUDA_GRAPHS", "1") != "0"
    )


def triton_available() -> bool:
    """Whether the fused Triton step can be used (triton imports; ``STATPRUNE_TRITON=0`` turns it off)."""
    if os.environ.get("STATPRUNE_TRITON", "1") == "0":
        return False
    try:
        from statprune.stat import pivot_kernel  # noqa: F401
    except Exception:  # ImportError, or a triton that fails to initialise
        return False
    return True


def pivoted_cholesky(
    G: torch.Tensor,
    *,
    max_steps: int | None = None,
    blocks: Sequence[torch.Tensor] | None = None,
    rel_tol: float = 1e-12,
    block_size: int | None = None,
    fused: bool | None = None,
    overrun: bool | None = None,
    speculate: bool | None = None,
) -> PivotedCholesky:
    """Greedy diagonal-pivoted Cholesky of a PSD matrix (computed in float64).

    ``blocks``: optional ordered groups of column indices; pivots are taken inside the current group
    until it is exhausted (or numerically dependent), then the next group starts. This gives a
    rank-revealing factorization that respects a prescribed unit order (used for attention heads).

    ``fused``: run each step as the fused Triton step; ``None`` = on CUDA when :func:`triton_available`
    (``True`` on CPU tensors needs ``TRITON_INTERPRET=1``, which is how the tests check it).

    ``block_size``: steps between trailing updates of the workspace (None: 128 with the fused step,
    whose trailing update is then the cost at large n — 13.6 against 21.3 µs a step at n = 11008 on
    an H200, docs/BENCHMARKS.md §3b — else 64); the result differs between block sizes by rounding only.

    ``overrun`` (None: when chunks are replayed as CUDA graphs): a chunk that needs c steps runs c
    rounded up to a multiple of ``OVERRUN_STEP`` (at most up to the next trailing update) and keeps
    the first c, so the chunks starting at t0 replay at most ``block_size / OVERRUN_STEP`` graphs
    instead of one graph per length (the last chunk of a ``max_steps`` factorization, the end of
    each head block: one capture per layer otherwise). The extra steps cannot change the kept ones
    (each step reads only earlier steps); a step past the end of a block fails (nothing is
    eligible) and leaves the state as it was, and one past ``max_steps`` ends the factorization,
    whose workspace is reset before its next use. Results are bitwise those without overrun (tested).

    ``speculate`` (None: on CUDA): queue every chunk as if every step passed the tolerance, with no
    host read until the end, where all flags are read at once (one host synchronisation per
    factorization instead of one per chunk and per block; the GPU never waits for the host in
    between). When every step passed, the kernels run are exactly the chunk-by-chunk ones. A step
    that fails leaves the state unchanged, so every later step of its block fails too: when the
    first failure is in the last block, the result is cut there, bitwise what the chunk-by-chunk
    loop returns (a rank-deficient Gram's tail). A failure in an earlier block (where the loop would
    have started the next block sooner) reruns the factorization with ``speculate=False``.
    """
    G = G.to(torch.float64)
    n = G.shape[0]
    dev = G.device
    steps_cap = n if max_steps is None else min(max_steps, n)
    if blocks is None:
        blocks = [torch.arange(n, device=dev)]
    use_graph = _graphs_enabled(n, dev)
    overrun = use_graph if overrun is None else overrun
    speculate = dev.type == "cuda" if speculate is None else speculate
    if fused is None:
        fused = dev.type == "cuda" and triton_available()
    if block_size is None:
        block_size = 128 if fused else 64
    ws = _workspace(n, block_size, dev)
    ws.A.copy_(G.mT if fused else G)  # the fused step reads row p: exactly column p of G
    ws.d.copy_(torch.diagonal(G)).clamp_min_(0.0)
    ws.inactive.zero_()
    ws.Lc.zero_()
    if n:
        torch.mul(ws.d.max(), rel_tol, out=ws.tol)  # the same double product as on the host, no sync
    else:
        ws.tol.zero_()

    Lt = torch.zeros(steps_cap, n, dtype=torch.float64, device=dev)  # row c = column c of L
    perm = torch.zeros(steps_cap, dtype=torch.long, device=dev)
    residual = torch.zeros(steps_cap + 1, dtype=torch.float64, device=dev)
    residual[0] = ws.d.sum()
    passed = torch.zeros(steps_cap, dtype=torch.bool, device=dev) if speculate else None
    block_ends: list[int] = []
    j = 0  # accepted steps
    j0 = 0  # first step whose column is not yet folded into A (row 0 of ws.Lc)
    last_start = 0  # where the last block's steps start
    for blk in blocks:
        blk = torch.as_tensor(blk, device=dev, dtype=torch.long)
        last_start = j
        ws.blocked.fill_(True)
        ws.blocked[blk] = False
        ws.blocked.logical_or_(ws.inactive)
        # speculating, a block that is not all eligible shows up as failed steps (checked below)
        remaining = len(blk) if speculate else int((~ws.blocked).sum())
        while j < steps_cap and remaining > 0:
            t0 = j - j0
            c = min(block_size - t0, remaining, steps_cap - j)
            run = min(block_size - t0, -(-c // OVERRUN_STEP) * OVERRUN_STEP) if overrun else c
            _run_chunk(ws, t0, run, use_graph, fused)
            if speculate:
                passed[j : j + c] = ws.ok[t0 : t0 + c]
                n_ok = c
            else:
                n_ok = _passed_prefix(ws.ok[t0 : t0 + c].cpu())  # the one host read per chunk
            Lt[j : j + n_ok] = ws.Lc[t0 : t0 + n_ok]
            perm[j : j + n_ok] = ws.perm[t0 : t0 + n_ok]
            residual[j + 1 : j + 1 + n_ok] = ws.res[t0 : t0 + n_ok]
            j += n_ok
            remaining -= n_ok
            if j - j0 == block_size:
                ws.A.addmm_(ws.Lc.T, ws.Lc, alpha=-1.0)
                ws.Lc.zero_()
                j0 = j
            if n_ok < c:
                break
        block_ends.append(j)
    if speculate:
        first = _passed_prefix(passed[:j].cpu())  # the one host read of a speculative factorization
        if first < j:
            if first < last_start:  # a later block would have started earlier: redo step by step
                return pivoted_cholesky(
                    G,
                    max_steps=max_steps,
                    blocks=blocks,
                    rel_tol=rel_tol,
                    block_size=block_size,
                    fused=fused,
                    overrun=overrun,
                    speculate=False,
                )
            j = block_ends[-1] = first
    return PivotedCholesky(
        L=Lt[:j].T,
        perm=perm[:j].clone(),
        residual=residual[: j + 1].cpu(),
        block_ends=block_ends,
    )


def _passed_prefix(flags: torch.Tensor) -> int:
    """How many leading steps passed the tolerance (``flags``: their pass/fail flags, on the host)."""
    return len(flags) if bool(flags.all()) else int((~flags).nonzero()[0])


def interpolation_matrix(chol: PivotedCholesky, steps: int, kept: torch.Tensor, n: int) -> torch.Tensor:
    """T (len(kept) × n) with A ≈ A[:, kept] T: identity on ``kept``, least squares elsewhere.

    The least-squares fit uses the first ``steps`` pivots (all of which must be in ``kept``):
    T[pivots, j] = L11⁻ᵀ L[j, :steps]ᵀ, a triangular solve. Kept columns that are not pivots
    (numerically dependent ones) get zero coefficients, so T stays finite.
    """
    dev = chol.L.device
    kept = torch.as_tensor(kept, dtype=torch.long, device=dev)
    T = torch.zeros(len(kept), n, dtype=torch.float64, device=dev)
    T[torch.arange(len(kept), device=dev), kept] = 1.0
    if steps == 0:
        return T
    piv = chol.perm[:steps]
    pos = torch.full((n,), -1, dtype=torch.long, device=dev)
    pos[kept] = torch.arange(len(kept), device=dev)
    if bool((pos[piv] < 0).any()):
        raise ValueError("every pivot used for the fit must be kept")
    is_kept = pos >= 0
    rest = torch.nonzero(~is_kept).flatten()
    if len(rest):
        L11 = chol.L[piv, :steps]  # lower triangular in pivot order
        coef = torch.linalg.solve_triangular(L11.T, chol.L[rest, :steps].T, upper=True)
        T[pos[piv][:, None], rest[None, :]] = coef
    return T
