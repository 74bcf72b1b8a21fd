"""The Pruner interface shared by STAT and every baseline (the registry is :mod:`statprune.methods`).

A method is a function ``(model, adapter, calib, target, *, seed, **options) -> MethodOutput`` that
makes the model physically smaller in place. :func:`prune` wraps every method the same way: checks
the target, measures dense and pruned costs with the one FLOPs model, times the run and records peak
memory, so methods are compared on the same axis.
"""

from __future__ import annotations

import dataclasses
import time
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from statprune.adapters import Adapter, LayerShape, get_adapter
from statprune.calibration import Calibration
from statprune.errors import StatpruneError
from statprune.flops import cost_report
from statprune.methods import METHODS, Method, load_methods, register_method
from statprune.provenance import peak_memory_bytes
from statprune.seeding import seed_everything

__all__ = [
    "METHODS",
    "Method",
    "MethodOutput",
    "PruneResult",
    "Target",
    "load_methods",
    "method_options",
    "parse_options",
    "prune",
    "register_method",
]


@dataclass(frozen=True)
class Target:
    """Remove ``sparsity`` of the prunable FLOPs, measured at sequence length ``seq_len``.

    ``flops_dense`` is the dense model's prunable FLOPs at ``seq_len``: :func:`prune` computes it once
    with the shared FLOPs model and hands every method the completed target, so no method recomputes
    the budget (and all methods are held to the same one).
    """

    sparsity: float
    seq_len: float
    flops_dense: float | None = None

    @property
    def dense(self) -> float:
        if self.flops_dense is None:
            raise StatpruneError("Target has no dense FLOPs: methods are run through statprune.pruner.prune")
        return self.flops_dense

    @property
    def flops_to_remove(self) -> float:
        return self.sparsity * self.dense

    @property
    def flops_to_keep(self) -> float:
        return (1.0 - self.sparsity) * self.dense

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise StatpruneError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if not self.seq_len > 0:
            raise StatpruneError(f"seq_len must be positive, got {self.seq_len}")


@dataclass
class MethodOutput:
    """What a method reports besides the model it changed in place."""

    timings: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)


@dataclass
class PruneResult:
    method: str
    options: dict[str, Any]
    sparsity_target: float
    seq_len: float
    flops_dense: float
    flops_pruned: float
    params_dense: int
    params_pruned: int
    params_prunable_dense: int
    params_prunable_pruned: int
    shapes_dense: list[LayerShape]
    shapes_pruned: list[LayerShape]
    seed: int
    calib_size: int
    calib_tokens: int
    prune_seconds: float
    peak_memory_bytes: int
    timings: dict[str, float]
    diagnostics: dict[str, Any]

    @property
    def sparsity_achieved(self) -> float:
        return 1.0 - self.flops_pruned / self.flops_dense

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sparsity_achieved"] = self.sparsity_achieved
        d["layers"] = [s.to_dict() for s in self.shapes_pruned]
        d["layers_dense"] = [s.to_dict() for s in self.shapes_dense]
        d.pop("shapes_dense")
        d.pop("shapes_pruned")
        return d


def _coerce(name: str, value: Any, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Literal:
        if value not in args:
            raise StatpruneError(f"option {name}={value!r}: expected one of {', '.join(map(str, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() == "none")
        if is_none and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(name, value, a)
            except StatpruneError as e:
                errors.append(str(e))
        raise StatpruneError(errors[0] if errors else f"option {name}: bad value {value!r}")
    if typ is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise StatpruneError(f"option {name}={value!r}: expected true or false")
    if typ in (int, float, str):
        try:
            return typ(value)
        except (TypeError, ValueError):
            raise StatpruneError(f"option {name}={value!r}: expected {typ.__name__}") from None
    return value


def neutral(default: Any) -> Any:
    """A dataclass field for an option added after records exist, whose ``default`` reproduces what
    the code did before the option existed: at that default it is left out of a run's fingerprint
    (statprune/sweep/fingerprint.py), so earlier records stay current. Never for a default that
    changes results."""
    return dataclasses.field(default=default, metadata={"neutral_default": True})


def parse_options(cls: type, raw: Mapping[str, Any]) -> Any:
    """Build the options dataclass ``cls`` from strings or values; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise StatpruneError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    return cls(**{k: _coerce(k, v, hints[k]) for k, v in raw.items()})


def method_options(method: str, raw: Mapping[str, Any] | None = None) -> Any:
    _, cls = METHODS.get(method)
    return parse_options(cls, raw or {})


def prune(
    model: nn.Module,
    calib: Calibration,
    target: Target,
    *,
    method: str = "stat",
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    adapter: Adapter | None = None,
) -> PruneResult:
    """Prune ``model`` in place with the registered ``method``; returns costs, shapes and timings."""
    fn, cls = METHODS.get(method)
    opts = parse_options(cls, options or {})
    adapter = adapter or get_adapter(model)
    dense = cost_report(adapter, target.seq_len)
    target = dataclasses.replace(target, flops_dense=dense.flops)
    shapes_dense = adapter.shapes()
    device = adapter.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seed_everything(seed)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        out = fn(model, adapter, calib, target, seed=seed, options=opts)
    finally:
        model.train(was_training)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    pruned = cost_report(adapter, target.seq_len)
    return PruneResult(
        method=method,
        options=dataclasses.asdict(opts),
        sparsity_target=target.sparsity,
        seq_len=target.seq_len,
        flops_dense=dense.flops,
        flops_pruned=pruned.flops,
        params_dense=dense.params_total,
        params_pruned=pruned.params_total,
        params_prunable_dense=dense.params_prunable,
        params_prunable_pruned=pruned.params_prunable,
        shapes_dense=shapes_dense,
        shapes_pruned=adapter.shapes(),
        seed=seed,
        calib_size=calib.num_examples,
        calib_tokens=calib.num_tokens,
        prune_seconds=seconds,
        peak_memory_bytes=peak_memory_bytes(device),
        timings=out.timings,
        diagnostics=out.diagnostics,
    )
