"""GGUF checkpoints: a tiny Llama written with the ``gguf`` package loads (converted once, cached)
with the same outputs as the model it was written from, and prunes with STAT; unsupported GGUF
architectures are refused in one line before any conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gguf")

from statprune.calibration import make_calibration
from statprune.errors import StatpruneError
from statprune.models import load_model
from statprune.models.checkpoint import load_pruned, save_pruned
from statprune.pruner import Target, prune

LETTERS = "abcdefghijklmnopqrstuvwxyz"
TOKENS = ["<unk>", "<s>", "</s>", "▁", *LETTERS, *(f"▁{c}" for c in LETTERS), "▁th", "he", "▁the"]


def _tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(TOKENS),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's RoPE row order for q/k (transformers' GGUF loader undoes it)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model: torch.nn.Module, path: Path, arch: str = "llama") -> Path:
    import gguf

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny-llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(TOKENS)
    writer.add_token_scores([0.0, 0.0, 0.0, *(-float(i) for i in range(len(TOKENS) - 3))])
    writer.add_token_types([2, 3, 3, *([1] * (len(TOKENS) - 3))])  # unknown, control ×2, normal
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":  # tied: GGUF files then have no output.weight
            continue
        base, suffix = name.rsplit(".", 1)
        w = t.detach().float().numpy()
        if base.endswith("q_proj"):
            w = _permute(w, cfg.num_attention_heads)
        elif base.endswith("k_proj"):
            w = _permute(w, cfg.num_key_value_heads)
        writer.add_tensor(f"{names.get_name(base)}.{suffix}", np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STATPRUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_gguf_loads_once_same_outputs_and_prunes(tmp_path: Path, cache: Path) -> None:
    ref = _tiny_llama()
    path = write_gguf(ref, tmp_path / "tiny.gguf")
    model, tok = load_model(str(path))
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_key_value_heads == 2
    ids = torch.randint(3, len(TOKENS), (2, 12), generator=torch.Generator().manual_seed(0))
    a, b = _logits(model, ids), _logits(ref, ids)
    assert float((a - b).norm() / b.norm()) < 1e-5  # q/k un-permuted, tied head, same numbers
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    enc = tok("the cat")["input_ids"]
    assert tok.convert_ids_to_tokens(enc) == ["▁the", "▁c", "a", "t"]  # the GGUF vocabulary and merges
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)

    (folder,) = [d for d in (cache / "gguf").iterdir() if d.is_dir()]
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    load_model(str(path))  # cached: no second conversion
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert [d for d in (cache / "gguf").iterdir() if d.is_dir()] == [folder]

    texts = ["the cat sat", "a dog ran far away", "the hat", "big red fox", "he ate the pie"] * 2
    examples = [{k: torch.tensor(v) for k, v in tok(t).items()} for t in texts]
    calib = make_calibration(examples, 8, 0, batch_size=4, pad_token_id=tok.pad_token_id)
    res = prune(model, calib, Target(0.1, 8.0), method="stat", options={"progress": False})
    assert 0.05 <= res.sparsity_achieved <= 0.15
    out = _logits(model, ids)
    assert torch.isfinite(out).all() and not torch.allclose(out, b)
    save_pruned(model, tok, tmp_path / "pruned")
    loaded, _ = load_pruned(tmp_path / "pruned")
    assert torch.allclose(_logits(loaded, ids), out, atol=1e-5)


def test_unsupported_gguf_architecture_is_one_line_before_conversion(tmp_path: Path, cache: Path) -> None:
    path = write_gguf(_tiny_llama(), tmp_path / "m.gguf", arch="mamba")
    with pytest.raises(StatpruneError) as e:
        load_model(str(path))
    msg = str(e.value)
    assert "'mamba' is not supported" in msg and "llama" in msg and "Adding a model family" in msg
    assert "\n" not in msg and not (cache / "gguf").exists()
