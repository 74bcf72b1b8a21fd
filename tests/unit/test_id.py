"""Interpolative decomposition: same pivots as LAPACK's pivoted QR, exact on low rank, rank-safe."""

import numpy as np
import pytest
import scipy.linalg
import torch

from statprune.stat.id import interpolation_matrix, pivoted_cholesky


def test_pivots_and_r_match_column_pivoted_qr():
    A = torch.randn(300, 60, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    _, R, P = scipy.linalg.qr(A.numpy(), pivoting=True, mode="economic")
    chol = pivoted_cholesky(A.T @ A, block_size=7)  # small blocks exercise the lazy trailing update
    assert np.array_equal(chol.perm.numpy(), P)
    assert np.allclose(chol.pivot_values.numpy(), np.abs(np.diag(R)), rtol=1e-8)


def test_residual_is_the_least_squares_error_and_low_rank_is_exact():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(400, 12, dtype=torch.float64, generator=g) @ torch.randn(
        12, 50, dtype=torch.float64, generator=g
    )
    chol = pivoted_cholesky(A.T @ A)
    assert chol.rank == 12  # stops at the numerical rank
    for k in (3, 8, 12):
        kept = chol.perm[:k]
        T = interpolation_matrix(chol, k, kept, 50)
        resid = float((A - A[:, kept] @ T).pow(2).sum())
        assert resid == pytest.approx(float(chol.residual[k]), rel=1e-6, abs=1e-8 * float(chol.residual[0]))
    T = interpolation_matrix(chol, 12, chol.perm[:12], 50)
    assert float((A - A[:, chol.perm[:12]] @ T).norm() / A.norm()) < 1e-10


def test_rank_deficient_duplicates_and_dead_columns_stay_finite():
    g = torch.Generator().manual_seed(2)
    B = torch.randn(200, 6, dtype=torch.float64, generator=g)
    A = torch.cat([B, B[:, :3], torch.zeros(200, 2, dtype=torch.float64)], dim=1)  # 6 independent of 11
    chol = pivoted_cholesky(A.T @ A)
    assert chol.rank == 6
    kept = torch.cat([chol.perm, torch.tensor([9])])  # keep a dead column beyond the rank
    T = interpolation_matrix(chol, chol.rank, kept, 11)
    assert torch.isfinite(T).all()
    assert float((A - A[:, kept] @ T).norm() / A.norm()) < 1e-10


def test_block_order_is_respected():
    A = torch.randn(100, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    blocks = [torch.tensor([6, 7]), torch.tensor([0, 1, 2])]
    chol = pivoted_cholesky(A.T @ A, blocks=blocks)
    assert set(chol.perm[:2].tolist()) == {6, 7} and set(chol.perm[2:5].tolist()) == {0, 1, 2}
    assert chol.block_ends == [2, 5]


@pytest.mark.parametrize("rank", [300, 90])
def test_block_size_changes_rounding_only(rank):
    """The fused step's default trailing-update block (128) against the torch step's (64): the same
    pivots and L to rounding, full rank and rank-deficient."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(600, rank, generator=g, dtype=torch.float64) @ torch.randn(
        rank, 300, generator=g, dtype=torch.float64
    )
    G = X.T @ X
    a = pivoted_cholesky(G, block_size=64)
    b = pivoted_cholesky(G, block_size=128)
    assert torch.equal(a.perm, b.perm)
    assert torch.allclose(a.L, b.L, rtol=0, atol=1e-9 * float(a.L.abs().max()))
    assert torch.allclose(a.residual, b.residual, rtol=1e-9, atol=1e-9 * float(a.residual[0]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fused", [False, True])
def test_cuda_graph_chunks_with_overrun_equal_eager_chunks(fused, monkeypatch):
    """On CUDA every chunk replays a graph that runs past its last needed step and the chunks are
    queued speculatively; the factorization is bitwise the one of eager chunks of exactly the steps
    needed, read chunk by chunk (heads' blocks and max_steps)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(700, 600, generator=g, dtype=torch.float64)
    G = (X.T @ X).cuda()
    blocks = [torch.arange(600).cuda()[s : s + 48] for s in range(0, 600, 48)]
    for kw in ({"blocks": blocks}, {"max_steps": 421}):
        monkeypatch.setenv("STATPRUNE_CUDA_GRAPHS", "0")
        ref = pivoted_cholesky(G, fused=fused, speculate=False, **kw)  # eager, exact chunks
        monkeypatch.delenv("STATPRUNE_CUDA_GRAPHS")
        for _ in range(2):  # the second call replays the graphs the first captured
            got = pivoted_cholesky(G, fused=fused, **kw)
            assert got.block_ends == ref.block_ends
            assert torch.equal(got.perm, ref.perm) and torch.equal(got.L, ref.L)
            assert torch.equal(got.residual, ref.residual)


def _speculation_cases() -> dict[str, tuple[torch.Tensor, dict]]:
    g = torch.Generator().manual_seed(11)

    def gram(n: int, rank: int) -> torch.Tensor:
        X = torch.randn(2 * n, rank, generator=g, dtype=torch.float64)
        X = X @ torch.randn(rank, n, generator=g, dtype=torch.float64)
        return X.T @ X

    groups = list(torch.randperm(48, generator=g).view(4, 12))
    dead = gram(48, 48)
    dead[:, groups[1]] = 0.0
    dead[groups[1], :] = 0.0
    dead_last = [groups[0], groups[2], groups[3], groups[1]]
    dup = [torch.cat([b, b[:2]]) for b in groups]  # two indices twice in every block
    return {
        "full_rank": (gram(40, 40), {"block_size": 16}),
        "rank_deficient_tail": (gram(60, 20), {"block_size": 16}),  # cut: no second factorization
        "blocks_dead_middle": (dead, {"blocks": groups, "block_size": 8}),  # redone step by step
        "blocks_dead_last": (dead, {"blocks": dead_last, "block_size": 8}),  # cut
        "blocks_low_rank": (gram(48, 30), {"blocks": groups, "block_size": 8}),
        "duplicate_indices": (gram(48, 48), {"blocks": dup, "block_size": 8}),
        "max_steps": (gram(48, 48), {"max_steps": 33, "block_size": 16}),
        "max_steps_mid_block": (gram(48, 48), {"blocks": groups, "max_steps": 30, "block_size": 8}),
        "dead_middle_max_steps": (dead, {"blocks": groups, "max_steps": 30, "block_size": 8}),
    }


REDONE = {"blocks_dead_middle", "blocks_low_rank", "duplicate_indices", "dead_middle_max_steps"}


@pytest.mark.parametrize("overrun", [False, True])
@pytest.mark.parametrize("name", list(_speculation_cases()))
def test_speculative_chunks_equal_chunk_by_chunk(name, overrun, monkeypatch):
    """Queuing every chunk and reading the flags once (the CUDA default) returns bitwise the
    chunk-by-chunk factorization: full rank, a rank-deficient tail (cut where the first step
    failed), failures in an earlier block (redone chunk by chunk), duplicated block indices, caps."""
    from statprune.stat import id as sid

    G, kw = _speculation_cases()[name]
    ref = pivoted_cholesky(G, speculate=False, overrun=overrun, **kw)
    calls = []
    inner = sid.pivoted_cholesky
    monkeypatch.setattr(sid, "pivoted_cholesky", lambda *a, **k: calls.append(k) or inner(*a, **k))
    got = inner(G, speculate=True, overrun=overrun, **kw)
    assert got.block_ends == ref.block_ends
    assert torch.equal(got.perm, ref.perm) and torch.equal(got.L, ref.L)
    assert torch.equal(got.residual, ref.residual)
    assert [k["speculate"] for k in calls] == ([False] if name in REDONE else [])


def test_speculation_cases_fail_where_intended():
    cases = _speculation_cases()
    assert pivoted_cholesky(*cases["rank_deficient_tail"][:1], speculate=False).rank == 20
    ends = pivoted_cholesky(cases["blocks_dead_last"][0], speculate=False, **cases["blocks_dead_last"][1])
    assert ends.block_ends == [12, 24, 36, 36]
    ends = pivoted_cholesky(cases["blocks_dead_middle"][0], speculate=False, **cases["blocks_dead_middle"][1])
    assert ends.block_ends == [12, 12, 24, 36]


def _graph_sized_cases() -> dict[str, tuple[torch.Tensor, dict]]:
    """Cases large enough for CUDA graphs (n ≥ GRAPH_MIN_SIZE): a rank-deficient tail, and a dead
    64-column block in the middle and at the end of a head-like block order."""
    g = torch.Generator().manual_seed(12)
    X = torch.randn(600, 200, generator=g, dtype=torch.float64) @ torch.randn(
        200, 320, generator=g, dtype=torch.float64
    )
    low = X.T @ X
    X = torch.randn(700, 320, generator=g, dtype=torch.float64)
    dead = X.T @ X
    dead[128:192] = 0.0
    dead[:, 128:192] = 0.0
    blocks = [torch.arange(320)[s : s + 64] for s in range(0, 320, 64)]
    last = [*blocks[:2], *blocks[3:], blocks[2]]
    return {
        "graphs_rank_deficient_tail": (low, {}),
        "graphs_dead_middle": (dead, {"blocks": blocks}),
        "graphs_dead_last": (dead, {"blocks": last}),
        "graphs_dead_middle_max_steps": (dead, {"blocks": blocks, "max_steps": 200}),
    }


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", [*_speculation_cases(), *_graph_sized_cases()])
def test_speculative_chunks_on_cuda(name):
    """The same on CUDA, where speculation is the default: the fused step, graphs replayed, a
    workspace shared by consecutive factorizations (so a cut or redone one must leave it usable)."""
    G, kw = {**_speculation_cases(), **_graph_sized_cases()}[name]
    G = G.cuda()
    kw = {k: [b.cuda() for b in v] if k == "blocks" else v for k, v in kw.items()}
    for _ in range(2):
        ref = pivoted_cholesky(G, speculate=False, **kw)
        got = pivoted_cholesky(G, **kw)
        assert got.block_ends == ref.block_ends
        assert torch.equal(got.perm, ref.perm) and torch.equal(got.L, ref.L)
        assert torch.equal(got.residual, ref.residual)
