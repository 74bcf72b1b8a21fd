"""One greedy pivoted-Cholesky step (``id._step``) as two Triton kernels instead of ~20 torch ones.

On a GPU a step is pure launch latency (n = 11008: ~5 MB of traffic, 50–67 µs as 20 kernels even
replayed from a CUDA graph). Here a step is:

1. ``_column_kernel`` over blocks of n: the new column L[:, t] from ROW p of the workspace matrix
   (the workspace holds the transpose of G, so the row is the column, read coalesced), minus
   Σ_{s<t} Lc[s, :] Lc[s, p] as one tile product, scaled by 1/√piv, masked (pivoted columns → 0,
   whole column → 0 when the pivot fails the tolerance), written to Lc[t]; it updates d (clamped at
   0), the inactive/blocked masks at p, and emits per-program partials: (max, first argmax) of d
   masked by ``blocked`` — the next pivot's candidates — and Σ d.
2. ``_reduce_kernel`` (one program): the next pivot index/value (ties to the first index, like
   ``torch.argmax``) kept on the device, and ``res[t]`` = Σ d.

The pivot index never leaves the device, so ``id._run_chunk`` still captures a chunk as one CUDA
graph. The arithmetic is ``_step``'s; only summation order differs (the Σ_{s<t} dot product and
Σ d are tree sums here), so L and the residuals agree to rounding (≤ 3e-14 of max |L| in the
tests and on an H200, n ≤ 14336) and the pivots are the same except where two candidates'
residual diagonals agree to within rounding (a near tie), where either order may pick either —
exact ties (equal bits) break to the first index in both. Float64 throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

BLOCK_N = 64  # columns per program of the column kernel: n = 11008 → 172 programs
ROWS = 64  # rows of Lc per tile of the Σ_{s<t} product


@triton.jit(do_not_specialize=["t"])
def _column_kernel(
    A,  # (n, n) float64, row p = column p of the Schur complement
    Lc,  # (block_size, n) float64, row s = column s of the current update block
    d,  # (n,) float64 residual diagonal
    inactive,  # (n,) uint8
    blocked,  # (n,) uint8
    piv_idx,  # () int64, this step's pivot
    piv_val,  # () float64, d[pivot]
    tol,  # () float64
    perm,  # (block_size,) int64
    ok_out,  # (block_size,) uint8
    part_val,  # (programs,) float64
    part_idx,  # (programs,) int64
    part_sum,  # (programs,) float64
    n,
    t,
    UPDATE: tl.constexpr,
    TB: tl.constexpr,
    NT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    dv = tl.load(d + offs, mask=m, other=0.0)
    blk = tl.load(blocked + offs, mask=m, other=1) != 0
    if UPDATE:
        p = tl.load(piv_idx)
        pv = tl.load(piv_val)
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
    tl.store(part_val + pid, best)
    tl.store(part_idx + pid, arg.to(tl.int64))
    tl.store(part_sum + pid, tl.sum(dv, axis=0))


@triton.jit(do_not_specialize=["t"])
def _reduce_kernel(
    part_val,
    part_idx,
    part_sum,
    piv_idx,
    piv_val,
    res,
    programs,
    t,
    WRITE_RES: tl.constexpr,
    P: tl.constexpr,
):
    i = tl.arange(0, P)
    m = i < programs
    v = tl.load(part_val + i, mask=m, other=float("-inf"))
    ix = tl.load(part_idx + i, mask=m, other=2**62)
    best = tl.max(v, axis=0)
    arg = tl.min(tl.where(m & (v == best), ix, 2**62), axis=0)
    tl.store(piv_idx, arg)
    tl.store(piv_val, best)
    if WRITE_RES:
        tl.store(res + t, tl.sum(tl.load(part_sum + i, mask=m, other=0.0), axis=0))


@dataclass
class Scratch:
    """Device buffers of the fused step for one workspace (fixed addresses, for graph replay)."""

    piv_idx: torch.Tensor
    piv_val: torch.Tensor
    part_val: torch.Tensor
    part_idx: torch.Tensor
    part_sum: torch.Tensor

    @classmethod
    def new(cls, n: int, device: torch.device) -> Scratch:
        k = max(triton.cdiv(n, BLOCK_N), 1)
        f64 = dict(dtype=torch.float64, device=device)
        return cls(
            piv_idx=torch.zeros((), dtype=torch.int64, device=device),
            piv_val=torch.zeros((), **f64),
            part_val=torch.empty(k, **f64),
            part_idx=torch.empty(k, dtype=torch.int64, device=device),
            part_sum=torch.empty(k, **f64),
        )


def _launch(ws, sc: Scratch, t: int, update: bool) -> None:
    if ws.d.device.type == "cuda":
        with torch.cuda.device(ws.d.device):  # triton launches on the current device, not the tensors'
            _launch_here(ws, sc, t, update)
    else:
        _launch_here(ws, sc, t, update)


def _launch_here(ws, sc: Scratch, t: int, update: bool) -> None:
    n = ws.d.numel()
    k = sc.part_val.numel()
    tb = min(ROWS, triton.next_power_of_2(ws.Lc.shape[0]))
    _column_kernel[(k,)](
        ws.A,
        ws.Lc,
        ws.d,
        ws.inactive.view(torch.uint8),
        ws.blocked.view(torch.uint8),
        sc.piv_idx,
        sc.piv_val,
        ws.tol,
        ws.perm,
        ws.ok.view(torch.uint8),
        sc.part_val,
        sc.part_idx,
        sc.part_sum,
        n,
        t,
        UPDATE=update,
        TB=tb,
        NT=triton.cdiv(ws.Lc.shape[0], tb),
        BLOCK=BLOCK_N,
    )
    _reduce_kernel[(1,)](
        sc.part_val,
        sc.part_idx,
        sc.part_sum,
        sc.piv_idx,
        sc.piv_val,
        ws.res,
        k,
        t,
        WRITE_RES=update,
        P=triton.next_power_of_2(k),
    )


def select(ws, sc: Scratch) -> None:
    """The first pivot of a chunk: argmax of d masked by ``blocked`` (state untouched)."""
    _launch(ws, sc, 0, update=False)


def step(ws, sc: Scratch, t: int) -> None:
    """``id._step(ws, t)`` with the pivot taken from ``sc`` (left there by ``select`` or the last step).

    ``ws.A`` must hold the transpose of the matrix ``_step`` would read (row p = its column p).
    """
    _launch(ws, sc, t, update=True)
