"""Adoption: a run with no record takes over the done record of a run that computed exactly the same.

The ``run_id`` hashes the method options as written, so spelling a default out (pinning an option
before its default changes) gives a new run id although nothing about the computation changed. A
run with no record *adopts* a done record whose config equals its own except ``method_options``
and whose fingerprint (resolved options, FLOPs model, record format) is the one the current code
would write for the new run: a copy under the new run id, with ``adopted_from`` saying where it came
from. Candidates come from the study's folder, then from ``sources`` (folders of ``<run_id>.json``
records, e.g. ``results/published/<study>/``) in order; within a folder, by run id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from statprune.errors import StatpruneError
from statprune.provenance import PROVENANCE_FILE
from statprune.sweep.config import RunConfig, RunSpec, thaw
from statprune.sweep.fingerprint import RECORD_FORMAT, Expected, record_format
from statprune.sweep.store import RunStore, now_iso, read_json


@dataclass(frozen=True)
class Adoptable:
    """The record a run would adopt: ``source`` is the folder it lies in, as given (the store: its dir)."""

    run_id: str  # the new run's
    record: dict[str, Any]
    source: str

    @property
    def from_id(self) -> str:
        return str(self.record["run_id"])


def adoptable(
    store: RunStore, runs: Sequence[RunSpec], sources: Sequence[str | Path] = ()
) -> dict[str, Adoptable]:
    """For each run of ``runs`` in state ``missing`` (no record, no lock), the done record it can
    adopt, if any. Reads only."""
    for s in sources:
        if not Path(s).is_dir():
            raise StatpruneError(f"no folder of records to adopt from: {s}")
    states = store.states(r.run_id for r in runs)
    missing = [r for r in runs if states[r.run_id].status == "missing" and states[r.run_id].record is None]
    if not missing:
        return {}
    folders = [(store.dir, str(store.dir)), *((Path(s), str(s)) for s in sources)]
    candidates: dict[str, list[tuple[dict[str, Any], str, dict[str, str] | None]]] = {}
    for folder, given in folders:
        marker = _marker(folder)
        for rec in _records(folder):
            key = _config_key(rec.get("config"))
            if key is not None and _eligible(rec):
                candidates.setdefault(key, []).append((rec, given, marker))
    expected = Expected()
    out: dict[str, Adoptable] = {}
    for run in missing:
        options = thaw(run.config.method_options) or {}
        try:
            stamp = expected(run.config.method, options)
        except StatpruneError:
            continue
        for rec, given, marker in candidates.get(_config_key(run.config.to_dict()) or "", []):
            if rec["run_id"] != run.run_id and _current(rec, stamp, marker):
                out[run.run_id] = Adoptable(run.run_id, rec, given)
                break
    return out


def adopt(store: RunStore, runs: Sequence[RunSpec], sources: Sequence[str | Path] = ()) -> dict[str, str]:
    """Write the adopted record of every run that :func:`adoptable` finds one for; returns new run
    id → adopted run id. A run that got a record or a lock meanwhile is left alone."""
    found = adoptable(store, runs, sources)
    by_id = {r.run_id: r for r in runs}
    done: dict[str, str] = {}
    if not found:
        return done
    with store.guard():
        for run_id, a in found.items():
            if store.read(run_id) is not None or store.read_lock(run_id) is not None:
                continue
            store.write(adopted_record(a.record, by_id[run_id], store.study, a.source))
            done[run_id] = a.from_id
    return done


def adopted_record(old: Mapping[str, Any], run: RunSpec, study: str, source: str) -> dict[str, Any]:
    """``old`` as the record of ``run``: its id, name and config (and study), ``adopted_from`` added;
    everything the code made (metrics, timings, commit, fingerprint, …) unchanged."""
    rec = {k: v for k, v in old.items() if k != "outdated"}  # publish's mark: recomputed where published
    rec.update(run_id=run.run_id, name=run.name, config=run.config.to_dict())
    if "study" in rec:
        rec["study"] = study
    rec["adopted_from"] = {
        "run_id": old["run_id"],
        "name": old.get("name"),
        "source": source,
        "when": now_iso(),
        **({"adopted_from": old["adopted_from"]} if old.get("adopted_from") else {}),
    }
    return rec


def _records(folder: Path) -> list[dict[str, Any]]:
    """The run records of a folder (``<run_id>.json`` whose ``run_id`` is the stem), by run id."""
    out = []
    for p in sorted(folder.glob("*.json")):
        if p.name == PROVENANCE_FILE or p.name.startswith("."):
            continue
        rec = read_json(p)
        if isinstance(rec, dict) and rec.get("run_id") == p.stem:
            out.append(rec)
    return out


def _eligible(rec: Mapping[str, Any]) -> bool:
    return (
        rec.get("status") == "done" and record_format(rec) >= RECORD_FORMAT and bool(rec.get("fingerprint"))
    )


def _config_key(config: Any) -> str | None:
    """A config without its method options as canonical JSON (None: not a config this code reads)."""
    if not isinstance(config, Mapping):
        return None
    try:
        d = RunConfig.from_dict(config).to_dict()
    except (TypeError, ValueError):
        return None
    d.pop("method_options")
    return json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)


def _current(rec: Mapping[str, Any], stamp: Mapping[str, Any], marker: dict[str, str] | None) -> bool:
    """The current code would write ``rec``'s stamp for the new run, and the folder's publish marker
    (``compatible_since``) does not outdate it: the publish rule, against the new run's stamp."""
    if rec.get("fingerprint") != stamp["fingerprint"]:  # eligible records have the current format
        return False
    if marker is None:
        return True
    from statprune.analysis.publish import outdated_reason as published_reason  # pandas: only when needed

    return published_reason(dict(rec), marker, stamp) is None


def _marker(folder: Path) -> dict[str, str] | None:
    """The ``compatible_since`` marker of a published folder (None elsewhere)."""
    prov = read_json(folder / PROVENANCE_FILE)
    marker = (prov or {}).get("compatible_since") if isinstance(prov, dict) else None
    return marker if isinstance(marker, dict) and marker.get("commit") else None
