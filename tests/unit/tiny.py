"""Tiny random models of every supported family, and random calibration batches, for unit tests."""

from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
)

from statprune.calibration import Calibration

VOCAB = 97
FAMILIES = ("bert", "distilbert", "llama", "llama-gqa")


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
    else:
        raise ValueError(family)
    return model.eval()


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


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())
