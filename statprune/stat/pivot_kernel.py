"""Greedy pivoted-Cholesky steps (``id._step``) as one Triton kernel per step instead of ~20 torch ones.

On a GPU a step is pure launch latency (n = 11008: ~5 MB of traffic, 50–67 µs as 20 kernels even
replayed from a CUDA graph). Here a chunk of c steps (``chunk``) is c + 2 kernels:

1. ``_column_kernel`` with ``UPDATE=False`` (the chunk's first launch) emits per-program partials
   over blocks of n: (max, first argmax) of d masked by ``blocked`` — the pivot candidates — and Σ d.
2. ``_column_kernel`` with ``UPDATE=True``, once per step: every program reduces the previous
   launch's partials to the pivot (ties to the first index, like ``torch.argmax``; each program
   computes the same p), program 0 writes the previous step's ``res`` (= Σ d after it), then it
   builds the new column L[:, t] from ROW p of the workspace matrix (the workspace holds the
   transpose of G, so the row is the column, read coalesced), minus Σ_{s<t} Lc[s, :] Lc[s, p] as
   one tile product, scaled by 1/√piv, masked (pivoted columns → 0, whole column → 0 when the pivot
   fails the tolerance), written to Lc[t]; it updates d (clamped at 0), the inactive/blocked masks
   at p, and emits this step's partials. Consecutive launches alternate between two partial
   buffers (a launch reads one and writes the other; launches on a stream run in order).
3. ``_reduce_kernel`` (one program) writes the last step's ``res``.

The pivot index never leaves the device, so ``id._run_chunk`` still captures a chunk as one CUDA
graph. The arithmetic is ``_step``'s; only summation order differs (the Σ_{s<t} dot product and
Σ d are tree sums here), so L and the residuals agree to rounding (≤ 3e-14 of max |L| in the
tests and on an H200, n ≤ 14336) and the pivots are the same except where two candidates'
residual diagonals agree to within rounding (a near tie), where either order may pick either —
exact ties (equal bits) break to the first index in both. Float64 throughout. (Until 2026-12-01
the reduction was a second kernel after every step: the same pivots and L, one launch more per step.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from statprune.stat import triton_key

triton_key.memoize()  # 0.3–0.4 s less at a fresh process's first launch (stat/triton_key.py)

BLOCK_N = 64  # columns per program of the column kernel, unless that needs more programs than SMs
ROWS = 64  # rows of Lc per tile of the Σ_{s<t} product
MIN_PARTIALS = 256  # partial slots reduced per launch (≥ programs): one specialization while programs ≤ 256


@triton.jit
def _pivot(val, idx, programs, P: tl.constexpr):
    """(max, first index of the max) over the programs' partials."""
    i = tl.arange(0, P)
    m = i < programs
    v = tl.load(val + i, mask=m, other=float("-inf"))
    ix = tl.load(idx + i, mask=m, other=2**62)
    best = tl.max(v, axis=0)
    return best, tl.min(tl.where(m & (v == best), ix, 2**62), axis=0)


def column_block(n: int, sms: int) -> int:
    """Columns per program: 64, or 128 when 64 would need more programs than ``sms``, so a step
    runs in one wave up to n = 128·SMs (n = 11008 on 132 SMs: 86 programs of 128, not 172 of 64;
    4% less time a step on an H200, docs/BENCHMARKS.md §3d). Wider tiles would spill registers."""
    return BLOCK_N if triton.cdiv(n, BLOCK_N) <= sms else 2 * BLOCK_N


def _sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # the interpreter (tests): an H100/H200's count
    return torch.cuda.get_device_properties(device).multi_processor_count


