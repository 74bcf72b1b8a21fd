"""Layer l's factorizations on a worker thread while the measure walk runs layer l+1's forward.

In the measure walk nothing that layer l+1 computes depends on layer l's curves (the walk runs the
original model), so the pivoted-Cholesky factorizations of layer l — latency-bound, a few SMs busy
— can run beside the next forward, which fills the GPU with GEMMs (issue 14: at the Llama-2-7B
shape the factorizations were 8.4 s of a 34.6 s prune). One worker thread, on CUDA with its own
stream: a job waits for an event recorded on the walk's stream after the layer's Grams are final,
and the Gram tensors are marked as used on the worker's stream so that the caching allocator does not
hand their memory to the walk before the job is done. Jobs run in submission order and return CPU
tensors (the curves), so the results are bit-identical to the serial path. Layer 0's job runs
inline, before the worker has any: its factorizations capture the CUDA graphs of the pivot chunks
(statprune/stat/id.py), which later layers of the same sizes replay. The apply walk cannot
overlap: layer l+1 runs on layer l's pruned output.

``STATPRUNE_OVERLAP``: unset = on CUDA (not with ``weights=stream``, whose layers go back to the
host after their forward); ``0`` = never; ``1`` = also on the CPU (a thread, no streams: how the
tests check that the results do not change).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

ENV = "STATPRUNE_OVERLAP"


def wanted(device: torch.device, streamed: bool) -> bool:
    """Whether the measure walk should overlap its factorizations (module docstring)."""
    mode = os.environ.get(ENV, "")
    if mode == "0" or streamed:
        return False
    return mode == "1" or device.type == "cuda"


class Overlap:
    """A one-thread executor for factorization jobs (its own CUDA stream on a GPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stat-factorize")
        self.busy_seconds = 0.0  # the jobs' own wall time (hidden behind the walk, or not)

    def submit(self, job: Callable[[], Any], inputs: Sequence[torch.Tensor]) -> Future:
        """Run ``job()`` after the work queued so far on the current stream (which made ``inputs``)."""
        ready = None
        if self.stream is not None:
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))
            for t in inputs:
                t.record_stream(self.stream)
        return self.pool.submit(self._run, job, ready)

    def _run(self, job: Callable[[], Any], ready: torch.cuda.Event | None) -> Any:
        t0 = time.perf_counter()
        try:
            if self.stream is None:
                with torch.no_grad():  # grad mode is per thread
                    return job()
            with torch.no_grad(), torch.cuda.device(self.device), torch.cuda.stream(self.stream):
                self.stream.wait_event(ready)
                out = job()
                self.stream.synchronize()
                return out
        finally:
            self.busy_seconds += time.perf_counter() - t0

    def close(self) -> None:
        """Wait for every job; afterwards the walk's stream sees their work."""
        self.pool.shutdown(wait=True)
        if self.stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
