"""GLUE tasks on the local fixtures (tests/data/fixtures/glue): columns, labels, pairs, metrics, data location."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from statprune.data import collate, get_task
from statprune.data.glue import GLUE, glue_task, parse_label
from statprune.data.hub import env_var
from statprune.errors import StatpruneError
from statprune.evaluation import evaluate
from statprune.evaluation.metrics import classification_metrics, regression_metrics
from statprune.models import load_model

FIXTURES = Path(__file__).parents[1] / "data" / "fixtures"
KWON_SEQ_LEN = {"sst2": 25.16, "mrpc": 53.24, "stsb": 31.47, "qqp": 30.55, "qnli": 50.97, "mnli": 39.05}
SIZES = {  # fixture rows per split; formats: jsonl, tsv (GLUE original), csv, parquet
    "glue/sst2": {"train": 40, "dev": 24},
    "glue/mnli": {"train": 48, "dev": 24, "dev_mismatched": 24},
    "glue/qqp": {"train": 36, "dev": 24},
    "glue/qnli": {"train": 36, "dev": 24},
    "glue/stsb": {"train": 36, "dev": 24},
    "glue/mrpc": {"train": 36, "dev": 24},
}


@pytest.fixture
def fixtures_env(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STATPRUNE_DATA_DIR", str(FIXTURES))
    for name in SIZES:
        monkeypatch.delenv(env_var(name), raising=False)
    return FIXTURES


@pytest.fixture(scope="module")
def bert():
    return load_model("random:tiny-bert", task=get_task("glue/qqp"))


def test_registry_metadata_without_reading_data() -> None:
    for config, seq_len in KWON_SEQ_LEN.items():
        task = get_task(f"glue/{config}")
        assert task.flops_seq_len == seq_len and task.max_length == 128
        assert task.kind == ("regression" if config == "stsb" else "classification")
    assert get_task("glue/mnli").num_labels == 3 and get_task("glue/stsb").num_labels == 1
    assert get_task("glue/qqp").metric_names == ("accuracy", "f1")
    assert get_task("glue/mrpc").metric_names == ("accuracy", "f1")
    assert get_task("glue/stsb").metric_names == ("pearson", "spearman")
    assert get_task("glue/mnli").splits == ("train", "dev", "dev_mismatched")
    assert get_task("glue/sst2").splits == ("train", "dev")
    assert get_task("glue/sst2").canonical_split("validation") == "dev"
    with pytest.raises(StatpruneError, match="dev_mismatched"):
        get_task("glue/mnli").canonical_split("test")


def test_rows_from_every_file_format(fixtures_env: Path) -> None:
    for name, sizes in SIZES.items():
        task = get_task(name)
        for split, n in sizes.items():
            rows = task.examples(split)
            assert len(rows) == n, (name, split)
            assert all(isinstance(r["text"], str) and r["text"] for r in rows)
            assert all(("text_pair" in r) == (name != "glue/sst2") for r in rows)
    # csv (QQP), parquet (QNLI), GLUE-TSV (MRPC train) give the same columns as the hub's JSON lines
    assert get_task("glue/qqp").examples("train")[0] == {
        "id": "0",
        "text": "How do I learn Python quickly?",
        "text_pair": "What is the fastest way to learn Python?",
        "label": 1,
    }
    assert get_task("glue/qnli").examples("dev")[1]["label"] == 1  # not_entailment
    mrpc_tsv = get_task("glue/mrpc").examples("train")
    mrpc_hub = get_task("glue/mrpc").examples("dev")
    assert [(r["text"], r["text_pair"], r["label"]) for r in mrpc_tsv[:12]] == [
        (r["text"], r["text_pair"], r["label"]) for r in mrpc_hub[:12]
    ]
    assert get_task("glue/qqp").examples("train")[5]["text_pair"] == 'Can you eat eggs raw, "safely"?'


def test_mnli_labels_string_and_checkpoint_order(fixtures_env: Path) -> None:
    mnli = get_task("glue/mnli")
    # dev_mismatched is GLUE's TSV with gold_label strings; each premise has (entailment, neutral, contradiction)
    mm = mnli.examples("dev_mismatched")
    assert [r["label"] for r in mm] == [0, 1, 2] * 8
    assert mm[2]["text_pair"] == "The man is asleep at home."  # the contradiction
    # the TSV keeps quotes as text (QUOTE_NONE), as GLUE's files need
    assert any('"' in r["text"] for r in mnli.examples("train"))
    # textattack checkpoints: 0 contradiction, 1 entailment, 2 neutral (TextAttack's own map [1, 2, 0])
    ta = get_task("glue/mnli-textattack")
    assert [r["label"] for r in ta.examples("dev_mismatched")] == [1, 2, 0] * 8
    assert [r["text"] for r in ta.examples("dev")] == [r["text"] for r in mnli.examples("dev")]
    names = GLUE["mnli"].label_names
    assert parse_label("contradiction", names, task_name="t") == 2
    assert parse_label("1", names, task_name="t") == 1 and parse_label(2.0, names, task_name="t") == 2
    with pytest.raises(StatpruneError, match="unlabelled"):
        parse_label(-1, names, task_name="t")
    with pytest.raises(StatpruneError, match="not one of"):
        parse_label("maybe", names, task_name="t")
    with pytest.raises(StatpruneError, match="permutation"):
        glue_task("mnli", label_order=("entailment", "neutral", "unknown"))


def test_sentence_pairs_get_token_types(fixtures_env: Path, bert) -> None:
    _, tok = bert
    task = get_task("glue/mnli")
    rows, enc = task.examples("dev"), task.encode(tok, "dev")
    for row, item in zip(rows, enc):
        ids, types = item["input_ids"].tolist(), item["token_type_ids"].tolist()
        first = ids[: types.index(1)]
        assert first[0] == tok.cls_token_id and first[-1] == tok.sep_token_id
        assert ids[-1] == tok.sep_token_id and types == sorted(types)  # 0…0 1…1
        squash = lambda s: "".join(s.lower().split())  # noqa: E731  (the toy tokenizer lower-cases)
        assert squash(tok.decode(first, skip_special_tokens=True)) == squash(row["text"])
        second = [i for i, t in zip(ids, types) if t == 1]
        assert squash(tok.decode(second, skip_special_tokens=True)) == squash(row["text_pair"])
        assert item["labels"].dtype == torch.long and int(item["labels"]) == row["label"]
    batch = collate(enc[:5], tok.pad_token_id)
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
    assert batch["labels"].shape == (5,)
    # DistilBERT has no token types: its encodings have none
    _, dtok = load_model("random:tiny-distilbert", task=task)
    assert "token_type_ids" not in task.encode(dtok, "dev")[0]


def test_stsb_float_labels_and_textattack_scale(fixtures_env: Path, bert) -> None:
    _, tok = bert
    raw = [json.loads(line) for line in (FIXTURES / "glue/stsb/validation.jsonl").read_text().splitlines()]
    enc = get_task("glue/stsb").encode(tok, "dev")
    assert all(e["labels"].dtype == torch.float32 and e["labels"].dim() == 0 for e in enc)
    assert [float(e["labels"]) for e in enc] == pytest.approx([r["label"] for r in raw])
    assert {3.75, 0.0, 5.0} <= {float(e["labels"]) for e in enc}
    scaled = get_task("glue/stsb-textattack").examples("dev")
    assert [r["label"] for r in scaled] == pytest.approx([r["label"] / 5 for r in raw])


def test_local_directory_precedence_and_errors(
    fixtures_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = tmp_path / "my-sst2"
    own.mkdir()
    (own / "dev.csv").write_text("sentence,label\ngreat fun ,1\nawful ,0\n")
    monkeypatch.setenv("STATPRUNE_DATA_GLUE_SST2", str(own))  # per-task variable beats the root
    assert [(r["text"], r["label"]) for r in get_task("glue/sst2").examples("dev")] == [
        ("great fun ", 1),
        ("awful ", 0),
    ]
    with pytest.raises(
        StatpruneError, match=r"named train with extension \.jsonl"
    ):  # no train file: names listed
        get_task("glue/sst2").examples("train")
    monkeypatch.setenv("STATPRUNE_DATA_GLUE_SST2", str(tmp_path / "missing"))
    with pytest.raises(StatpruneError, match="not a directory"):
        get_task("glue/sst2").examples("dev")
    # a task built over an explicit directory ignores the environment
    direct = glue_task("sst2", name="my-sst2", data_dir=FIXTURES / "glue" / "sst2")
    assert len(direct.examples("train")) == 40
    (own / "dev.csv").write_text("sentence\nno label column\n")
    with pytest.raises(StatpruneError, match=r"no label column \(label\); its columns: sentence"):
        glue_task("sst2", data_dir=own).examples("dev")


def test_offline_hub_fails_at_once_with_instructions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("STATPRUNE_DATA_DIR", raising=False)
    monkeypatch.delenv("STATPRUNE_DATA_GLUE_QNLI", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    t0 = time.perf_counter()
    with pytest.raises(StatpruneError) as err:
        get_task("glue/qnli").examples("dev")
    assert time.perf_counter() - t0 < 5.0
    msg = str(err.value)
    for part in (
        "offline",
        "nyu-mll/glue",
        "$STATPRUNE_DATA_GLUE_QNLI",
        "$STATPRUNE_DATA_DIR",
        "glue/qnli/",
        "validation",
    ):
        assert part in msg, part


def _manual_predictions(model, tok, task, split) -> tuple[np.ndarray, np.ndarray]:
    """Logits one example at a time (no padding, no batching), independent of evaluate()."""
    outs, labels = [], []
    with torch.no_grad():
        for item in task.encode(tok, split):
            inputs = {k: v[None] for k, v in item.items() if k != "labels"}
            outs.append(model(**inputs).logits[0].double().numpy())
            labels.append(float(item["labels"]))
    return np.stack(outs), np.array(labels)


def test_qqp_accuracy_and_f1_match_hand_counts(fixtures_env: Path, bert) -> None:
    model, tok = bert
    task = get_task("glue/qqp")
    logits, labels = _manual_predictions(model, tok, task, "dev")
    shift = float(np.median(logits[:, 1] - logits[:, 0])) + 1e-4
    with torch.no_grad():  # centre the random head so that both classes are predicted
        model.classifier.bias[1] -= shift
    logits[:, 1] -= shift
    pred = logits.argmax(-1)
    assert 0 < pred.sum() < len(pred)
    out = evaluate(model, tok, task, "dev", batch_size=7, progress=False)
    tp = int(((pred == 1) & (labels == 1)).sum())
    fp = int(((pred == 1) & (labels == 0)).sum())
    fn = int(((pred == 0) & (labels == 1)).sum())
    assert out["num_examples"] == 24
    assert out["accuracy"] == pytest.approx(float((pred == labels).mean()))
    assert out["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn) if tp else 0.0)


def test_stsb_correlations_match_numpy(fixtures_env: Path) -> None:
    task = get_task("glue/stsb")
    model, tok = load_model("random:tiny-bert", task=task)
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    out = evaluate(model, tok, task, "dev", batch_size=5, progress=False)
    logits, labels = _manual_predictions(model, tok, task, "dev")
    # batched (padded) float32 vs one at a time: equal up to rounding
    assert out["pearson"] == pytest.approx(np.corrcoef(logits[:, 0], labels)[0, 1], abs=1e-4)
    from scipy.stats import spearmanr

    assert out["spearman"] == pytest.approx(spearmanr(logits[:, 0], labels).statistic, abs=1e-4)


def test_glue_metrics_hand_computed() -> None:
    # binary (QQP/MRPC): TP 2, FP 1, FN 1, TN 1
    labels = [1, 0, 0, 1, 1]
    logits = np.eye(2)[[1, 1, 0, 0, 1]]
    m = classification_metrics(logits, labels, ("accuracy", "f1", "matthews_correlation"))
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert m["matthews_correlation"] == pytest.approx((2 * 1 - 1 * 1) / np.sqrt(3 * 3 * 2 * 2))
    # STS-B: Pearson of (1,2,3,4) vs (1,3,2,4) = 4/5; Spearman with a tie = 4.5/sqrt(4.5·5)
    r = regression_metrics([1, 2, 3, 4], [1, 3, 2, 4], ("pearson",))
    assert r["pearson"] == pytest.approx(0.8)
    s = regression_metrics([1, 2, 2, 3], [1, 2, 3, 4], ("spearman",))
    assert s["spearman"] == pytest.approx(np.sqrt(0.9))


def test_save_to_disk_folder_and_cached_hub_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    from huggingface_hub import constants

    from statprune.data.glue import GLUE
    from statprune.data.hub import in_local_cache

    rows = [json.loads(x) for x in (FIXTURES / "glue/sst2/validation.jsonl").read_text().splitlines()]
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    monkeypatch.delenv("STATPRUNE_DATA_DIR", raising=False)
    monkeypatch.setenv("STATPRUNE_DATA_GLUE_SST2", str(tmp_path / "dd"))
    assert [r["label"] for r in get_task("glue/sst2").examples("dev")] == [r["label"] for r in rows]
    with pytest.raises(StatpruneError, match="no split train; it has validation"):
        get_task("glue/sst2").examples("train")

    # offline with something in the datasets cache: datasets is asked, and its failure is reported plainly
    monkeypatch.delenv("STATPRUNE_DATA_GLUE_SST2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    assert not in_local_cache(GLUE["sst2"].source)
    (tmp_path / "datasets" / "nyu-mll___glue").mkdir(parents=True)
    assert in_local_cache(GLUE["sst2"].source)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    with pytest.raises(StatpruneError, match=r"cannot load nyu-mll/glue \(sst2\) split 'validation'"):
        glue_task("sst2", name="uncached-sst2").examples("dev")
