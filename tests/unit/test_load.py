"""Model loading without network: random shapes, local directories, error paths, offline hub ids."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import torch

from statprune.data import get_task
from statprune.errors import StatpruneError
from statprune.models import SHAPES, load_model, shape_config
from statprune.models import load as load_mod

# name → (layers, hidden, query heads, kv heads, ffn, vocab, parameters of the loaded model)
EXPECTED = {
    "tiny-bert": (2, 64, 4, 4, 256, 1024, 202_688),
    "tiny-distilbert": (2, 64, 4, 4, 256, 1024, 198_400),
    "tiny-llama": (2, 64, 4, 2, 176, 1024, 158_016),
    "bert-base": (12, 768, 12, 12, 3072, 30522, 109_482_240),
    "distilbert-base": (6, 768, 12, 12, 3072, 30522, 66_362_880),
    "llama-2-7b": (32, 4096, 32, 32, 11008, 32000, 6_738_415_616),
    "llama-2-13b": (40, 5120, 40, 40, 13824, 32000, 13_015_864_320),  # the released count
    "llama-3-8b": (32, 4096, 32, 8, 14336, 128256, 8_030_261_248),
    "smollm2-135m": (30, 576, 9, 3, 1536, 49152, 134_515_008),
}


def _dims(cfg) -> tuple[int, ...]:
    if cfg.model_type == "distilbert":
        return (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_heads, cfg.hidden_dim, cfg.vocab_size)
    kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    return (
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        kv,
        cfg.intermediate_size,
        cfg.vocab_size,
    )


def test_every_shape_is_tested() -> None:
    assert set(SHAPES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_random_shapes_exact_dimensions(name: str) -> None:
    model, tok = load_model(f"random:{name}", device="meta")  # meta: no memory, no init cost
    assert _dims(model.config) == EXPECTED[name][:6]
    assert sum(p.numel() for p in model.parameters()) == EXPECTED[name][6]
    assert len(tok) == model.config.vocab_size
    assert model.config._attn_implementation == "sdpa"
    if model.config.model_type == "llama":
        attn = model.model.layers[0].self_attn
        head_dim = model.config.hidden_size // model.config.num_attention_heads
        assert attn.k_proj.out_features == EXPECTED[name][3] * head_dim
        assert attn.q_proj.out_features == model.config.hidden_size
        assert tok.bos_token_id == model.config.bos_token_id and tok.eos_token_id == model.config.eos_token_id
        assert tok.pad_token_id == tok.eos_token_id  # decoders: pad = eos on the tokenizer side


def test_llama3_8b_gqa_on_meta() -> None:
    model, _ = load_model("random:llama-3-8b", dtype=torch.bfloat16, device="meta")
    layer = model.model.layers[0]
    assert model.config.num_key_value_heads == 8 and layer.self_attn.k_proj.weight.shape == (1024, 4096)
    assert layer.mlp.gate_proj.weight.shape == (14336, 4096) and layer.mlp.down_proj.weight.shape == (
        4096,
        14336,
    )
    assert (
        layer.self_attn.q_proj.weight.device.type == "meta"
        and layer.self_attn.q_proj.weight.dtype == torch.bfloat16
    )


def test_tiny_llama_tied_and_runs() -> None:
    model, tok = load_model("random:tiny-llama")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    batch = tok(["hello world", "hi"], return_tensors="pt", padding=True)
    assert batch["input_ids"][0, 0] == tok.bos_token_id
    assert batch["input_ids"].shape[1] == 1 + len("hello world")  # byte-level, no merges
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], 1024) and torch.isfinite(logits).all()


def test_random_models_deterministic_and_leave_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, _ = load_model("random:tiny-bert")
    assert torch.equal(torch.rand(3), expected)  # the caller's RNG stream is untouched
    b, _ = load_model("random:tiny-bert")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_toy_encoder_tokenizer_pairs() -> None:
    _, tok = load_model("random:tiny-bert")
    enc = tok("ab", "c")
    a, b, c = tok.convert_tokens_to_ids(["a", "##b", "c"])  # character-level WordPiece
    assert enc["input_ids"] == [tok.cls_token_id, a, b, tok.sep_token_id, c, tok.sep_token_id]
    assert enc["token_type_ids"] == [0, 0, 0, 0, 1, 1]
    _, dtok = load_model("random:tiny-distilbert")
    assert "token_type_ids" not in dtok("ab")


def test_architecture_follows_task() -> None:
    cls_task, reg_task = get_task("movie-sentiment"), get_task("movie-sentiment-regression")
    assert type(load_model("random:tiny-bert")[0]).__name__ == "BertModel"
    assert type(load_model("random:tiny-llama", task=get_task("sotu"))[0]).__name__ == "LlamaForCausalLM"
    m, _ = load_model("random:tiny-bert", task=cls_task)
    assert type(m).__name__ == "BertForSequenceClassification" and m.config.num_labels == 2
    m, _ = load_model("random:tiny-distilbert", task=reg_task)
    assert m.config.num_labels == 1 and m.config.problem_type == "regression"
    m, tok = load_model("random:tiny-llama", task=cls_task)
    assert type(m).__name__ == "LlamaForSequenceClassification" and m.config.pad_token_id == tok.eos_token_id
    batch = tok(["a longer text", "b"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert m(**batch).logits.shape == (2, 2)


def test_local_directory_roundtrip(tmp_path: Path) -> None:
    model, tok = load_model("random:tiny-bert")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded, ltok = load_model(str(tmp_path / "m"), task=get_task("movie-sentiment"))
    assert type(loaded).__name__ == "BertForSequenceClassification"
    assert torch.equal(
        loaded.bert.encoder.layer[1].output.dense.weight, model.encoder.layer[1].output.dense.weight
    )
    assert ltok("ab")["input_ids"] == tok("ab")["input_ids"]
    assert not loaded.training


def test_pruned_checkpoint_is_delegated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import statprune.models.checkpoint as checkpoint

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "statprune_shapes": {}}))
    seen = {}

    def fake_load_pruned(path, *, dtype, device):
        seen.update(path=Path(path), dtype=dtype, device=device)
        return "model", "tokenizer"

    monkeypatch.setattr(checkpoint, "load_pruned", fake_load_pruned)
    assert load_model(str(tmp_path), dtype=torch.float64) == ("model", "tokenizer")
    assert seen == {"path": tmp_path, "dtype": torch.float64, "device": "cpu"}


def test_unknown_specs(tmp_path: Path) -> None:
    with pytest.raises(
        StatpruneError, match=r"unknown model 'minilm'.*minilm-l6, smollm2-135m.*did you mean 'minilm-l6'"
    ):
        load_model("minilm")
    with pytest.raises(StatpruneError, match=r"unknown model shape 'tiny-gpt'; registered: .*tiny-llama"):
        load_model("random:tiny-gpt")
    with pytest.raises(StatpruneError, match=r"has no config\.json"):
        load_model(str(tmp_path))
    (tmp_path / "w.bin").write_bytes(b"")
    with pytest.raises(StatpruneError, match="is a file"):
        load_model(str(tmp_path / "w.bin"))


def test_offline_hub_id_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers  # noqa: F401  (import time is not what is measured)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(
        StatpruneError, match=r"'google-bert/bert-base-uncased'.*Hub is unreachable.*local directory"
    ):
        load_model("google-bert/bert-base-uncased")
    assert time.perf_counter() - start < 5


def test_unreachable_hub_fails_fast_when_not_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers  # noqa: F401

    monkeypatch.setattr(load_mod, "hub_offline", lambda: False)
    monkeypatch.setattr(load_mod, "hub_reachable", lambda: False)
    start = time.perf_counter()
    with pytest.raises(StatpruneError, match="Hub is unreachable"):
        load_model("meta-llama/Llama-2-7b-hf")
    assert time.perf_counter() - start < 5


def test_hub_probe_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    with socket.socket() as server:  # accepts connections, never answers: a hanging hub
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        start = time.perf_counter()
        assert load_mod.hub_reachable(timeout=0.5) is False
        assert time.perf_counter() - start < 2


def test_shape_config_is_fresh() -> None:
    a = shape_config("tiny-llama")
    a.num_hidden_layers = 7
    assert shape_config("tiny-llama").num_hidden_layers == 2


def _save_mpnet(d: Path) -> None:
    """A tiny MPNet (sentence-transformers' encoder): no adapter, no SDPA, a relative-position bias
    shared by all layers."""
    from transformers import MPNetConfig, MPNetModel

    cfg = MPNetConfig(
        num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=37, vocab_size=300
    )
    MPNetModel(cfg).save_pretrained(d)


def test_unsupported_architecture_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from statprune.cli import main

    _save_mpnet(tmp_path / "mpnet")
    with pytest.raises(StatpruneError, match=r"model type 'mpnet' is not supported"):
        load_model(str(tmp_path / "mpnet"))
    capsys.readouterr()  # the save's progress bar
    rc = main(["evaluate", "--model", str(tmp_path / "mpnet"), "--task", "movie-sentiment"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert "'mpnet'" in line and "bert, distilbert, gemma2" in line and "README 'Your own model'" in line


def test_attention_implementation_is_asked_not_parsed() -> None:
    from transformers import AutoModel, AutoModelForSequenceClassification, BertConfig, MPNetConfig

    assert load_mod.attention_implementation(AutoModel, BertConfig()) == "sdpa"
    assert load_mod.attention_implementation(AutoModelForSequenceClassification, MPNetConfig()) == "eager"
