"""Tiny random models of every supported family, and random calibration batches, for unit tests."""

from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from statprune.calibration import Calibration

VOCAB = 97
FAMILIES = ("bert", "distilbert", "llama", "llama-gqa", "opt", "gpt2", "qwen3", "phi3", "gemma2", "gemma3")
GQA = {"llama-gqa": 2, "qwen3": 2, "phi3": 2, "gemma2": 2, "gemma3": 2}  # KV heads of the GQA families
# sublayer outputs pass through a norm before the residual add (Gemma): exact-recovery tests of
# methods that model the residual as input + sublayer output (Kwon's tuning) do not hold there
POST_SUBLAYER_NORM = ("gemma2", "gemma3")
GATED = ("llama", "llama-gqa", "qwen3", "phi3", "gemma2", "gemma3")
# common decoder shape: 4 query heads of 16, FFN 96
_DEC = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_attention_heads=4, max_position_embeddings=64
)


def tiny_model(family: str, *, layers: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if family == "bert":
        cfg = BertConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=64,
        )
        model = BertForSequenceClassification(cfg)
    elif family == "distilbert":
        cfg = DistilBertConfig(
            vocab_size=VOCAB, dim=64, hidden_dim=128, n_layers=layers, n_heads=4, max_position_embeddings=64
        )
        model = DistilBertForSequenceClassification(cfg)
    elif family in ("llama", "llama-gqa"):
        cfg = LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2 if family == "llama-gqa" else 4,
            tie_word_embeddings=True,
            max_position_embeddings=64,
        )
        model = LlamaForCausalLM(cfg)
    elif family == "opt":
        cfg = OPTConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            ffn_dim=96,
            num_hidden_layers=layers,
            num_attention_heads=4,
            word_embed_proj_dim=64,
            max_position_embeddings=64,
            pad_token_id=0,
        )
        model = OPTForCausalLM(cfg)
    elif family == "gpt2":
        cfg = GPT2Config(
            vocab_size=VOCAB,
            n_embd=64,
            n_inner=96,
            n_layer=layers,
            n_head=4,
            n_positions=64,
            bos_token_id=1,
            eos_token_id=2,
        )
        model = GPT2LMHeadModel(cfg)
    elif family == "qwen3":  # q/k norms per head_dim
        cfg = Qwen3Config(
            **_DEC, num_hidden_layers=layers, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True
        )
        model = Qwen3ForCausalLM(cfg)
    elif family == "phi3":  # fused qkv_proj and gate_up_proj
        cfg = Phi3Config(
            **_DEC,
            num_hidden_layers=layers,
            num_key_value_heads=2,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
        model = Phi3ForCausalLM(cfg)
    elif family in ("gemma2", "gemma3"):  # (1+w) norms, scaled embeddings, pre/post FFN norms
        cls, model_cls = (
            (Gemma2Config, Gemma2ForCausalLM) if family == "gemma2" else (Gemma3TextConfig, Gemma3ForCausalLM)
        )
        cfg = cls(
            **_DEC,
            num_hidden_layers=layers,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=8,  # layer 0 sliding, layer 1 global (Gemma-2's alternation)
        )
        model = model_cls(cfg)
        _perturb_norms(model)
    else:
        raise ValueError(family)
    return model.eval()


def _perturb_norms(model: torch.nn.Module) -> None:
    """Gemma norms start at w = 0 (scale 1 + w): give them random scales so the tests see them."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)


def random_calibration(n: int = 16, length: int = 20, batch_size: int = 8, seed: int = 0) -> Calibration:
    """Right-padded random token batches with variable lengths (padding must never matter)."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        ids = torch.randint(1, VOCAB, (b, length), generator=gen)
        mask = torch.ones(b, length, dtype=torch.long)
        for r in range(b):
            cut = int(torch.randint(length // 2, length + 1, (1,), generator=gen))
            mask[r, cut:] = 0
            ids[r, cut:] = 0
        batches.append(
            {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (b,), generator=gen)}
        )
    return Calibration(batches=batches, num_examples=n, indices=list(range(n)))


def outputs(model: torch.nn.Module, calib: Calibration) -> torch.Tensor:
    """Logits at real tokens (decoders) or per example (classifiers), concatenated."""
    outs = []
    with torch.no_grad():
        for b in calib.batches:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            outs.append(logits[b["attention_mask"].bool()] if logits.dim() == 3 else logits)
    return torch.cat(outs)


def module_inputs(model: torch.nn.Module, module: torch.nn.Module, calib: Calibration) -> list[torch.Tensor]:
    """The input ``module`` receives on each batch while ``model`` runs over ``calib``."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        outputs(model, calib)
    finally:
        handle.remove()
    return seen


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())
