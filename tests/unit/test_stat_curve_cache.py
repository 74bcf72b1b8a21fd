"""STAT's on-disk curve cache (statprune/stat/curve_cache.py): a hit is bit-identical to measuring,
skips the measure walk, and any change to what the curves depend on is a miss."""

import dataclasses
import threading

import pytest
import torch

import statprune.stat.prune as stat_prune_mod
from statprune.pruner import Target, prune
from statprune.stat import curve_cache
from statprune.stat.prune import AFTER_MEASURE, StatOptions, measure_options
from tests.unit.tiny import random_calibration, tiny_model

SEQ = 20


@pytest.fixture
def cache_on(tmp_path, monkeypatch):
    monkeypatch.setenv("STATPRUNE_CACHE", str(tmp_path))
    monkeypatch.setenv(curve_cache.ENV, "1")
    return tmp_path / "stat_curves"


@pytest.fixture
def calls(monkeypatch):
    """Counts of the measure walk and the loss-weight pass (the real functions, only counted)."""
    counts = {"measure": 0, "loss": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(stat_prune_mod, "measure_curves", counted("measure", stat_prune_mod.measure_curves))
    monkeypatch.setattr(
        stat_prune_mod, "output_grad_weights", counted("loss", stat_prune_mod.output_grad_weights)
    )
    return counts


def _run(opts, *, family="llama-gqa", seed=0, calib=None, model=None, seq_len=SEQ, sparsity=0.35):
    model = model if model is not None else tiny_model(family)
    res = prune(
        model,
        calib if calib is not None else random_calibration(),
        Target(sparsity, seq_len),
        seed=seed,
        options={"progress": False, **opts},
    )
    return model, res


def _same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]), k


RESIDUAL = {"error_norm": "residual"}
CASES = [  # (first run, allocation-only variant); the tiny model is a decoder: auto means loss+greedy
    (RESIDUAL, {**RESIDUAL, "allocation": "greedy"}),
    ({"error_norm": "loss"}, {"error_norm": "loss", "allocation": "greedy", "max_layer_departure": 0.1}),
    (
        RESIDUAL,
        {"allocation": "reference", "correction_target": "dense", "damping": 0.01, "neuron_multiple": 4},
    ),
    (
        {**RESIDUAL, "allocation": "greedy"},
        {**RESIDUAL, "rounds": 2, "protect_layers": "first:1", "repropagate": False},
    ),
    ({}, {"error_norm": "loss", "allocation": "share"}),  # the key holds what auto became
]


@pytest.mark.parametrize(("first", "variant"), CASES)
def test_a_hit_skips_the_measure_walk_and_is_bit_identical(cache_on, calls, monkeypatch, first, variant):
    _, res = _run(first)
    assert res.diagnostics["curves_cache"] == "miss"
    assert calls["measure"] == 1
    assert len(list(cache_on.glob("*.pt"))) == 1 and len(list(cache_on.glob("*.json"))) == 1
    loss = first.get("error_norm", "loss") == "loss"
    assert calls["loss"] == int(loss)

    hit_model, hit = _run(variant)
    assert hit.diagnostics["curves_cache"] == "hit"
    rounds = variant.get("rounds", 1)
    assert calls["measure"] == 1 + (rounds - 1)  # round 1 from disk; later rounds re-measure
    assert calls["loss"] == int(loss)  # the backward pass is part of what is cached

    monkeypatch.delenv(curve_cache.ENV)
    off_model, off = _run(variant)
    assert off.diagnostics["curves_cache"] == "off"
    assert off.diagnostics["kept_units"] == hit.diagnostics["kept_units"]
    assert off.diagnostics["predicted_error"] == hit.diagnostics["predicted_error"]
    assert off.diagnostics.get("loss_weight_totals") == hit.diagnostics.get("loss_weight_totals")
    _same_model(hit_model, off_model)
    assert hit.options == off.options  # the switch is no option: records and fingerprints unchanged


def _perturb_weight(model):
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] += 1e-3
    return model


def _perturb_token(calib):
    calib = dataclasses.replace(calib, batches=[dict(b) for b in calib.batches])
    ids = calib.batches[1]["input_ids"].clone()
    ids[0, 0] = ids[0, 0] % 90 + 1
    calib.batches[1]["input_ids"] = ids
    return calib


