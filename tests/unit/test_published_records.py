"""The committed records (results/published/) still load, cover their specs, and redraw the committed
outputs: tables and the docs index byte for byte, PNGs at the same pixel size (their bytes depend on
the matplotlib/freetype build). No pruning: this reads JSON and draws.

After an intended change (new records published, a table format changed), regenerate with
``statprune figures`` and commit paper_figures/ci/ and docs/figures/ with the records.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from PIL import Image

from statprune.analysis.figures import build_figures, load_manifest, study_source
from statprune.analysis.publish import PROVENANCE_FILE
from statprune.analysis.records import load_records

REPO = Path(__file__).parents[2]
PUBLISHED = REPO / "results" / "published"
MANIFEST = REPO / "paper_figures" / "manifest.toml"
STUDIES = sorted(p for p in PUBLISHED.iterdir() if p.is_dir()) if PUBLISHED.is_dir() else []


@pytest.mark.parametrize("folder", STUDIES, ids=[p.name for p in STUDIES])
def test_published_records_load_and_cover_their_spec(folder):
    prov = json.loads((folder / PROVENANCE_FILE).read_text())
    assert prov["study"] == folder.name
    frame = load_records(folder)
    assert set(frame["status"]) == {"done"} and len(frame) == prov["runs"]["done"]
    assert sorted(frame["run_id"]) == sorted(
        p.stem for p in folder.glob("*.json") if p.name != PROVENANCE_FILE
    )
    study, source = study_source(REPO / prov["spec"], None, PUBLISHED)
    assert source == "published" and study.results_dir == folder
    missing = {run_id for run_id, _, _ in study.expected or ()} - set(frame["run_id"])
    assert not missing, f"{prov['spec']} expects runs not published: {sorted(missing)}"
    text = "".join(p.read_text() for p in folder.glob("*.json"))
    assert "/home/" not in text and "/Users/" not in text


def test_figures_from_published_records_reproduce_the_committed_outputs(tmp_path):
    assert STUDIES, "results/published/ holds no study (publish experiments/ci_tiny.toml)"
    manifest = load_manifest(MANIFEST)
    names = {p.name for p in STUDIES}
    drawable = [
        it.id
        for it in manifest.items
        if (it.ci or it.docs) and all(study_source(s, None, PUBLISHED)[0].name in names for s in it.specs)
    ]
    assert drawable
    # figures as PNG only: the PDFs are not compared, and drawing them doubles the time
    items = tuple(
        dataclasses.replace(it, formats=("png",)) if it.output == "figure" else it for it in manifest.items
    )
    out = dataclasses.replace(
        manifest, items=items, out_dir=tmp_path / "out", ci_dir=tmp_path / "ci", docs_dir=tmp_path / "docs"
    )
    results = build_figures(out, only=drawable)
    assert [r.status for r in results] == ["ok"] * len(results), [(r.id, r.problems) for r in results]
    compared = 0
    for r in results:
        for path in r.paths:
            committed = (
                manifest.docs_dir if path.parent == tmp_path / "docs" else manifest.ci_dir
            ) / path.name
            if path.parent == tmp_path / "out":
                continue  # not committed
            assert committed.is_file(), f"{committed} is not committed; run `statprune figures`"
            if path.suffix == ".png":
                assert Image.open(path).size == Image.open(committed).size, path.name
            else:
                assert path.read_bytes() == committed.read_bytes(), f"{committed} differs from its records"
            compared += 1
    assert compared >= len(drawable)
    # the index below its header (whose link to the manifest depends on where docs_dir is)
    index = (manifest.docs_dir / "README.md").read_text()
    assert (tmp_path / "docs" / "README.md").read_text().partition("\n## ")[2] == index.partition("\n## ")[2]


def test_readme_tables_are_the_committed_docs_tables():
    """The README embeds tables between ``<!-- table: ID -->`` and ``<!-- /table -->``; each must be
    the committed docs/figures/ID.md (itself checked against the records above), so the README's
    numbers come from the records."""
    import re

    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"<!-- table: (\S+) -->\n(.*?)\n<!-- /table -->", text, re.S)
    assert blocks, "the README embeds no committed table"
    docs = load_manifest(MANIFEST).docs_dir
    for table_id, body in blocks:
        committed = docs / f"{table_id}.md"
        assert committed.is_file(), f"README embeds {table_id}, which docs/figures/ does not hold"
        assert body.strip() == committed.read_text().strip(), f"README's {table_id} differs; copy it again"
