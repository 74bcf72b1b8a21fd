"""Inference speed of a (pruned) model: encoder/decoder forward throughput and decoder latency.

Timing follows the usual GPU discipline: warm-up first (kernel selection, allocator, lazy caches),
then every repetition timed with CUDA events and the median reported. Eager PyTorch at batch 1 is
bound by kernel-launch overhead on the host, which hides any gain from a smaller model, so on CUDA
each measurement is also taken as a CUDA-graph replay (the same kernels, launched as one graph);
both numbers are reported, with the path that was used. On CPU the host clock is used.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def time_fn(fn: Callable[[], Any], device: torch.device, *, warmup: int = 3, reps: int = 10) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def graphed(fn: Callable[[], Any], device: torch.device, warmup: int = 3) -> Callable[[], Any] | None:
    """``fn`` captured as a CUDA graph (replay callable), or None when capture is not possible."""
    if device.type != "cuda":
        return None
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph.replay
    except Exception:  # any capture failure means: measure eagerly only
        torch.cuda.synchronize(device)
        return None


def fastest(timings: dict[str, Any], keys: tuple[str, ...]) -> tuple[float, str]:
    """The smallest of the ``keys`` timed, and its mode (the key without ``step_`` and ``_ms``): the
    headline speedups compare each side in its own fastest mode, which can differ between them, so
    the record says which."""
    ms, key = min((timings[k], k) for k in keys if timings.get(k) is not None)
    return ms, key.removeprefix("step_").removesuffix("_ms")


@torch.no_grad()
def forward_speed(
    model: nn.Module,
    *,
    batch: int,
    seq: int,
    vocab: int,
    device: torch.device,
    reps: int = 10,
    seed: int = 0,
    compile: bool = False,
) -> dict[str, Any]:
    """Forward time of the backbone (no LM/classifier head) on ``batch × seq`` random tokens; with
    ``compile`` also of the ``torch.compile``'d backbone (see :func:`_time_compiled`)."""
    backbone = getattr(model, "base_model", model)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=gen).to(device)
    extra = {"use_cache": False} if _is_decoder(model) else {}

    def forward_of(module: Callable[..., Any]) -> Callable[[], Any]:
        return lambda: module(input_ids=ids, **extra).last_hidden_state

    fn = forward_of(backbone)
    out: dict[str, Any] = {"batch": batch, "seq": seq, "eager_ms": time_fn(fn, device, reps=reps)}
    replay = graphed(fn, device)
    out["graph_ms"] = time_fn(replay, device, reps=reps) if replay is not None else None
    del replay
    if compile:
        out.update(_time_compiled(fn, forward_of(torch.compile(backbone, dynamic=False)), device, reps=reps))
    out["ms"], out["mode"] = fastest(out, ("eager_ms", "graph_ms", "compiled_ms", "compiled_graph_ms"))
    out["tokens_per_s"] = batch * seq / (out["ms"] / 1e3)
    _free(device)
    return out


@torch.no_grad()
def decode_latency(
    model: nn.Module,
    *,
    prompt: int,
    new_tokens: int,
    vocab: int,
    device: torch.device,
    reps: int = 3,
    seed: int = 0,
    compile: bool = False,
) -> dict[str, Any]:
    """Batch-1 greedy generation: milliseconds per generated token (``generate``) and per decode step.

    ``generate_ms_per_token`` is the stock ``model.generate`` (dynamic cache, eager). ``step_ms`` is
    one decode step (one token, static KV cache at position ``prompt``), eager and graph-replayed;
    with ``compile`` also the ``torch.compile``'d step (see :func:`_time_compiled`).
    """
    from transformers import StaticCache

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (1, prompt), generator=gen).to(device)
    mask = torch.ones_like(ids)

    def generate() -> Any:
        return model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )

    out: dict[str, Any] = {"prompt": prompt, "new_tokens": new_tokens}
    out["generate_ms_per_token"] = time_fn(generate, device, warmup=1, reps=reps) / new_tokens

    # The static cache advances its own write position (transformers 5), so each series of steps
    # starts from the prompt again; 64 free slots cover warm-up, capture and the timed steps.
    cache = StaticCache(config=model.config, max_cache_len=prompt + 64)
    model(
        input_ids=ids,
        past_key_values=cache,
        cache_position=torch.arange(prompt, device=device),
        use_cache=True,
    )
    tok = ids[:, -1:].clone()
    pos = torch.tensor([prompt], device=device)

    def rewind() -> None:
        pos.fill_(prompt)
        for layer in getattr(cache, "layers", []):
            if hasattr(layer, "cumulative_length"):
                layer.cumulative_length.fill_(prompt)

    def step_of(forward: Callable[..., Any]) -> Callable[[], Any]:
        def step() -> Any:
            logits = forward(input_ids=tok, past_key_values=cache, cache_position=pos, use_cache=True).logits
            pos.add_(1)
            return logits

        return step

    step = step_of(model)

    rewind()
    out["step_eager_ms"] = time_fn(step, device, reps=20)
    rewind()
    replay = graphed(step, device)
    rewind()
    out["step_graph_ms"] = time_fn(replay, device, reps=20) if replay is not None else None
    del replay
    if compile:
        compiled = step_of(torch.compile(model, dynamic=False))
        out.update(_time_compiled(step, compiled, device, reset=rewind, reps=20, prefix="step_"))
    steps = ("step_eager_ms", "step_graph_ms", "step_compiled_ms", "step_compiled_graph_ms")
    out["step_ms"], out["step_mode"] = fastest(out, steps)
    _free(device)
    return out


def _time_compiled(
    eager: Callable[[], torch.Tensor],
    compiled: Callable[[], torch.Tensor],
    device: torch.device,
    *,
    reset: Callable[[], None] = lambda: None,
    reps: int = 10,
    prefix: str = "",
) -> dict[str, Any]:
    """Times (``<prefix>compiled_ms``, ``<prefix>compiled_graph_ms``) of a ``torch.compile``'d
    function, called directly and graph-replayed, and its output's distance from the eager output on
    the same input (a compiler that changed the numbers would make the timing meaningless).
    ``reset`` restores any state a call advances (the decode step's cache).

    Inductor fuses the element-wise work (norms, rotary, activations, residual adds) into few
    kernels, which is what a serving stack runs; the dense and the pruned model are compiled alike.
    """
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    try:
        reset()
        reference = eager().float()
        for _ in range(3):  # compile, and any recompile, before timing
            reset()
            result = compiled().float()
        _sync(device)
        out["compile_s"] = time.perf_counter() - t0
        out["compiled_max_abs_diff"] = float((result - reference).abs().max())
        out["output_max_abs"] = float(reference.abs().max())
        del reference, result
        reset()
        out[f"{prefix}compiled_ms"] = time_fn(compiled, device, reps=reps)
        reset()
        replay = graphed(compiled, device)
        reset()
        out[f"{prefix}compiled_graph_ms"] = time_fn(replay, device, reps=reps) if replay is not None else None
        del replay
    except Exception as e:  # a compiler failure costs these numbers, not the benchmark
        out["compile_error"] = f"{type(e).__name__}: {e}"[:500]
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _is_decoder(model: nn.Module) -> bool:
    from statprune.models.load import is_decoder

    return is_decoder(model.config)


def _free(device: torch.device) -> None:
    _sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
