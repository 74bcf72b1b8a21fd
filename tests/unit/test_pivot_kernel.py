"""The fused Triton pivot step equals the torch step: same pivots and flags, L and residuals to 1e-12.

The kernels run on CPU tensors in Triton's interpreter. ``TRITON_INTERPRET`` is read when a kernel
is decorated, so the comparisons run once in a subprocess (this file as a script) that sets it
before importing triton, and each test checks one case of its JSON answer. Random Grams have no
near ties, and exact ties (equal bits) break to the first index in both paths. A near tie (residual
diagonals equal to within rounding) may be broken either way, as the summation orders differ: with
every column duplicated, the copies' residuals stop being bit-equal after the first blocked update
(GEMM rounding depends on the position), and the paths may pivot on different copies of the same
column — that case checks that the pivoted columns are the same, not their indices.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from statprune.stat.id import pivoted_cholesky, triton_available

TOL = 1e-12

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed (pip install triton)"
)


def _gram(n: int, rank: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(2 * n, rank, generator=g, dtype=torch.float64)
    X = X @ torch.randn(rank, n, generator=g, dtype=torch.float64)
    return X.T @ X


def _cases() -> dict[str, tuple[torch.Tensor, dict]]:
    C = _gram(10, 10, 3)
    diag = torch.diag(torch.tensor([2.0, 1.0, 2.0, 3.0, 1.0, 3.0, 3.0, 0.5] * 5, dtype=torch.float64))
    dup = _gram(30, 30, 4)[torch.arange(60) % 30][:, torch.arange(60) % 30]  # every column twice
    g = torch.Generator().manual_seed(5)
    groups = list(torch.randperm(48, generator=g).view(4, 12))
    low_group = _gram(48, 48, 6)
    low_group[:, groups[1]] = 0.0  # a dead group: its block ends at once
    low_group[groups[1], :] = 0.0
    return {
        "full_rank": (_gram(40, 40, 0), {"block_size": 16}),
        "three_programs_odd_block": (_gram(130, 130, 1), {"block_size": 7}),
        "rank_deficient": (_gram(60, 20, 2), {"block_size": 16}),
        "tied_diagonal": (diag, {"block_size": 16}),
        "tied_blocks": (torch.kron(torch.eye(2, dtype=torch.float64), C), {"block_size": 8}),
        "duplicated_columns": (dup, {"block_size": 16}),
        "blocks": (_gram(48, 30, 7), {"blocks": groups, "block_size": 8}),
        "blocks_dead_group": (low_group, {"blocks": groups, "block_size": 8}),
        "max_steps": (_gram(48, 48, 8), {"max_steps": 33, "block_size": 16}),
        "block_over_64_rows": (_gram(90, 90, 10), {"block_size": 80}),  # two row tiles per step
    }


# where a chunk can end short of the next trailing update: a block's end, a failed pivot, max_steps
OVERRUN_CASES = ["full_rank", "rank_deficient", "blocks", "blocks_dead_group", "max_steps"]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = float(b.abs().max()) if b.numel() else 1.0
    return float((a - b).abs().max()) / scale if a.numel() else 0.0


def _chunk_flags() -> dict:
    """One chunk past the rank: both paths' per-step perm, ok, Lc, d, res (failed steps included)."""
    from statprune.stat import id as sid

    G = _gram(24, 10, 9)
    out = {}
    for fused in (False, True):
        ws = sid._Workspace.new(24, 16, torch.device("cpu"))
        ws.A.copy_(G.mT if fused else G)
        ws.d.copy_(torch.diagonal(G))
        ws.tol.fill_(1e-12 * float(ws.d.max()))
        ws.blocked[:3] = True  # columns outside the current block
        sid._run_chunk(ws, 0, 16, use_graph=False, fused=fused)
        out[fused] = ws
    a, b = out[False], out[True]
    return {
        "ok": a.ok.tolist(),
        "ok_equal": torch.equal(a.ok, b.ok),
        "perm_equal": torch.equal(a.perm, b.perm),
        "Lc": _rel(b.Lc, a.Lc),
        "d": _rel(b.d, a.d),
        "res": _rel(b.res, a.res),
        "masks_equal": torch.equal(a.inactive, b.inactive) and torch.equal(a.blocked, b.blocked),
    }


def _compare_all() -> dict:
    report = {}
    for name, (G, kw) in _cases().items():
        ref = pivoted_cholesky(G, fused=False, **kw)
        got = pivoted_cholesky(G, fused=True, **kw)
        report[name] = {
            "rank": [ref.rank, got.rank],
            "perm_equal": torch.equal(ref.perm, got.perm),
            "same_columns": ref.rank == got.rank and torch.equal(G[:, ref.perm], G[:, got.perm]),
            "block_ends": [ref.block_ends, got.block_ends],
            "L": _rel(got.L, ref.L) if ref.rank == got.rank else 1.0,
            "residual": _rel(got.residual, ref.residual) if ref.rank == got.rank else 1.0,
        }
    report["chunk"] = _chunk_flags()
    report["column_block_128"] = _wide_programs()
    cases = _cases()
    report["overrun_equal"] = {name: _overrun_equal(*cases[name], fused=True) for name in OVERRUN_CASES}
    report["speculate_equal"] = {name: _speculate_equal(*cases[name]) for name in OVERRUN_CASES}
    return report


