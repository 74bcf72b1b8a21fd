"""The paper-figure manifest → every figure and table, rebuilt from the sweep records.

``paper_figures/manifest.toml`` names each output once: its kind, the sweep spec(s) whose study it
reads, and a filter of the runs. :func:`build_figures` checks each study before drawing: an output
whose selected runs are not all ``done`` is *not* drawn (a half-finished figure looks like a
result) unless ``allow_missing``, and the problem names the exact ``statprune sweep`` command that
completes it. Outputs go to ``paper_figures/out/`` (gitignored), or to ``paper_figures/ci/``
(committed) for items marked ``ci = true`` — the small study that CI runs for real. Items marked
``docs = true`` also land, once complete, in ``docs/figures/<id>.png`` (``.md`` for tables), which
the README shows; ``docs/figures/README.md`` indexes them with caption and command.

Where records are read (per study): ``--results DIR`` or the manifest's ``results_root`` when given;
otherwise the published records ``results/published/<study>/`` (tracked; :mod:`.publish`) when that
folder exists, else the spec's ``results_dir`` (default ``results/``). Published records marked
``outdated`` count as not done unless ``include_outdated``.

Manifest format (paths relative to ``root``, which is relative to the manifest's folder)::

    [defaults]
    root = ".."                      # the project root
    out_dir = "paper_figures/out"
    ci_dir = "paper_figures/ci"
    results_root = "results"          # optional; else published, else each spec's results_dir/results
    published_root = "results/published"
    docs_dir = "docs/figures"

    [figure.accuracy_vs_flops_minilm]
    kind = "metric_vs_flops"          # metric_vs_flops | metric_vs_calib | prune_time_vs_params | layer_heatmap
    spec = "experiments/minilm_movie.toml"     # or specs = [..] to pool studies
    where = { model = "minilm-l6", task = "movie-sentiment", calib_size = 128 }
    metric = "accuracy"               # optional (default: the task's primary metric)
    caption = "..."                   # optional, for the README/index

    [table.minilm_movie]
    kind = "comparison"               # comparison | prune_time | calib
    ...
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from statprune.analysis.records import StudyRef, apply_filter, load_studies, resolve_study, status_counts
from statprune.errors import StatpruneError
from statprune.io import load_toml

log = logging.getLogger(__name__)

DEFAULT_MANIFEST = Path("paper_figures/manifest.toml")
FIGURE_FORMATS = ("png", "pdf")
TABLE_FORMATS = ("md", "tex")


def _figure_kinds() -> dict[str, Callable[..., Any]]:
    from statprune.analysis import plots

    return {
        "metric_vs_flops": lambda f, it: plots.plot_metric_vs_flops(f, metric=it.metric),
        "metric_vs_calib": lambda f, it: plots.plot_metric_vs_calib(f, metric=it.metric),
        "prune_time_vs_params": lambda f, it: plots.plot_prune_time_vs_params(f),
        "layer_heatmap": lambda f, it: plots.plot_layer_heatmap(f, method=it.method or "stat"),
    }


def _table_kinds() -> dict[str, Callable[..., Any]]:
    from statprune.analysis import tables

    return {
        "comparison": lambda f, it: tables.comparison_table(f, metric=it.metric),
        "prune_time": lambda f, it: tables.prune_time_table(f),
        "calib": lambda f, it: tables.calib_table(f, metric=it.metric),
    }


FIGURE_KINDS = ("metric_vs_flops", "metric_vs_calib", "prune_time_vs_params", "layer_heatmap")
TABLE_KINDS = ("comparison", "prune_time", "calib")
ITEM_KEYS = {"kind", "spec", "specs", "where", "metric", "method", "ci", "docs", "caption", "formats"}
DEFAULT_KEYS = {"root", "out_dir", "ci_dir", "results_root", "published_root", "docs_dir"}


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ManifestItem:
    """One output: a figure or a table, drawn from the filtered runs of one or more studies."""

    id: str
    output: str  # "figure" | "table"
    kind: str
    specs: tuple[Path, ...]
    where: Mapping[str, Any] = field(default_factory=dict)
    metric: str | None = None
    method: str | None = None  # layer_heatmap: whose pruning pattern (default stat)
    ci: bool = False
    docs: bool = False  # also copy the PNG (table: Markdown) to the manifest's docs_dir once complete
    caption: str = ""
    formats: tuple[str, ...] = ()


@dataclass(frozen=True)
class Manifest:
    path: Path
    root: Path
    out_dir: Path
    ci_dir: Path
    results_root: Path | None
    items: tuple[ManifestItem, ...]
    published_root: Path | None = None
    docs_dir: Path | None = None

    def ids(self) -> list[str]:
        return [it.id for it in self.items]

    def select(self, only: Sequence[str] | None) -> list[ManifestItem]:
        if not only:
            return list(self.items)
        known = self.ids()
        for name in only:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise StatpruneError(
                    f"no figure/table {name!r} in {self.path}{hint}; ids: {', '.join(known)}"
                )
        return [it for it in self.items if it.id in only]


def _check_keys(where: str, table: Mapping[str, Any], allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise StatpruneError(f"{where}: unknown key {key!r}{hint}; valid: {', '.join(sorted(allowed))}")


def load_manifest(path: str | Path = DEFAULT_MANIFEST) -> Manifest:
    """Read and check the manifest; errors name the item and key."""
    path = Path(path)
    raw = load_toml(path, what="figure manifest")
    _check_keys(str(path), raw, {"defaults", "figure", "table"})
    defaults = raw.get("defaults", {})
    _check_keys(f"{path} [defaults]", defaults, DEFAULT_KEYS)
    root = (path.parent / defaults.get("root", "..")).resolve()
    results_root = defaults.get("results_root")
    items: list[ManifestItem] = []
    for output, kinds in (("figure", FIGURE_KINDS), ("table", TABLE_KINDS)):
        for item_id, t in raw.get(output, {}).items():
            where = f"{path} [{output}.{item_id}]"
            if not isinstance(t, Mapping):
                raise StatpruneError(f"{where}: expected a table")
            _check_keys(where, t, ITEM_KEYS)
            kind = t.get("kind")
            if kind not in kinds:
                raise StatpruneError(f"{where}: kind must be one of {', '.join(kinds)}, got {kind!r}")
            specs = t.get("specs", [t["spec"]] if "spec" in t else [])
            if not specs or not all(isinstance(s, str) for s in specs):
                raise StatpruneError(f'{where}: needs spec = "experiments/<study>.toml" (or specs = [...])')
            filt = t.get("where", {})
            if not isinstance(filt, Mapping):
                raise StatpruneError(f"{where}: where must be a table of column = value(s)")
            formats = tuple(t.get("formats", FIGURE_FORMATS if output == "figure" else TABLE_FORMATS))
            items.append(
                ManifestItem(
                    id=item_id,
                    output=output,
                    kind=kind,
                    specs=tuple(root / s for s in specs),
                    where=dict(filt),
                    metric=t.get("metric"),
                    method=t.get("method"),
                    ci=bool(t.get("ci", False)),
                    docs=bool(t.get("docs", False)),
                    caption=str(t.get("caption", "")),
                    formats=formats,
                )
            )
    ids = [it.id for it in items]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise StatpruneError(f"{path}: ids used by both a figure and a table: {', '.join(dup)}")
    return Manifest(
        path=path,
        root=root,
        out_dir=root / defaults.get("out_dir", "paper_figures/out"),
        ci_dir=root / defaults.get("ci_dir", "paper_figures/ci"),
        results_root=(root / results_root) if results_root else None,
        items=tuple(items),
        published_root=root / defaults.get("published_root", "results/published"),
        docs_dir=root / defaults.get("docs_dir", "docs/figures"),
    )


# --------------------------------------------------------------------------- completeness


def sweep_command(
    spec: Path, *, retry_failed: bool = False, results_root: Path | None = None, publish: bool = False
) -> str:
    """The command that (re)runs what a study lacks; finished runs are skipped by the sweep.
    ``publish``: the study is read from published records, so publish after sweeping."""
    cmd = f"statprune sweep {_rel(spec)}"
    if results_root is not None:
        cmd += f" --results {_rel(results_root)}"
    cmd += " --retry-failed" if retry_failed else ""
    return cmd + (f" && statprune publish {_rel(spec)}" if publish else "")


def _rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


@dataclass(frozen=True)
class StudyCheck:
    """Which selected runs of one study are not done, and the command that completes them."""

    study: str
    spec: Path
    counts: dict[str, int]
    command: str
    published: bool = False  # read from the published (committed) records

    @property
    def complete(self) -> bool:
        return set(self.counts) <= {"done"} and self.counts.get("done", 0) > 0

    def describe(self) -> str:
        total = sum(self.counts.values())
        if total == 0:
            return f"study {self.study!r} has no runs matching the selection → {self.command}"
        parts = ", ".join(f"{n} {s}" for s, n in self.counts.items())
        return f"study {self.study!r}: {parts} of {total} selected runs → {self.command}"


def check_study(
    study: StudyRef, frame: pd.DataFrame, results_root: Path | None = None, *, source: str = "given"
) -> StudyCheck:
    """Status counts of ``frame`` (this study's selected rows, with ``missing`` rows for expected runs);
    ``source`` as :func:`study_source` says (unless ``given``, the command ends with a publish)."""
    counts = status_counts(frame)
    cmd = sweep_command(
        study.spec_path,
        retry_failed=bool(counts.get("failed") or counts.get("cancelled")),
        results_root=results_root,
        publish=source != "given",
    )
    return StudyCheck(study.name, study.spec_path, counts, cmd, published=source == "published")


# --------------------------------------------------------------------------- building


@dataclass
class ItemResult:
    id: str
    status: str  # ok | partial (drawn from incomplete data) | incomplete | missing | error
    paths: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)  # what completes the item's studies

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def study_source(spec: Path, results_root: Path | None, published_root: Path | None) -> tuple[StudyRef, str]:
    """The study of ``spec`` and where it is read from: ``given`` (``results_root``), else
    ``published`` (``published_root/<study>/`` exists), else ``local`` (the spec's results folder)."""
    study = resolve_study(spec, results_root)
    if results_root is None and published_root is not None:
        published = published_root / study.name
        if published.is_dir():
            return dataclasses.replace(study, results_dir=published), "published"
        return study, "local"
    return study, "given"


def select_runs(
    item: ManifestItem,
    results_root: Path | None,
    published_root: Path | None = None,
    *,
    include_outdated: bool = False,
) -> tuple[pd.DataFrame, list[StudyCheck]]:
    """The item's filtered runs over its studies, and each study's completeness check. Outdated
    published records get status ``outdated`` (not done) unless ``include_outdated``."""
    sources = [study_source(s, results_root, published_root) for s in item.specs]
    frame = apply_filter(load_studies([st for st, _ in sources]), item.where)
    if not include_outdated and "outdated" in frame:
        frame = frame.copy()
        frame.loc[frame["status"].eq("done") & frame["outdated"].notna(), "status"] = "outdated"
    checks = [
        check_study(st, frame[frame["study"] == st.name], results_root, source=src) for st, src in sources
    ]
    return frame, checks


def build_item(
    item: ManifestItem,
    manifest: Manifest,
    *,
    allow_missing: bool = False,
    results_root: Path | None = None,
    include_outdated: bool = False,
) -> ItemResult:
    """Check the item's studies, then draw and save it (or say why not); a ``docs`` item drawn
    complete from published records only is copied to the manifest's docs folder too."""
    results_root = results_root or manifest.results_root
    missing_specs = [s for s in item.specs if not s.is_file()]
    if missing_specs:
        return ItemResult(
            item.id, "missing", problems=[f"sweep spec {_rel(s)} does not exist" for s in missing_specs]
        )
    try:
        frame, checks = select_runs(
            item, results_root, manifest.published_root, include_outdated=include_outdated
        )
    except StatpruneError as e:
        return ItemResult(item.id, "error", problems=[str(e)])
    problems = [c.describe() for c in checks if not c.complete]
    commands = [c.command for c in checks if not c.complete]
    if problems and item.docs and manifest.docs_dir is not None and all(c.published for c in checks):
        removed = _remove_from_docs(item, manifest.docs_dir)  # its published records no longer support it
        problems += [f"removed {_rel(p)}: the published records no longer cover the spec" for p in removed]
    has_done = not frame.empty and frame["status"].eq("done").any()
    if not has_done:
        return ItemResult(item.id, "missing", problems=problems or ["no finished runs"], commands=commands)
    if problems and not allow_missing:
        return ItemResult(item.id, "incomplete", problems=problems, commands=commands)
    out_dir = manifest.ci_dir if item.ci else manifest.out_dir
    try:
        paths = render_item(item, frame, out_dir)
    except StatpruneError as e:
        return ItemResult(item.id, "error", problems=[str(e)])
    # the README shows committed results only: never a partial figure or one from local records
    if item.docs and not problems and manifest.docs_dir is not None and all(c.published for c in checks):
        paths += _copy_to_docs(paths, manifest.docs_dir)
    return ItemResult(item.id, "partial" if problems else "ok", paths, problems, commands)


def _remove_from_docs(item: ManifestItem, docs_dir: Path) -> list[Path]:
    """Delete the item's committed docs outputs; returns the files that existed."""
    removed = []
    for ext in ("png", "md"):
        path = docs_dir / f"{item.id}.{ext}"
        if path.exists():
            path.unlink()
            removed.append(path)
    return removed


def _copy_to_docs(paths: Sequence[Path], docs_dir: Path) -> list[Path]:
    docs_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for p in paths:
        if p.suffix in (".png", ".md"):
            out.append(Path(shutil.copyfile(p, docs_dir / p.name)))
    return out


def render_item(item: ManifestItem, frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Draw one item from its (already filtered) runs and write its files."""
    if item.output == "figure":
        from statprune.analysis.plots import save_figure

        fig = _figure_kinds()[item.kind](frame, item)
        return save_figure(fig, out_dir / item.id, item.formats)
    table = _table_kinds()[item.kind](frame, item)
    return write_table(table, out_dir / item.id, item.formats)


def write_table(table: Any, stem: Path, formats: Sequence[str] = TABLE_FORMATS) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in formats:
        if ext not in TABLE_FORMATS:
            raise StatpruneError(f"table format must be one of {', '.join(TABLE_FORMATS)}, got {ext!r}")
        path = stem.parent / f"{stem.name}.{ext}"  # not with_suffix: ids may contain dots
        path.write_text(table.to_markdown() if ext == "md" else table.to_latex())
        out.append(path)
    return out


def build_figures(
    manifest: Manifest,
    *,
    only: Sequence[str] | None = None,
    allow_missing: bool = False,
    results_root: Path | None = None,
    include_outdated: bool = False,
) -> list[ItemResult]:
    """Build every selected item of the manifest (see :func:`build_item`), then rewrite the docs
    index when the manifest has ``docs`` items."""
    results = [
        build_item(
            it,
            manifest,
            allow_missing=allow_missing,
            results_root=results_root,
            include_outdated=include_outdated,
        )
        for it in manifest.select(only)
    ]
    if manifest.docs_dir is not None and any(it.docs for it in manifest.items):
        write_docs_index(manifest)
    return results


def write_docs_index(manifest: Manifest) -> Path:
    """``<docs_dir>/README.md``: each ``docs`` item with its caption, the command that draws it and
    its picture, or a marked placeholder while its records are not published. Derived from the
    manifest and the files present only, so it is byte-stable."""
    if manifest.docs_dir is None:
        raise StatpruneError(f"{manifest.path} has no docs_dir")
    link = Path(os.path.relpath(manifest.path.resolve(), manifest.docs_dir.resolve())).as_posix()
    lines = [
        "# Figures",
        "",
        "Written by `statprune figures` from the published run records (`results/published/`); "
        f"do not edit. Items: `docs = true` in [{_rel_root(manifest.path, manifest)}]({link}).",
        "",
    ]
    for it in manifest.items:
        if not it.docs:
            continue
        lines += [f"## `{it.id}`", ""]
        if it.caption:
            lines += [it.caption, ""]
        name = f"{it.id}.png" if it.output == "figure" else f"{it.id}.md"
        if (manifest.docs_dir / name).is_file():
            lines += [f"`statprune figures --only {it.id}`", ""]
            lines += [f"![{it.id}]({name})" if it.output == "figure" else f"[{name}]({name})", ""]
        else:
            cmds = " && ".join(
                f"statprune sweep {_rel_root(s, manifest)} && statprune publish {_rel_root(s, manifest)}"
                for s in it.specs
            )
            lines += [f"*Not yet published* (needs `{cmds}`, then `statprune figures --only {it.id}`).", ""]
    path = manifest.docs_dir / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def _rel_root(p: Path, manifest: Manifest) -> str:
    try:
        return Path(p).resolve().relative_to(manifest.root).as_posix()
    except ValueError:
        return str(p)
