"""STAT with layer streaming (``weights=stream``) equals the in-memory path, on CPU.

On CPU the compute device and the host coincide, but the streamer still copies every layer in and
out, so these tests exercise the streamed placement (not the CUDA side-stream prefetch, which needs
a GPU: benchmarks/stream_demo.py measures it).
"""

import copy

import pytest
import torch

from statprune.adapters import get_adapter
from statprune.pruner import Target, prune
from tests.unit.tiny import FAMILIES, random_calibration, tiny_model

QUIET = {"progress": False}
RESIDUAL = {"error_norm": "residual", "allocation": "share"}  # the loss's backward pass is not streamed


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("repropagate", [True, False])
def test_streamed_prune_equals_in_memory(family, repropagate):
    calib = random_calibration()
    base = tiny_model(family, layers=3)
    results, states = {}, {}
    for weights in ("device", "stream"):
        model = copy.deepcopy(base)
        opts = {**QUIET, **RESIDUAL, "weights": weights, "repropagate": repropagate}
        results[weights] = prune(model, calib, Target(0.4, 20), options=opts)
        states[weights] = model.state_dict()
    assert results["stream"].diagnostics["weights_streamed"]
    assert not results["device"].diagnostics["weights_streamed"]
    assert results["stream"].diagnostics["kept_units"] == results["device"].diagnostics["kept_units"]
    assert results["stream"].shapes_pruned == results["device"].shapes_pruned
    assert states["stream"].keys() == states["device"].keys()
    for k, ref in states["device"].items():
        got = states["stream"][k]
        assert got.shape == ref.shape, k
        assert float((got.double() - ref.double()).norm()) <= 1e-6 * float(ref.double().norm()) + 1e-12, k


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_each_layer_runs_on_its_streamed_copy_and_later_layers_stay_home(family):
    model = tiny_model(family, layers=3)
    layers = get_adapter(model).layers()
    home = [[p.data_ptr() for p in layer.parameters()] for layer in layers]
    seen = []

    def hook(i):
        def pre(_mod, _args):  # on attention: layer-0 capture stops before layer 0 runs
            now = [[p.data_ptr() for p in layer.parameters()] for layer in layers]
            assert not set(now[i]) & set(home[i]), f"layer {i} runs on its host tensors"
            assert all(now[j] == home[j] for j in range(i + 1, len(layers))), "a later layer left home"
            seen.append(i)

        return pre

    adapter = get_adapter(model)
    for i in range(len(layers)):
        adapter.attention(i).register_forward_pre_hook(hook(i))
    calib = random_calibration()
    res = prune(model, calib, Target(0.4, 20), options={**QUIET, "weights": "stream"})
    assert res.diagnostics["weights_streamed"]
    # measure walk: attention runs once per layer; apply walk (repropagate): three times per layer, or
    # once where the rest is replayed from recorded inputs (plain residual); each over every batch
    b = len(calib.batches)
    runs = 1 if adapter.plain_residual else 3
    assert seen == [i for i in range(3) for _ in range(b)] + [i for i in range(3) for _ in range(runs * b)]
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_a_streamed_decoder_prunes_with_residual_share_under_auto():
    calib = random_calibration()
    with pytest.warns(UserWarning, match="streamed"):
        res = prune(
            tiny_model("llama", layers=3), calib, Target(0.4, 20), options={**QUIET, "weights": "stream"}
        )
    assert res.diagnostics["auto_options"] == RESIDUAL
    assert "loss_weight_totals" not in res.diagnostics
    ref = prune(tiny_model("llama", layers=3), calib, Target(0.4, 20), options={**QUIET, **RESIDUAL})
    assert res.diagnostics["kept_units"] == ref.diagnostics["kept_units"]


def test_auto_does_not_stream_on_cpu():
    model = tiny_model("llama")
    res = prune(model, random_calibration(), Target(0.3, 20), options=QUIET)
    assert not res.diagnostics["weights_streamed"]
    with pytest.raises(Exception, match="weights"):
        prune(
            tiny_model("llama"), random_calibration(), Target(0.3, 20), options={**QUIET, "weights": "disk"}
        )


def test_streamer_puts_host_tensors_back_after_a_read_and_keeps_writes():
    from statprune.streaming import LayerStreamer, module_bytes

    layers = get_adapter(tiny_model("llama", layers=2)).layers()
    s = LayerStreamer(layers, torch.device("cpu"))
    w0, w1 = layers[0].mlp.down_proj.weight, layers[1].mlp.down_proj.weight
    host0, ref0, ref1 = w0.data_ptr(), w0.detach().clone(), w1.detach().clone()
    s.fetch(0)
    assert w0.data_ptr() != host0 and torch.equal(w0, ref0)  # a copy, same values
    w0.data.mul_(2.0)  # changes the copy only
    s.release(0, modified=False)
    assert w0.data_ptr() == host0 and torch.equal(w0, ref0)  # host tensors back, untouched
    s.fetch(1)
    w1.data.mul_(2.0)
    s.release(1, modified=True)
    assert torch.equal(w1, 2.0 * ref1)  # a modified layer keeps its new weights
    assert not s.resident and s.bytes_moved == sum(module_bytes(layer) for layer in layers)
