"""The README's main job end to end (sweep inline → report → summary table) on a tiny random model."""

from pathlib import Path

import pytest

from statprune.cli import main

pytestmark = pytest.mark.integration
SPEC = Path(__file__).parents[1] / "data" / "specs" / "quickstart_tiny.toml"


def test_quickstart_prints_summary_and_writes_report(tmp_path, capsys):
    assert main(["quickstart", "--spec", str(SPEC), "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "M |" in line]
    assert [r.split("|")[1].strip() for r in rows] == ["dense", "30%", "50%"]
    achieved = [float(r.split("|")[2].strip().rstrip("%")) for r in rows[1:]]
    assert achieved[0] >= 30.0 and achieved[1] >= 50.0
    params = [float(r.split("|")[3].strip().split()[0]) for r in rows]
    assert params[0] > params[1] > params[2]
    assert len(list((tmp_path / "quickstart_tiny").glob("*.json"))) == 2
    assert list((tmp_path / "quickstart_tiny" / "report").glob("*.png"))
