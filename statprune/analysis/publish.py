"""``statprune publish SPEC``: a finished study's run records → ``results/published/<study>/`` (tracked).

``results/`` is gitignored; ``results/published/`` is not, so a fresh clone can redraw every paper
figure (``statprune figures`` reads published records first). Publishing copies the JSON record of
each ``done`` run — never weights, checkpoints, locks or reports — with absolute home paths
replaced by ``~``, and writes ``PROVENANCE.json`` (who published what from which code, and how
many records a run adopted from another run with the same resolved options; :mod:`statprune.sweep.adopt`).

A published record is *outdated* when other code made it: by the sweep's own rule (its record
format predates the current one, or its fingerprint — resolved method options, FLOPs-model version,
record format — differs from what the current code computes for its config; see
:mod:`statprune.sweep.fingerprint`), or its git commit does not descend from the study's
``compatible_since`` commit (set with
``--compatible-since COMMIT --reason TEXT`` when a change invalidates earlier numbers, kept in
``PROVENANCE.json`` for later publishes). Outdated records get an ``outdated`` key saying why;
``statprune figures`` leaves them out unless ``--include-outdated``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import re
import subprocess
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statprune.analysis.records import resolve_study
from statprune.errors import StatpruneError
from statprune.provenance import PROVENANCE_FILE, git_commit, source_sha256, versions
from statprune.sweep.fingerprint import RECORD_FORMAT, Expected
from statprune.sweep.fingerprint import outdated_reason as code_outdated_reason

PUBLISHED_ROOT = Path("results/published")


@dataclass
class PublishResult:
    study: str
    dest: Path
    published: list[str] = field(default_factory=list)  # run ids written
    outdated: dict[str, str] = field(default_factory=dict)  # run id → why
    skipped: dict[str, int] = field(default_factory=dict)  # status → count (not done)
    removed: list[str] = field(default_factory=list)  # previously published, no longer done here
    adopted: dict[str, str] = field(default_factory=dict)  # run id → the run id it adopted the record of


def publish_study(
    spec: str | Path,
    *,
    results_root: str | Path | None = None,
    dest_root: str | Path = PUBLISHED_ROOT,
    compatible_since: str | None = None,
    reason: str | None = None,
) -> PublishResult:
    """Copy the done records of ``spec``'s study into ``dest_root/<study>/`` and write its provenance.

    The destination then holds exactly the study's done records (earlier copies of runs that are no
    longer done are removed); a record whose run the spec does not expand to (a run dropped from the
    spec, or a record copied in from another study) is left out and counted as ``not in the spec``.
    ``compatible_since`` (a commit) replaces the marker kept from the last
    publish; ``reason`` says what changed then.
    """
    study = resolve_study(spec, results_root)
    src = study.results_dir
    if not src.is_dir():
        raise StatpruneError(
            f"no records of study {study.name!r} in {src}; run `statprune sweep {spec}` first"
        )
    dest = Path(dest_root) / study.name
    if src.resolve() == dest.resolve():
        raise StatpruneError(f"{src} is already the published folder; pass the sweep's --results")
    marker = _marker(dest, compatible_since, reason)
    result = PublishResult(study.name, dest)
    records: dict[str, dict[str, Any]] = {}
    skipped: Counter[str] = Counter()
    expected = Expected()
    in_spec = None if study.expected is None else {run_id for run_id, _, _ in study.expected}
    for path in sorted(p for p in src.glob("*.json") if not p.name.startswith(".")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            skipped["unreadable"] += 1
            continue
        if not isinstance(rec, dict) or "run_id" not in rec:
            continue
        if in_spec is not None and rec["run_id"] not in in_spec:
            skipped["not in the spec"] += 1
            continue
        if rec.get("status") != "done":
            skipped[str(rec.get("status"))] += 1
            continue
        rec.pop("outdated", None)
        why = outdated_reason(rec, marker, expected)
        if why:
            rec["outdated"] = why
            result.outdated[rec["run_id"]] = why
        records[rec["run_id"]] = scrub_home(rec)
        if isinstance(rec.get("adopted_from"), dict):
            result.adopted[rec["run_id"]] = str(rec["adopted_from"].get("run_id"))
    if not records:
        raise StatpruneError(f"study {study.name!r} has no done runs in {src}; nothing to publish")
    dest.mkdir(parents=True, exist_ok=True)
    for old in sorted(dest.glob("*.json")):
        if old.name != PROVENANCE_FILE and old.stem not in records:
            old.unlink()
            result.removed.append(old.stem)
    for run_id, rec in records.items():
        _write_json(dest / f"{run_id}.json", rec)
    result.published = sorted(records)
    result.skipped = dict(sorted(skipped.items()))
    _write_json(dest / PROVENANCE_FILE, _provenance(Path(spec), study.name, records, result, marker))
    return result


# --------------------------------------------------------------------------- outdated records


def outdated_reason(
    rec: dict[str, Any],
    marker: dict[str, str] | None,
    expected: Mapping[str, Any] | Expected | None = None,
) -> str | None:
    """Why ``rec`` comes from other code than the study accepts, or None: the sweep's rule (record
    format, fingerprint of resolved options and FLOPs model; :mod:`statprune.sweep.fingerprint`),
    then the study's ``compatible_since`` marker."""
    why = []
    code = code_outdated_reason(rec, expected)
    if code:
        why.append(code)
    if marker:
        commit = str(rec.get("git_commit") or "").removesuffix("+dirty")
        since = marker["commit"]
        if not commit:
            why.append("no git commit recorded")
        elif not _is_ancestor(since, commit):
            note = f" ({marker['reason']})" if marker.get("reason") else ""
            why.append(f"made at {commit[:12]}, not after compatible_since {since[:12]}{note}")
    return "; ".join(why) or None


