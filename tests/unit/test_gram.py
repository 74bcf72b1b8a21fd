"""Gram accumulation: the CPU float32-GEMM path (``precision="auto"``) against float64, and STAT with both."""

import copy

import pytest
import torch

from statprune.adapters import get_adapter
from statprune.calibration import Gram, real_rows, upper_blocks
from statprune.pruner import Target, prune
from tests.unit.tiny import outputs, random_calibration, rel_err, tiny_model

U = 2.0**-24


def _rows(n: int = 5000, d: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, n // 2, d, generator=gen) * torch.logspace(-2, 2, d)  # wide dynamic range
    mask = torch.rand(2, n // 2, generator=gen) > 0.2
    return x, mask


def test_float32_path_within_stated_bound():
    x, mask = _rows()
    exact, fast = (
        Gram(48, torch.device("cpu"), precision="float64"),
        Gram(48, torch.device("cpu"), precision="auto", chunk_rows=512),
    )
    for b in range(2):
        exact(x[b], mask[b])
        fast(x[b], mask[b])
    assert exact.count == fast.count == int(mask.sum())
    rows = x[mask].double()
    absg = rows.abs().T @ rows.abs()
    d = (fast.G - exact.G).abs()
    assert d.max() > 0  # the float32 GEMM ran (float64 products would match exactly)
    assert (d <= (512 + 1) * U * absg).all()  # entrywise bound of the docstring
    assert float((fast.G - exact.G).norm() / exact.G.norm()) < 1e-6  # typical: ~√c·u, far below the bound


def test_default_and_float64_are_float64():
    x, mask = _rows(n=600)
    ref = x[0][mask[0]].double()
    for prec in ("exact_products", "float64"):
        g = Gram(48, torch.device("cpu"), precision=prec)
        g(x[0], mask[0])
        assert torch.equal(g.G, torch.zeros(48, 48, dtype=torch.float64).addmm_(ref.T, ref))


def test_rows_that_could_overflow_float32_take_float64():
    x = torch.full((1, 4, 3), 1e20)
    g = Gram(3, torch.device("cpu"), precision="auto")
    g(x[0], torch.ones(1, 4, dtype=torch.bool)[0])
    assert torch.isfinite(g.G).all()
    assert float(g.G[0, 0]) == pytest.approx(4e40)


def _selected_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether every parameter that pruning only slices (all but W_O and W2, which the correction
    rewrites) is bitwise equal: the same heads and neurons were kept."""
    ad = get_adapter(a)
    corrected = {
        id(p) for i in range(ad.num_layers) for m in (ad.out_proj(i), ad.down_proj(i)) for p in m.parameters()
    }
    pb = dict(b.named_parameters())
    return all(torch.equal(p, pb[n]) for n, p in a.named_parameters() if id(p) not in corrected)


@pytest.mark.parametrize("family", ["llama-gqa", "bert"])
def test_stat_keeps_same_units_with_float32_grams(family):
    dense = tiny_model(family)
    calib = random_calibration(n=24)
    ref = outputs(dense, calib)
    pruned, kept = {}, {}
    for prec in ("float64", "auto"):
        pruned[prec] = copy.deepcopy(dense)
        res = prune(pruned[prec], calib, Target(0.4, 20), options={"progress": False, "gram_precision": prec})
        kept[prec] = res.diagnostics["kept_units"]
    assert kept["float64"] == kept["auto"]
    assert _selected_equal(pruned["float64"], pruned["auto"])
    # the corrections agree where they act: W_O/W2 may differ along near-null directions of the Gram
    out64, out32 = outputs(pruned["float64"], calib), outputs(pruned["auto"], calib)
    err64 = rel_err(out64, ref)
    assert rel_err(out32, out64) < 1e-2 * err64
    assert rel_err(out32, ref) == pytest.approx(err64, rel=1e-3)


def test_cpu_float32_gram_multiplies_upper_blocks_into_an_exactly_symmetric_matrix():
    x, mask = _rows(n=700, d=600)  # 600 columns: 3 blocks of GRAM_BLOCK = 256
    g = Gram(600, torch.device("cpu"), precision="auto")
    g(x[0], mask[0])
    rows = x[0][mask[0]]
    full = torch.mm(rows.T, rows).double()  # the float32 product of every block pair
    assert torch.equal(g.G, g.G.T)
    assert float((g.G - full).norm() / full.norm()) < 1e-6
    assert float((g.G - full).abs().max()) <= 1e-6 * float(full.abs().max())


def test_upper_blocks_align_edges_and_cover_the_upper_triangle_exactly():
    gen = torch.Generator().manual_seed(0)
    r = torch.randint(-8, 9, (50, 700), generator=gen).double()  # integer sums: every order is exact
    blocks = list(upper_blocks(r, 256, 64))
    assert [(a0, a) for a0, a, _ in blocks] == [(0, 192), (192, 448), (448, 700)]
    full = torch.zeros(700, 700, dtype=torch.float64)
    for a0, a, g in blocks:
        assert g.shape == (a - a0, 700 - a0)
        full[a0:a, a0:] = g
    assert torch.equal(full.triu(), (r.T @ r).triu())
    assert [(a0, a) for a0, a, _ in upper_blocks(r, 256)] == [
        (0, 233),
        (233, 466),
        (466, 700),
    ]  # CPU: align 1


def test_gram_mirrors_lazily_and_stays_exact_when_a_chunk_falls_back_to_float64():
    d = 300
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(-4, 5, (3, 200, d), generator=gen).float()
    x[1, 7, 5] = 1e20  # this batch's chunk could overflow float32: it is redone in float64
    mask = torch.ones(3, 200, dtype=torch.bool)
    g = Gram(d, torch.device("cpu"), precision="auto", chunk_rows=64)
    for b in range(3):
        g(x[b], mask[b])
        assert g._cuts is None or g._cuts == [0, 150, 300]
    rows = x.reshape(-1, d).double()
    ref = rows.T @ rows
    assert torch.equal(g.G, g.G.T)
    keep = torch.arange(d) != 5  # integer sums are exact in every order; column 5 holds 1e20·x
    assert torch.equal(g.G[keep][:, keep], ref[keep][:, keep])
    assert torch.allclose(g.G[5], ref[5], rtol=1e-15, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_half_gram_takes_upper_blocks_and_matches_float64():
    d = 3000  # 2 blocks of GPU_GRAM_BLOCK, edges at multiples of 64
    x = torch.randn(2, 9000, d, device="cuda").bfloat16()
    mask = torch.rand(2, 9000, device="cuda") > 0.1
    g = Gram(d, torch.device("cuda"))
    for b in range(2):
        g(x[b], mask[b])
    assert g._cuts == [0, 1472, 3000]
    rows = x[mask].double()
    ref = rows.T @ rows
    assert torch.equal(g.G, g.G.T)
    c = int(mask.sum(1).max())  # each batch is one chunk: float32 sums over at most c products
    assert ((g.G - ref).abs() <= (c + 1) * U * (rows.abs().T @ rows.abs())).all()
    full = sum(torch.mm(x[b][mask[b]].T, x[b][mask[b]], out_dtype=torch.float32).double() for b in range(2))
    assert float((g.G - full).norm() / full.norm()) < 1e-6  # the full product's sums, up to order


def test_real_rows_is_a_view_without_padding_and_a_gather_with_it():
    x = torch.randn(3, 5, 4)
    full = torch.ones(3, 5, dtype=torch.bool)
    padded = full.clone()
    padded[1, 3:] = False
    assert torch.equal(real_rows(x, full), x[full]) and real_rows(x, full).data_ptr() == x.data_ptr()
    assert torch.equal(real_rows(x, padded), x[padded]) and real_rows(x, padded).shape == (13, 4)