@triton.jit(do_not_specialize=["t", "prev", "programs"])
def _column_kernel(
    A,  # (n, n) float64, row p = column p of the Schur complement
    Lc,  # (block_size, n) float64, row s = column s of the current update block
    d,  # (n,) float64 residual diagonal
    inactive,  # (n,) uint8
    blocked,  # (n,) uint8
    tol,  # () float64
    perm,  # (block_size,) int64
    ok_out,  # (block_size,) uint8
    res,  # (block_size,) float64
    in_val,  # (P,) float64, the previous launch's partials (UPDATE)
    in_idx,  # (P,) int64
    in_sum,  # (P,) float64
    out_val,  # (P,) float64, this launch's partials
    out_idx,  # (P,) int64
    out_sum,  # (P,) float64
    n,
    t,
    prev,  # the step whose res the previous launch's Σ d is (−1: it was not a step)
    programs,
    UPDATE: tl.constexpr,
    TB: tl.constexpr,
    NT: tl.constexpr,
    BLOCK: tl.constexpr,
    P: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    dv = tl.load(d + offs, mask=m, other=0.0)
    blk = tl.load(blocked + offs, mask=m, other=1) != 0
    if UPDATE:
        pv, p = _pivot(in_val, in_idx, programs, P)
        if (pid == 0) & (prev >= 0):
            # Σ d written out here and in _reduce_kernel, not as a shared @triton.jit helper: on an
            # H200 the helper compiled to another summation order, which moved BERT-base's kept units
            j = tl.arange(0, P)
            tl.store(res + prev, tl.sum(tl.load(in_sum + j, mask=j < programs, other=0.0), axis=0))
        ok = pv > tl.load(tol)
        s = tl.sqrt(tl.where(ok, pv, 1.0))  # the column is zeroed below when not ok
        a = tl.load(A + p * n + offs, mask=m, other=0.0)
        dot = tl.zeros([BLOCK], tl.float64)
        for i in tl.static_range(NT):  # Σ_{s<t} Lc[s, :] Lc[s, p], TB rows at a time
            if i * TB < t:
                rows = i * TB + tl.arange(0, TB)
                rm = rows < t
                lp = tl.load(Lc + rows * n + p, mask=rm, other=0.0)
                tile = tl.load(
                    Lc + rows[:, None] * n + offs[None, :], mask=rm[:, None] & m[None, :], other=0.0
                )
                dot += tl.sum(tile * lp[:, None], axis=0)
        a = a - dot
        col = a / s
        inact = tl.load(inactive + offs, mask=m, other=1) != 0
        col = tl.where(inact, 0.0, col)
        is_p = offs == p
        col = tl.where(is_p, s, col)
        out = tl.where(ok, col, 0.0)
        tl.store(Lc + t * n + offs, out, mask=m)
        dv = dv - out * out
        upd = tl.where(ok, is_p, False)
        dv = tl.where(upd, 0.0, dv)
        dv = tl.where(dv < 0.0, 0.0, dv)
        tl.store(d + offs, dv, mask=m)
        one = tl.full([BLOCK], 1, tl.uint8)
        tl.store(inactive + offs, one, mask=m & upd)
        tl.store(blocked + offs, one, mask=m & upd)
        blk = blk | upd
        if pid == 0:
            tl.store(perm + t, p)
            tl.store(ok_out + t, ok.to(tl.uint8))
    cand = tl.where(blk | (offs >= n), float("-inf"), dv)
    best = tl.max(cand, axis=0)
    arg = tl.min(tl.where(m & (cand == best), offs, n), axis=0)
    tl.store(out_val + pid, best)
    tl.store(out_idx + pid, arg.to(tl.int64))
    tl.store(out_sum + pid, tl.sum(dv, axis=0))


@triton.jit(do_not_specialize=["t", "programs"])
def _reduce_kernel(part_sum, res, programs, t, P: tl.constexpr):
    i = tl.arange(0, P)
    tl.store(res + t, tl.sum(tl.load(part_sum + i, mask=i < programs, other=0.0), axis=0))


@dataclass
class Scratch:
    """Device buffers of the fused steps for one workspace (fixed addresses, for graph replay):
    two sets of per-program partials, written by alternate launches."""

    part_val: torch.Tensor  # (2, P)
    part_idx: torch.Tensor
    part_sum: torch.Tensor
    programs: int
    block: int  # columns per program

    @classmethod
    def new(cls, n: int, device: torch.device) -> Scratch:
        block = column_block(n, _sms(device))
        k = max(triton.cdiv(n, block), 1)
        P = max(MIN_PARTIALS, triton.next_power_of_2(k))
        f64 = dict(dtype=torch.float64, device=device)
        return cls(
            part_val=torch.zeros(2, P, **f64),
            part_idx=torch.zeros(2, P, dtype=torch.int64, device=device),
            part_sum=torch.zeros(2, P, **f64),
            programs=k,
            block=block,
        )


def chunk(ws, sc: Scratch, t0: int, c: int) -> None:
    """``id._step(ws, t)`` for t = t0 … t0+c−1: c + 2 kernel launches, no host synchronisation.

    ``ws.A`` must hold the transpose of the matrix ``_step`` would read (row p = its column p).
    """
    if ws.d.device.type == "cuda":
        with torch.cuda.device(ws.d.device):  # triton launches on the current device, not the tensors'
            _chunk_here(ws, sc, t0, c)
    else:
        _chunk_here(ws, sc, t0, c)


def _chunk_here(ws, sc: Scratch, t0: int, c: int) -> None:
    n = ws.d.numel()
    k, P = sc.programs, sc.part_val.shape[1]
    tb = min(ROWS, triton.next_power_of_2(ws.Lc.shape[0]))
    nt = triton.cdiv(ws.Lc.shape[0], tb)
    flags = (ws.inactive.view(torch.uint8), ws.blocked.view(torch.uint8))
    fixed = (ws.A, ws.Lc, ws.d, *flags, ws.tol, ws.perm, ws.ok.view(torch.uint8), ws.res)
    buf = [(sc.part_val[b], sc.part_idx[b], sc.part_sum[b]) for b in (0, 1)]
    for j in range(c + 1):  # launch 0 selects the first pivot, launch j ≥ 1 is step t0 + j − 1
        t = t0 + j - 1
        _column_kernel[(k,)](
            *fixed,
            *buf[(j + 1) % 2],
            *buf[j % 2],
            n,
            max(t, 0),
            t - 1 if j >= 2 else -1,
            k,
            UPDATE=j > 0,
            TB=tb,
            NT=nt,
            BLOCK=sc.block,
            P=P,
        )
    _reduce_kernel[(1,)](buf[c % 2][2], ws.res, k, t0 + c - 1, P=P)
