"""What decides a run's result besides its spec, hashed, so a resume never reuses a record that
other code made.

The ``run_id`` hashes the options as written in the spec (so result folders survive new options);
the *fingerprint* hashes what the code makes of them: the resolved options dataclass (every
default filled in), :data:`statprune.flops.FLOPS_MODEL_VERSION` and :data:`RECORD_FORMAT`. A
``done`` record whose fingerprint differs from what the current code computes for its config is
*outdated*: ``statprune sweep`` runs it again, ``statprune publish`` marks it. The expected stamp is
computed from the config alone (parsing the options with the method's options class), nothing runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

# 1: no ``record_format`` field (older records); 2: record_format, flops_model_version,
# method_options_resolved and (done records) fingerprint. Bump when records change meaning.
RECORD_FORMAT = 2

_ABSENT = "(absent)"


def record_format(rec: Mapping[str, Any]) -> int:
    """A record's format: its ``record_format`` field; records without one are format 1."""
    fmt = rec.get("record_format")
    return fmt if isinstance(fmt, int) and not isinstance(fmt, bool) else 1


def _canonical(obj: Any) -> Any:
    """``obj`` as it reads back from a JSON record (tuples → lists), so stored and fresh values compare."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def fingerprint(options_resolved: Mapping[str, Any], flops_model_version: int, fmt: int) -> str:
    """sha256 of the resolved options, the FLOPs-model version and the record format."""
    canon = json.dumps(
        {
            "method_options_resolved": _canonical(dict(options_resolved)),
            "flops_model_version": flops_model_version,
            "record_format": fmt,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canon.encode()).hexdigest()


def stamp(options_resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The record fields saying what code made a run: format, FLOPs model, resolved options, fingerprint."""
    from statprune.flops import FLOPS_MODEL_VERSION

    resolved = _canonical(dict(options_resolved))
    return {
        "record_format": RECORD_FORMAT,
        "flops_model_version": FLOPS_MODEL_VERSION,
        "method_options_resolved": resolved,
        "fingerprint": fingerprint(resolved, FLOPS_MODEL_VERSION, RECORD_FORMAT),
    }


def resolve_options(method: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The method's full options dataclass after defaults, as a dict, less the options at a
    *neutral default* (:func:`statprune.pruner.neutral`: an option added later whose default does
    what the code did before it existed), so adding such an option leaves earlier records current."""
    from statprune.pruner import method_options

    return fingerprinted(method_options(method, dict(options or {})))


def fingerprinted(opts: Any) -> dict[str, Any]:
    """An options dataclass as a dict, without the fields that sit at a neutral default."""
    return without_neutral(type(opts), dataclasses.asdict(opts))


def without_neutral(cls: type, resolved: Mapping[str, Any]) -> dict[str, Any]:
    """``resolved`` (an options dataclass of type ``cls`` as a dict) less the fields at a neutral default."""
    out = dict(resolved)
    for f in dataclasses.fields(cls):
        if f.metadata.get("neutral_default") and f.name in out and out[f.name] == f.default:
            del out[f.name]
    return out


def expected_stamp(method: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The stamp the current code would write for a run of ``method`` with the spec's ``options``."""
    return stamp(resolve_options(method, options))


class Expected:
    """:func:`expected_stamp` cached per (method, options): a sweep has few distinct method entries."""

    def __init__(self) -> None:
        self._cache: dict[str, dict[str, Any]] = {}

    def __call__(self, method: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
        key = json.dumps([method, options or {}], sort_keys=True, default=str)
        if key not in self._cache:
            self._cache[key] = expected_stamp(method, options)
        return self._cache[key]


def outdated_reason(
    rec: Mapping[str, Any], expected: Mapping[str, Any] | Expected | None = None
) -> str | None:
    """Why a record does not match what the current code would produce for its config, or None.

    ``expected``: the current stamp of the run (see :func:`expected_stamp`), an :class:`Expected`
    cache, or None to compute it from the record's config. Options that no longer parse (an option
    removed from the method) make the record outdated, with the parse error as the reason.
    """
    from statprune.errors import StatpruneError

    fmt = record_format(rec)
    if fmt < RECORD_FORMAT:
        return f"record format {fmt} < {RECORD_FORMAT}"
    if not isinstance(expected, Mapping):
        cfg = rec.get("config") or {}
        get = expected or expected_stamp
        try:
            expected = get(str(cfg.get("method")), cfg.get("method_options"))
        except StatpruneError as e:
            return f"its method options no longer parse: {e}"
    if rec.get("fingerprint") == expected["fingerprint"]:
        return None
    why = []
    if fmt != expected["record_format"]:
        why.append(f"record format {fmt}, now {expected['record_format']}")
    old_flops, new_flops = rec.get("flops_model_version"), expected["flops_model_version"]
    if old_flops != new_flops:
        why.append(f"FLOPs model {old_flops}, now {new_flops}")
    old = rec.get("method_options_resolved")
    new = expected["method_options_resolved"]
    if not isinstance(old, Mapping):
        why.append("no resolved options recorded")
    else:
        for k in sorted(set(old) | set(new)):
            a, b = old.get(k, _ABSENT), new.get(k, _ABSENT)
            if _canonical(a) != _canonical(b):
                why.append(f"option {k}: {_show(a)} → {_show(b)}")
    if not rec.get("fingerprint"):
        why.append("no fingerprint")
    return "; ".join(why) or "fingerprint differs"


def _show(v: Any) -> str:
    return v if v == _ABSENT else json.dumps(v)
