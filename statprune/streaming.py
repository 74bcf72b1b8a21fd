"""Layer streaming: walk a model larger than the accelerator one layer at a time.

The model stays where the user put it (host memory). Everything outside ``adapter.layers()``
(embeddings, rotary tables, final norm, head: a few percent of a decoder) is moved to the compute
device for the whole walk so that layer-0 capture runs there. Each layer is copied to the device
when the walk reaches it and released when the walk leaves it: a layer the walk only read gets its
host tensors back (no copy back); a layer the walk modified (pruned) is copied back to the host.

The next layer is copied ahead on a side CUDA stream by a helper thread while the current one
computes: a copy from pageable host memory blocks the thread that issues it, so issuing it from the
walk's thread would serialise it with the compute. The thread is joined when the layer's forward
ends (:meth:`LayerStreamer.settle`), before any factorization captures a CUDA graph. Weights are not pinned (pinning a 26 GB model
costs a full host copy and locks the RAM for the process's lifetime).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class _Slot:
    """One tensor of a layer: its owner module, attribute, whether a parameter, and its host copy."""

    owner: nn.Module
    name: str
    is_param: bool
    host: torch.Tensor


@dataclass
class _Prefetch:
    slots: list[_Slot]
    box: dict = field(default_factory=dict)
    thread: threading.Thread | None = None


def _slots(module: nn.Module) -> list[_Slot]:
    out = []
    for mod in module.modules():
        for name, p in mod._parameters.items():
            if p is not None:
                out.append(_Slot(mod, name, True, p.data))
        for name, b in mod._buffers.items():
            if b is not None:
                out.append(_Slot(mod, name, False, b))
    return out


def _assign(slot: _Slot, tensor: torch.Tensor) -> None:
    if slot.is_param:
        slot.owner._parameters[slot.name].data = tensor  # keeps the Parameter object (ties, references)
    else:
        slot.owner._buffers[slot.name] = tensor


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for t in list(module.parameters()) + list(module.buffers()):
        seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def device_free_bytes(device: torch.device) -> int:
    """Free device memory this process may still take: the driver's free memory plus the allocator's
    cached blocks, capped by ``torch.cuda.set_per_process_memory_fraction`` when one is set."""
    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    free += torch.cuda.memory_reserved(device) - allocated
    get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    if get_fraction is not None:
        free = min(free, int(get_fraction(device) * total) - allocated)
    return max(free, 0)


def _host_available_bytes() -> int:
    """Host memory available without swapping (MemAvailable: free plus reclaimable cache); 0 if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def free_bytes(device: torch.device) -> int:
    """Memory still available where ``device`` keeps tensors: :func:`device_free_bytes` on CUDA,
    host memory (MemAvailable) otherwise."""
    return device_free_bytes(device) if device.type == "cuda" else _host_available_bytes()


def move_outside_layers(model: nn.Module, layers: nn.ModuleList, device: torch.device) -> None:
    """Move every parameter and buffer of ``model`` that is not in ``layers`` to ``device``."""
    inside = {id(t) for t in layers.parameters()} | {id(t) for t in layers.buffers()}
    for mod in model.modules():
        for p in mod._parameters.values():
            if p is not None and id(p) not in inside:
                p.data = p.data.to(device)
        for name, b in mod._buffers.items():
            if b is not None and id(b) not in inside:
                mod._buffers[name] = b.to(device)


class LayerStreamer:
    """Keeps ``layers`` in host memory and holds at most the current (and the next) on ``device``.

    Copies are always made, also when ``device`` is the host (CPU), so the streamed path runs, and is
    tested, on machines without an accelerator.
    """

    def __init__(self, layers: nn.ModuleList, device: torch.device, *, prefetch: bool = True) -> None:
        self.layers = layers
        self.device = torch.device(device)
        self.home = next(layers[0].parameters()).device
        self.stream = torch.cuda.Stream(self.device) if prefetch and self.device.type == "cuda" else None
        self.resident: dict[int, list[_Slot]] = {}
        self.pending: dict[int, _Prefetch] = {}
        self.bytes_moved = 0

    def _copy(self, slots: list[_Slot]) -> list[torch.Tensor]:
        return [s.host.to(self.device, non_blocking=True, copy=True) for s in slots]

    def _prefetch(self, i: int) -> None:
        if self.stream is None or i >= len(self.layers) or i in self.pending or i in self.resident:
            return
        job = _Prefetch(_slots(self.layers[i]))
        job.thread = threading.Thread(
            target=self._work, args=(job,), name=f"statprune-prefetch-{i}", daemon=True
        )
        job.thread.start()
        self.pending[i] = job

    def _work(self, job: _Prefetch) -> None:
        with torch.cuda.stream(self.stream):
            job.box["tensors"] = self._copy(job.slots)
            job.box["event"] = torch.cuda.Event()
            job.box["event"].record(self.stream)

    def fetch(self, i: int) -> None:
        """Put layer ``i`` on the device (waiting for its prefetch), then start prefetching ``i + 1``."""
        job = self.pending.pop(i, None)
        if job is not None and job.thread is not None:
            job.thread.join()
        if job is not None and "event" in job.box:
            slots, tensors = job.slots, job.box["tensors"]
            current = torch.cuda.current_stream(self.device)
            current.wait_event(job.box["event"])
            for t in tensors:  # allocated on the side stream, used (and freed) on this one
                t.record_stream(current)
        else:
            slots = _slots(self.layers[i])
            tensors = self._copy(slots)
        for s, t in zip(slots, tensors):
            _assign(s, t)
            self.bytes_moved += t.numel() * t.element_size()
        self.resident[i] = slots
        self._prefetch(i + 1)

    def release(self, i: int, *, modified: bool) -> None:
        """Send layer ``i`` back: its host tensors if only read, a copy of its new weights if ``modified``."""
        slots = self.resident.pop(i)
        if modified:
            self.layers[i].to(self.home)
            return
        for s in slots:
            _assign(s, s.host)

    def settle(self) -> None:
        """Wait until every prefetch has been issued (its thread done): CUDA graph capture in global
        mode, as the factorizations use it, must not overlap another thread's CUDA calls."""
        for job in self.pending.values():
            if job.thread is not None:
                job.thread.join()

    def close(self) -> None:
        """Wait for any prefetch still running, drop it, and send back any layer still resident."""
        for job in self.pending.values():
            if job.thread is not None:
                job.thread.join()
        self.pending.clear()
        for i in list(self.resident):
            self.release(i, modified=True)
