"""Gram accumulation: the CPU float32-GEMM path (``precision="auto"``) against float64, and STAT with both."""

import copy

import pytest
import torch

from statprune.adapters import get_adapter
from statprune.calibration import Gram
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