CHANGES = {  # each makes a fresh run differ from the first in one thing the curves depend on
    "seed": lambda: dict(seed=1),
    "weight": lambda: dict(model=_perturb_weight(tiny_model("llama-gqa"))),
    "token": lambda: dict(calib=_perturb_token(random_calibration())),
    "seq_len": lambda: dict(seq_len=SEQ + 1),
    "error_norm": lambda: dict(opts={"error_norm": "none"}),
    "gqa": lambda: dict(opts={"gqa": "uniform"}),
    "rel_tol": lambda: dict(opts={"rel_tol": 1e-10}),
    "head_selection": lambda: dict(opts={"head_selection": "exact"}),
    "store_dtype": lambda: dict(opts={"store_dtype": "bfloat16"}),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_what_the_curves_depend_on_is_in_the_key(cache_on, calls, change):
    _run({})
    kw = CHANGES[change]()
    opts = kw.pop("opts", {})
    _, res = _run(opts, **kw)
    assert res.diagnostics["curves_cache"] == "miss"
    assert calls["measure"] == 2
    assert len(list(cache_on.glob("*.pt"))) == 2
    kw = CHANGES[change]()
    _, again = _run({**kw.pop("opts", {}), "allocation": "greedy"}, **kw)  # its own entry now
    assert again.diagnostics["curves_cache"] == "hit" and calls["measure"] == 2


def test_the_key_holds_every_option_but_the_allow_list():
    names = {f.name for f in dataclasses.fields(StatOptions)}
    assert names >= AFTER_MEASURE  # a renamed option must not silently leave the key
    assert set(measure_options(StatOptions())) == names - AFTER_MEASURE
    # deny by default: an option added later is in the key unless it is listed
    Extra = dataclasses.make_dataclass(
        "Extra", [("new_option", int, dataclasses.field(default=0))], bases=(StatOptions,), frozen=True
    )
    assert "new_option" in measure_options(Extra())


def test_off_by_default_and_typos_refused(tmp_path, monkeypatch, calls):
    monkeypatch.setenv("STATPRUNE_CACHE", str(tmp_path))
    monkeypatch.delenv(curve_cache.ENV, raising=False)
    _, res = _run({})
    assert res.diagnostics["curves_cache"] == "off"
    assert not (tmp_path / "stat_curves").exists()
    monkeypatch.setenv(curve_cache.ENV, "ture")
    with pytest.raises(Exception, match="STATPRUNE_CURVE_CACHE"):
        curve_cache.enabled()


def test_concurrent_writers_leave_one_whole_file(cache_on):
    model, calib = tiny_model("llama"), random_calibration()
    key = curve_cache.curve_key(
        model, calib, seed=0, device=torch.device("cpu"), dtype=torch.float32, seq_len=SEQ, options={}
    )
    curves = [
        stat_prune_mod.StatCurve(
            i, "neurons", torch.rand(4097, dtype=torch.float64), 3.0, raw=torch.rand(4096)
        )
        for i in range(8)
    ]
    measured = curve_cache.Measured(curves, None)
    seen, errors = [], []

    def writer():
        try:
            for _ in range(5):
                curve_cache.save(key, measured)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def reader():
        for _ in range(40):
            got = curve_cache.load(key, torch.device("cpu"))
            seen.append(got)

    threads = [threading.Thread(target=writer) for _ in range(4)] + [
        threading.Thread(target=reader) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got in [*seen, curve_cache.load(key, torch.device("cpu"))]:
        if got is None:  # before the first rename: absent, never partial
            continue
        assert len(got.curves) == 8
        for a, b in zip(got.curves, curves):
            assert torch.equal(a.errors, b.errors) and torch.equal(a.raw, b.raw)
    assert sorted(p.suffix for p in cache_on.iterdir()) == [".json", ".pt"]  # no temporary left over


def test_an_unreadable_entry_is_a_miss_and_rewritten(cache_on, calls):
    _run({})
    (entry,) = cache_on.glob("*.pt")
    entry.write_bytes(entry.read_bytes()[:100])  # a torn file (what a non-atomic writer could leave)
    _, res = _run({"allocation": "greedy"})
    assert res.diagnostics["curves_cache"] == "miss" and calls["measure"] == 2
    _, res = _run({"allocation": "greedy"})
    assert res.diagnostics["curves_cache"] == "hit" and calls["measure"] == 2
