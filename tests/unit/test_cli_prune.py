"""``statprune prune`` end to end on a tiny random model, and every bad input named by the issue."""

import json

import pytest
import torch

from statprune.cli import main
from statprune.data.tasks import TASKS, TextTask

TASK = "unit-synthetic"


def _rows(split: str) -> list[dict]:
    n = {"train": 40, "dev": 12, "test": 12}[split]
    g = torch.Generator().manual_seed({"train": 0, "dev": 1, "test": 2}[split])
    words = ["good", "bad", "fine", "awful", "great", "dull", "film", "plot"]
    rows = []
    for i in range(n):
        k = int(torch.randint(3, 9, (1,), generator=g))
        idx = torch.randint(0, len(words), (k,), generator=g).tolist()
        rows.append({"id": f"{split}{i}", "text": " ".join(words[j] for j in idx), "label": i % 2})
    return rows


if TASK not in TASKS:
    TASKS.add(
        TASK,
        TextTask(
            name=TASK,
            kind="classification",
            num_labels=2,
            metric_names=("accuracy",),
            flops_seq_len=30.0,
            max_length=48,
            loader=_rows,
        ),
    )


def _prune(tmp_path, *extra: str, out: str = "ck") -> int:
    args = [
        "prune",
        "--model",
        "random:tiny-bert",
        "--calib-task",
        TASK,
        "--calib-size",
        "16",
        "--sparsity",
        "0.4",
        "--out",
        str(tmp_path / out),
        "--batch-size",
        "8",
        "--device",
        "cpu",
        *extra,
    ]
    return main(args)


def test_prune_writes_checkpoint_and_report_that_reload(tmp_path, capsys):
    assert _prune(tmp_path, "--opt", "progress=false") == 0
    assert "auto options: error_norm=residual, allocation=share" in capsys.readouterr().out  # an encoder
    rep = json.loads((tmp_path / "ck" / "prune_report.json").read_text())
    assert rep["diagnostics"]["auto_options"] == {"error_norm": "residual", "allocation": "share"}
    assert rep["options"]["error_norm"] == "auto"  # the options as resolved without the model
    for key in (
        "method",
        "sparsity_target",
        "sparsity_achieved",
        "flops_dense",
        "flops_pruned",
        "params_dense",
        "params_pruned",
        "layers",
        "calib_size",
        "seed",
        "prune_seconds",
        "peak_memory_bytes",
        "versions",
        "git_commit",
        "source_sha256",
    ):
        assert key in rep, key
    assert rep["sparsity_achieved"] >= 0.4 and rep["flops_pruned"] < rep["flops_dense"]
    assert rep["calib_size"] == 16 and len(rep["layers"]) == 2
    assert {"num_heads", "num_kv_heads", "intermediate"} <= set(rep["layers"][0])
    from statprune.adapters import get_adapter
    from statprune.data import get_task
    from statprune.models.load import load_model

    model, _ = load_model(str(tmp_path / "ck"), task=get_task(TASK))
    assert [s.to_dict() for s in get_adapter(model).shapes()] == rep["layers"]
    # an existing checkpoint may be overwritten
    assert _prune(tmp_path, "--opt", "progress=false", "--sparsity", "0.2") == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sparsity", "1.0"], "sparsity must be in [0, 1)"),
        (["--sparsity", "-0.1"], "sparsity must be in [0, 1)"),
        (["--calib-size", "0"], "calibration size must be positive"),
        (["--calib-size", "41"], "larger than the split (40 examples)"),
        (["--method", "stta"], "unknown pruning method 'stta'"),
        (["--opt", "allocation=best"], "allocation='best'"),
        (["--opt", "nonsense=1"], "unknown option(s) nonsense"),
        (["--calib-task", "movie-sentimen"], "unknown task 'movie-sentimen'"),
        (["--model", "minilm-l7"], "unknown model 'minilm-l7'"),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, capsys, extra, message):
    assert _prune(tmp_path, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "ck").exists()


def test_existing_foreign_output_dir_is_refused_and_untouched(tmp_path, capsys):
    out = tmp_path / "ck"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _prune(tmp_path) == 2
    assert "not a statprune checkpoint" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine" and len(list(out.iterdir())) == 1


def test_unsupported_model_type_lists_supported(tmp_path, capsys):
    from transformers import MPNetConfig, MPNetModel

    d = tmp_path / "mpnet"
    cfg = MPNetConfig(
        num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=37, vocab_size=300
    )
    MPNetModel(cfg).save_pretrained(d)
    from statprune.models.shapes import toy_tokenizer

    toy_tokenizer(cfg).save_pretrained(d)
    assert (
        main(
            [
                "prune",
                "--model",
                str(d),
                "--calib-task",
                TASK,
                "--calib-size",
                "4",
                "--sparsity",
                "0.3",
                "--out",
                str(tmp_path / "ck"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "mpnet" in err and "bert" in err and "llama" in err
