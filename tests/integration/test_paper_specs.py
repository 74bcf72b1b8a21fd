"""The paper sweep specs (experiments/paper_*.toml): they resolve without the hub, and — with the hub
models swapped for tiny random ones and the data pointed at tests/data/fixtures — run end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import tomllib

from statprune.data import get_task
from statprune.sweep.config import thaw
from statprune.sweep.launch import LaunchOptions, launch
from statprune.sweep.spec import load_spec, parse_spec
from statprune.sweep.store import RunStore

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
EXPERIMENTS = ROOT / "experiments"
FIXTURES = ROOT / "tests" / "data" / "fixtures"
GLUE_TASKS = {
    "glue/mnli-textattack",
    "glue/qqp",
    "glue/qnli",
    "glue/sst2",
    "glue/stsb-textattack",
    "glue/mrpc",
}
KWON_SEQ_LEN = {"mnli": 39.05, "qqp": 30.55, "qnli": 50.97, "sst2": 25.16, "stsb": 31.47, "mrpc": 53.24}


def _runs(name: str) -> list:
    return load_spec(EXPERIMENTS / name).runs()


@pytest.mark.parametrize("name", ["paper_glue_bert.toml", "paper_glue_distilbert.toml"])
def test_glue_specs(name: str) -> None:
    runs = [r.config for r in _runs(name)]
    # 6 tasks (+ MNLI mismatched) × 3 sparsities × 4 methods (STAT's default and the paper's rule)
    assert len(runs) == 7 * 3 * 4
    assert {c.task for c in runs} == GLUE_TASKS
    assert {c.sparsity for c in runs} == {0.4, 0.5, 0.6}  # 60 / 50 / 40 % of the FLOPs kept
    assert Counter(c.method for c in runs) == {"stat": 42, "magnitude": 21, "kwon": 21}
    assert Counter(thaw(c.method_options).get("allocation") for c in runs if c.method == "stat") == {
        None: 21,
        "reference": 21,
    }
    assert {(c.method, c.calib_size) for c in runs} == {("stat", 512), ("magnitude", 512), ("kwon", 2048)}
    assert {c.eval_split for c in runs if "mnli" not in c.task} == {"dev"}
    assert Counter(c.eval_split for c in runs if "mnli" in c.task) == {"dev": 12, "dev_mismatched": 12}
    family = "distilbert-base-uncased" if "distil" in name else "bert-base-uncased"
    for c in runs:
        assert c.max_length == 128 and c.seq_len is None and c.calib_split == "train"
        assert c.model.startswith(f"textattack/{family}-")  # each checkpoint goes with its own task
        suffix = c.model.rsplit("-", 1)[-1] if "STS-B" not in c.model and "SST-2" not in c.model else None
        if suffix:
            assert suffix.lower() in c.task
        config = c.task.split("/")[1].split("-")[0]
        assert get_task(c.task).flops_seq_len == KWON_SEQ_LEN[config]  # the FLOPs target's length


def test_squad_spec() -> None:
    runs = [r.config for r in _runs("paper_squad_bert.toml")]
    assert len(runs) == 2 * 3 * 4
    assert {(c.model, c.task) for c in runs} == {
        ("csarron/bert-base-uncased-squad-v1", "squad"),
        ("deepset/bert-base-uncased-squad2", "squad_v2"),
    }
    assert {c.max_length for c in runs} == {384} and {c.eval_split for c in runs} == {"dev"}
    assert get_task("squad").flops_seq_len == 170.0


def test_llama_spec() -> None:
    runs = [r.config for r in _runs("paper_wikitext_llama2.toml")]
    assert {c.model for c in runs} == {"meta-llama/Llama-2-7b-hf"} and {c.task for c in runs} == {
        "wikitext-2"
    }
    assert Counter(c.method for c in runs) == {"stat": 12, "slicegpt": 6, "kwon": 6, "magnitude": 3}
    assert {c.max_length for c in runs} == {2048} and {c.eval_split for c in runs} == {"test"}
    assert {c.sparsity for c in runs} == {0.1, 0.2, 0.3} and {c.dtype for c in runs} == {"float16"}


def test_cluster_profile() -> None:
    from statprune.sweep.executors import load_profile

    p = load_profile(ROOT / "slurm" / "paper-gpu.toml")
    assert p.gpus_per_job == 1 and p.mem_gb >= 64 and p.time_min >= 240
    assert any("STATPRUNE_DATA_DIR" in line for line in p.setup)


def test_dry_run_cli_resolves_every_spec_without_the_hub(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("STATPRUNE_DATA_DIR", None)
    for spec in sorted(EXPERIMENTS.glob("paper_*.toml")):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "statprune.cli",
                "sweep",
                str(spec),
                "--dry-run",
                "--results",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=ROOT,
        )
        assert out.returncode == 0, out.stderr
        n = len(load_spec(spec).runs())
        assert f"{n} runs" in out.stdout and f"missing {n}" in out.stdout
    assert not any(tmp_path.rglob("*.json"))  # a dry run writes no record


# ---- end to end: the paper specs with tiny models on the fixtures ----------------------------------


def tiny_spec(name: str, keep: Any, model: str, **settings: Any) -> Any:
    """The paper spec with its grids filtered, hub models swapped for ``model``, and small sizes."""
    raw = tomllib.loads((EXPERIMENTS / name).read_text())
    raw["study"] = "tiny-" + raw["study"]
    raw["grid"] = [g for g in raw["grid"] if keep(g)]
    for g in raw["grid"]:
        g.update(models=[model], sparsities=[0.5], calib_sizes=[16])
    raw["settings"].update(batch_size=8, eval_batch_size=16, dtype="float32", device="cpu", **settings)
    for m in raw["methods"]:
        if m["name"] in ("stat", "kwon", "slicegpt"):
            m.setdefault("options", {})["progress"] = False
    raw["tracking"] = {"enabled": False}
    return parse_spec(raw, source=name)


def run_inline(spec: Any, results: Path) -> dict[str, dict]:
    store = RunStore(results, spec.study)
    launch(spec, store, spec.runs(), LaunchOptions(executor="inline", tracking=False, progress=False),
           echo=lambda _: None)  # fmt: skip
    return store.records()


def check_done(records: dict[str, dict], sparsity: float = 0.5, tol: float = 0.05) -> None:
    for r in records.values():
        assert r["status"] == "done", r.get("error", {}).get("message")
        assert abs(r["prune"]["sparsity_achieved"] - sparsity) < tol
        assert r["prune"]["flops_pruned"] < r["prune"]["flops_dense"]


@pytest.fixture
def fixtures_env(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STATPRUNE_DATA_DIR", str(FIXTURES))
    return FIXTURES


def test_squad_v2_paper_spec_runs_with_a_tiny_bert(fixtures_env: Path, tmp_path: Path) -> None:
    spec = tiny_spec(
        "paper_squad_bert.toml",
        lambda g: g["tasks"] == ["squad_v2"],
        "random:tiny-bert",
        max_length=256,
        eval_limit=12,  # two paragraphs: 8 answerable and 4 unanswerable questions
    )
    records = run_inline(spec, tmp_path)
    assert sorted(r["config"]["method"] for r in records.values()) == ["kwon", "magnitude", "stat", "stat"]
    check_done(records)
    for r in records.values():
        m = r["metrics"]
        for key in ("exact_match", "f1", "has_ans_f1", "no_ans_exact_match", "best_f1"):
            assert 0.0 <= m[key] <= 1.0, key
        assert m["num_examples"] == 12 and r["dense_metrics"]["num_windows"] == m["num_windows"]
    kwon = next(r for r in records.values() if r["config"]["method"] == "kwon")
    assert kwon["prune"]["diagnostics"]["samples_used"] == 16  # the QA loss ran on every window drawn


def test_glue_and_llama_paper_specs_run_with_tiny_models(fixtures_env: Path, tmp_path: Path) -> None:
    glue = tiny_spec(
        "paper_glue_bert.toml",
        lambda g: g["tasks"][0] in ("glue/mnli-textattack", "glue/stsb-textattack"),
        "random:tiny-bert",
    )
    records = run_inline(glue, tmp_path)
    assert len(records) == 12  # MNLI matched + mismatched, STS-B: 4 methods each
    check_done(records)
    mm = [r for r in records.values() if r["config"]["eval_split"] == "dev_mismatched"]
    assert len(mm) == 4 and all(r["metrics"]["num_examples"] == 24 for r in mm)
    assert all("pearson" in r["metrics"] for r in records.values() if "stsb" in r["config"]["task"])

    llama = tiny_spec("paper_wikitext_llama2.toml", lambda g: True, "random:tiny-llama", max_length=64)
    records = run_inline(llama, tmp_path)
    # one calibration size here ([16]), so one run per method
    assert Counter(r["config"]["method"] for r in records.values()) == {
        "stat": 2,  # the default and the paper's rule
        "slicegpt": 1,
        "kwon": 1,
        "magnitude": 1,
    }
    check_done(records, tol=0.1)  # slicegpt slices the hidden size in steps of 8
    for r in records.values():
        assert r["metrics"]["perplexity"] > 1 and r["metrics"]["window"] == 64
