"""Stage timer shared by pruning methods, sweep runs and benchmarks."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any


class StageTimer:
    """Wall-clock seconds per named stage, summed over repeated entries.

    With a CUDA ``device`` the device is synchronised at both ends of a stage, so queued kernels are
    charged to the stage that launched them.
    """

    def __init__(self, device: Any = None) -> None:
        self.device = device
        self.totals: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.totals[stage] = self.totals.get(stage, 0.0) + time.perf_counter() - t0

    def _sync(self) -> None:
        if self.device is not None and getattr(self.device, "type", None) == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