def _git(*args: str) -> subprocess.CompletedProcess:
    repo = Path(__file__).resolve().parents[2]
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)


def _is_ancestor(ancestor: str, commit: str) -> bool:
    """``commit`` descends from (or is) ``ancestor``; a commit this repository lacks does not."""
    try:
        return _git("merge-base", "--is-ancestor", ancestor, commit).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _marker(dest: Path, commit: str | None, reason: str | None) -> dict[str, str] | None:
    if commit is None:
        prior = dest / PROVENANCE_FILE
        if not prior.is_file():
            return None
        return json.loads(prior.read_text()).get("compatible_since")
    try:
        out = _git("rev-parse", "--verify", f"{commit}^{{commit}}")
    except (OSError, subprocess.SubprocessError) as e:
        raise StatpruneError(f"--compatible-since needs git: {e}") from e
    if out.returncode != 0:
        raise StatpruneError(f"--compatible-since {commit!r} is not a commit of this repository")
    return {"commit": out.stdout.strip(), "reason": reason or ""}


# --------------------------------------------------------------------------- files


# at the start of a string or after a separator, so "/srv/home/x" is left alone
_HOME_RE = re.compile(
    r"(?<![^\s=:,;'\"(])(?:(?:/home|/Users)/[^/\s\"']+|" + re.escape(str(Path.home())) + r")(?=/|$|[\s\"'])"
)


def scrub_home(value: Any) -> Any:
    """``value`` with absolute home folders (``/home/<user>``, ``/Users/<user>``, ``$HOME``) as ``~``."""
    if isinstance(value, str):
        return _HOME_RE.sub("~", value)
    if isinstance(value, dict):
        return {k: scrub_home(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_home(v) for v in value]
    return value


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _provenance(
    spec: Path, study: str, records: dict[str, dict[str, Any]], result: PublishResult, marker: Any
) -> dict[str, Any]:
    def tally(key: str) -> dict[str, int]:
        return dict(sorted(Counter(str(r.get(key)) for r in records.values()).items()))

    finished = sorted(str(r.get("finished")) for r in records.values() if r.get("finished"))
    return {
        "study": study,
        "spec": _rel(spec),
        "spec_sha256": hashlib.sha256(spec.read_bytes()).hexdigest(),
        "published": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "published_from": {
            "git_commit": git_commit(),
            "source_sha256": source_sha256(),
            "versions": versions(),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        },
        "record_format": RECORD_FORMAT,
        "compatible_since": marker,
        "runs": {
            "done": len(records),
            "outdated": len(result.outdated),
            "adopted": len(result.adopted),
            "not_published": result.skipped,
        },
        "records": {
            "git_commits": tally("git_commit"),
            "source_sha256": tally("source_sha256"),
            "versions": [
                {"versions": json.loads(v), "runs": n}
                for v, n in sorted(
                    Counter(json.dumps(r.get("versions"), sort_keys=True) for r in records.values()).items()
                )
            ],
            "hosts": tally("host"),
            "devices": tally("device"),
            "finished": [finished[0], finished[-1]] if finished else None,
        },
    }


def _rel(p: Path) -> str:
    """``p`` relative to the working directory, else to the source tree's root (specs live there)."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        try:
            return str(p.resolve().relative_to(base.resolve()))
        except ValueError:
            continue
    return str(p)
