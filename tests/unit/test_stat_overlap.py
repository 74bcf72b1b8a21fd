"""STAT's measure walk with its factorizations on a worker thread (statprune/stat/overlap.py) gives
bit-identical curves, kept units and weights; on the CPU (``STATPRUNE_OVERLAP=1``) the thread runs
without streams, which is the part the CPU can check (the CUDA stream handover needs a GPU)."""

import pytest
import torch

from statprune.pruner import Target, prune
from statprune.stat import overlap
from tests.unit.tiny import random_calibration, tiny_model

CASES = [
    ("llama-gqa", {}),  # the decoder default: loss weights, greedy
    ("bert", {}),  # the encoder default: residual, share
    ("qwen3", {"error_norm": "residual", "rounds": 2}),  # measured twice
    ("llama", {"head_selection": "exact", "allocation": "reference"}),
]


def _prune(family, opts, monkeypatch, mode):
    monkeypatch.setenv(overlap.ENV, mode)
    model = tiny_model(family, layers=3)
    res = prune(model, random_calibration(n=16), Target(0.4, 20), options={"progress": False, **opts})
    return model, res


@pytest.mark.parametrize(("family", "opts"), CASES)
def test_overlapped_measure_walk_is_bit_identical(family, opts, monkeypatch):
    serial_model, serial = _prune(family, opts, monkeypatch, "0")
    model, res = _prune(family, opts, monkeypatch, "1")
    assert "factorization_overlapped" in res.timings and "factorization_overlapped" not in serial.timings
    assert res.diagnostics["kept_units"] == serial.diagnostics["kept_units"]
    assert res.diagnostics["predicted_error"] == serial.diagnostics["predicted_error"]
    a, b = model.state_dict(), serial_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_failing_job_raises_in_the_walk(monkeypatch):
    from statprune.stat import prune as stat_prune_mod

    real, calls = stat_prune_mod.neuron_curve, []

    def boom(*args, **kwargs):  # layer 0 runs inline; layer 1's job on the worker fails
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("factorization failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(stat_prune_mod, "neuron_curve", boom)
    with pytest.raises(RuntimeError, match="factorization failed"):
        _prune("llama", {}, monkeypatch, "1")


def test_wanted_by_device_and_switch(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv(overlap.ENV, raising=False)
    assert overlap.wanted(cuda, streamed=False) and not overlap.wanted(cpu, streamed=False)
    assert not overlap.wanted(cuda, streamed=True)  # streamed layers go home after their forward
    monkeypatch.setenv(overlap.ENV, "0")
    assert not overlap.wanted(cuda, streamed=False)
    monkeypatch.setenv(overlap.ENV, "1")
    assert overlap.wanted(cpu, streamed=False)
