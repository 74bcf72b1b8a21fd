"""The pruning-method registry: a table ``name → "module:function"``, imported lazily.

Looking a method up imports only that method's module, so listing the methods, validating a name
(with "did you mean") and importing :mod:`statprune.pruner` pull in no method code, and the method
modules can import :mod:`statprune.pruner` without an import circle. A method function is declared
with :func:`register_method` (its options dataclass), and listed in :data:`METHOD_PATHS`; the
decorator checks that both say the same thing. This module imports neither torch nor any method.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from statprune.errors import StatpruneError
from statprune.registry import Registry

Method = Callable[..., Any]  # (model, adapter, calib, target, *, seed, options) -> MethodOutput

METHOD_PATHS: dict[str, str] = {
    "stat": "statprune.stat.prune:stat_prune",
    "magnitude": "statprune.baselines.magnitude:magnitude_prune",
    "kwon": "statprune.baselines.kwon.method:kwon_prune",
    "slicegpt": "statprune.baselines.slicegpt.method:slicegpt_prune",
    "flap": "statprune.baselines.flap:flap_prune",
    "wanda-sp": "statprune.baselines.wanda_sp:wanda_sp_prune",
}


class MethodRegistry:
    """Method name → (function, options dataclass), resolved from its ``module:function`` on first use."""

    def __init__(self, paths: Mapping[str, str]) -> None:
        self._paths: Registry[str] = Registry("pruning method")
        self._loaded: dict[str, tuple[Method, type]] = {}
        for name, path in paths.items():
            self.add(name, path)

    def add(self, name: str, path: str) -> None:
        """List a method (e.g. a plugin's) by the ``module:function`` that implements it."""
        if ":" not in path:
            raise ValueError(f"method {name!r}: expected 'module:function', got {path!r}")
        self._paths.add(name, path)

    def path(self, name: str) -> str:
        return self._paths.get(name)

    def get(self, name: str) -> tuple[Method, type]:
        if name not in self._loaded:
            self._loaded[name] = _resolve(name, self._paths.get(name))
        return self._loaded[name]

    def unknown_message(self, name: str) -> str:
        return self._paths.unknown_message(name)

    def names(self) -> list[str]:
        return self._paths.names()

    def __contains__(self, name: object) -> bool:
        return name in self._paths

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)


def _resolve(name: str, path: str) -> tuple[Method, type]:
    module, _, attr = path.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            raise StatpruneError(
                f"pruning method {name!r} is listed as {path}, but module {module} does not exist "
                "in this installation"
            ) from None
        raise
    fn = getattr(mod, attr, None)
    if fn is None:
        raise StatpruneError(f"pruning method {name!r} is listed as {path}, but {module} has no {attr!r}")
    options = getattr(fn, "options_type", None)
    if options is None or getattr(fn, "method_name", None) != name:
        raise StatpruneError(f"{path} is not declared with @register_method({name!r}, <Options>)")
    return fn, options


METHODS = MethodRegistry(METHOD_PATHS)


def register_method(name: str, options: type) -> Callable[[Method], Method]:
    """Declare ``fn`` as method ``name`` with its typed options dataclass (no global side effect).

    ``name`` must be listed in :data:`METHODS` as this function's ``module:function``; a mismatch
    fails at import with the line to add.
    """

    def deco(fn: Method) -> Method:
        where = f"{fn.__module__}:{fn.__qualname__}"
        listed = METHODS.path(name) if name in METHODS else None
        if listed != where:
            raise ValueError(
                f"method {name!r} is defined at {where} but listed as {listed}; "
                f"set METHOD_PATHS[{name!r}] = {where!r} in statprune/methods.py"
            )
        fn.method_name = name  # type: ignore[attr-defined]
        fn.options_type = options  # type: ignore[attr-defined]
        return fn

    return deco


def load_methods() -> MethodRegistry:
    """The method registry (kept for callers; lookups import what they need)."""
    return METHODS