def _wide_programs() -> dict:
    """The fused step with 128 columns per program (what ``column_block`` picks for n > 64 · SMs)."""
    from statprune.stat import pivot_kernel

    G, kw = _cases()["three_programs_odd_block"]
    ref = pivoted_cholesky(G, fused=False, **kw)
    default = pivot_kernel.column_block
    pivot_kernel.column_block = lambda n, sms: 128
    try:
        got = pivoted_cholesky(G, fused=True, **kw)
    finally:
        pivot_kernel.column_block = default
    return {
        "perm_equal": torch.equal(ref.perm, got.perm),
        "L": _rel(got.L, ref.L),
        "res": _rel(got.residual, ref.residual),
    }


def _bitwise_equal(a, b) -> bool:
    same = a.block_ends == b.block_ends
    return same and all(
        torch.equal(x, y) for x, y in ((a.L, b.L), (a.perm, b.perm), (a.residual, b.residual))
    )


def _overrun_equal(G: torch.Tensor, kw: dict, *, fused: bool) -> bool:
    """Whether running chunks past their last needed step changes nothing (bitwise)."""
    a = pivoted_cholesky(G, fused=fused, overrun=False, **kw)
    return _bitwise_equal(a, pivoted_cholesky(G, fused=fused, overrun=True, **kw))


def _speculate_equal(G: torch.Tensor, kw: dict) -> bool:
    """Whether the fused step queued speculatively (CUDA's default) gives the chunk-by-chunk result."""
    a = pivoted_cholesky(G, fused=True, speculate=False, overrun=True, **kw)
    return _bitwise_equal(a, pivoted_cholesky(G, fused=True, speculate=True, overrun=True, **kw))


@pytest.fixture(scope="module")
def report() -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, __file__], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_triton
@pytest.mark.parametrize("name", list(_cases()))
def test_fused_factorization_matches_torch_step(report, name):
    r = report[name]
    assert r["rank"][0] == r["rank"][1]
    if name == "duplicated_columns":  # a near tie: either copy of a column may be picked
        assert r["same_columns"]
    else:
        assert r["perm_equal"]
    assert r["block_ends"][0] == r["block_ends"][1]
    assert r["L"] <= TOL and r["residual"] <= TOL


@needs_triton
def test_expected_ranks_and_tie_order(report):
    assert report["rank_deficient"]["rank"][0] == 20
    assert report["duplicated_columns"]["rank"][0] == 30
    assert report["max_steps"]["rank"][0] == 33
    assert report["blocks_dead_group"]["block_ends"][0][1] == report["blocks_dead_group"]["block_ends"][0][0]


@needs_triton
def test_fused_chunk_flags_and_failed_steps_match(report):
    r = report["chunk"]
    assert r["ok"] == [True] * 10 + [False] * 6  # rank 10: the chunk runs past it
    assert r["ok_equal"] and r["perm_equal"] and r["masks_equal"]
    assert r["Lc"] <= TOL and r["d"] <= TOL and r["res"] <= TOL


@needs_triton
def test_fused_step_with_wider_programs_matches_torch_step(report):
    r = report["column_block_128"]
    assert r["perm_equal"] and r["L"] <= TOL and r["res"] <= TOL


@needs_triton
def test_column_block_keeps_one_wave():
    from statprune.stat.pivot_kernel import column_block

    sizes = (768, 3072, 8448, 11008, 14336, 40000)
    assert [column_block(n, 132) for n in sizes] == [64, 64, 64, 128, 128, 128]


@needs_triton
def test_fused_overrun_chunks_change_nothing(report):
    assert report["overrun_equal"] == dict.fromkeys(OVERRUN_CASES, True)


@needs_triton
def test_fused_speculative_chunks_change_nothing(report):
    assert report["speculate_equal"] == dict.fromkeys(OVERRUN_CASES, True)


@pytest.mark.parametrize("name", OVERRUN_CASES)
def test_torch_step_overrun_chunks_change_nothing(name):
    G, kw = _cases()[name]
    assert _overrun_equal(G, kw, fused=False)


def test_switches(monkeypatch):
    monkeypatch.setenv("STATPRUNE_TRITON", "0")
    assert not triton_available()
    G = _gram(20, 20, 0)
    assert torch.equal(pivoted_cholesky(G).L, pivoted_cholesky(G, fused=False).L)  # CPU: torch step


if __name__ == "__main__":
    print(json.dumps(_compare_all()))
