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
    """On CUDA every chunk replays a graph that runs to the next trailing update; the factorization
    is bitwise the one of eager chunks of exactly the steps needed (heads' blocks and max_steps)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(700, 600, generator=g, dtype=torch.float64)
    G = (X.T @ X).cuda()
    blocks = [torch.arange(600).cuda()[s : s + 48] for s in range(0, 600, 48)]
    for kw in ({"blocks": blocks}, {"max_steps": 421}):
        monkeypatch.setenv("STATPRUNE_CUDA_GRAPHS", "0")
        ref = pivoted_cholesky(G, fused=fused, **kw)  # eager, each chunk exactly as long as needed
        monkeypatch.delenv("STATPRUNE_CUDA_GRAPHS")
        for _ in range(2):  # the second call replays the graphs the first captured
            got = pivoted_cholesky(G, fused=fused, **kw)
            assert got.block_ends == ref.block_ends
            assert torch.equal(got.perm, ref.perm) and torch.equal(got.L, ref.L)
            assert torch.equal(got.residual, ref.residual)
