"""Named model shapes for randomly initialised models, and toy tokenizers that fit them.

Only two real models are reachable here, so tests use tiny shapes of each architecture family and
speed measurements use the real shapes of models whose weights are not reachable (BERT-base,
Llama-2-7B, ...). A shape fixes dimensions, not weights. The toy tokenizers are built in memory with
the ``tokenizers`` library (no hub) with exactly the config's vocabulary size and special-token ids.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from statprune.registry import Registry

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Shape:
    """A transformers ``model_type`` plus the config keyword arguments that fix its dimensions."""

    name: str
    model_type: str  # "bert" | "distilbert" | "llama"
    kwargs: dict[str, Any] = field(hash=False)
    description: str = ""


SHAPES: Registry[Shape] = Registry("model shape")

_LLAMA = {"hidden_act": "silu", "rms_norm_eps": 1e-5, "attention_bias": False, "mlp_bias": False}

for _shape in (
    Shape(
        "tiny-bert",
        "bert",
        dict(vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=256, max_position_embeddings=512, type_vocab_size=2),
        "2 layers, d64, 4 heads × 16, ff256 (post-LN encoder)",
    ),
    Shape(
        "tiny-distilbert",
        "distilbert",
        dict(vocab_size=1024, dim=64, n_layers=2, n_heads=4, hidden_dim=256, max_position_embeddings=512),
        "2 layers, d64, 4 heads × 16, ff256",
    ),
    Shape(
        "tiny-llama",
        "llama",
        dict(vocab_size=1024, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
             tie_word_embeddings=True, rope_theta=10000.0, bos_token_id=1, eos_token_id=2, **_LLAMA),
        "2 layers, d64, 4 query heads × 16, 2 KV heads (GQA), SwiGLU ff176, tied embeddings",
    ),
    Shape(
        "bert-base",
        "bert",
        dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
             intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2),
        "BERT-base: 12 layers, d768, 12 heads, ff3072 (110 M params)",
    ),
    Shape(
        "distilbert-base",
        "distilbert",
        dict(vocab_size=30522, dim=768, n_layers=6, n_heads=12, hidden_dim=3072, max_position_embeddings=512),
        "DistilBERT-base: 6 layers, d768, 12 heads, ff3072 (66 M params)",
    ),
    Shape(
        "llama-2-7b",
        "llama",
        dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
             tie_word_embeddings=False, rope_theta=10000.0, bos_token_id=1, eos_token_id=2, **_LLAMA),
        "Llama-2-7B: 32 layers, d4096, 32 heads (MHA), ff11008 (6.7 B params)",
    ),
    Shape(
        "llama-2-13b",
        "llama",
        dict(vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
             num_attention_heads=40, num_key_value_heads=40, max_position_embeddings=4096,
             tie_word_embeddings=False, rope_theta=10000.0, bos_token_id=1, eos_token_id=2, **_LLAMA),
        "Llama-2-13B: 40 layers, d5120, 40 heads (MHA), ff13824 (13.0 B params)",
    ),
    Shape(
        "llama-3-8b",
        "llama",
        dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
             tie_word_embeddings=False, rope_theta=500000.0, bos_token_id=128000, eos_token_id=128001,
             **_LLAMA),
        "Llama-3-8B: 32 layers, d4096, 32 query heads, 8 KV heads (GQA), ff14336 (8.0 B params)",
    ),
    Shape(
        "smollm2-135m",
        "llama",
        dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
             num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
             tie_word_embeddings=True, rope_theta=100000.0, bos_token_id=1, eos_token_id=2,
             pad_token_id=2, **_LLAMA),
        "SmolLM2-135M: 30 layers, d576, 9 query heads × 64, 3 KV heads, ff1536, tied (134.5 M params)",
    ),
):  # fmt: skip
    SHAPES.add(_shape.name, _shape)


def shape_config(name: str) -> PretrainedConfig:
    """A fresh transformers config of a named shape."""
    from transformers import AutoConfig

    shape = SHAPES.get(name)
    return AutoConfig.for_model(shape.model_type, **shape.kwargs)


def toy_tokenizer(config: PretrainedConfig) -> PreTrainedTokenizerBase:
    """An in-memory tokenizer whose vocabulary size and special ids match ``config``.

    Encoders get a lower-casing character-level WordPiece ([CLS] … [SEP], token types); decoders a
    byte-level BPE without merges (one token per byte) that prepends BOS. Filler tokens pad the
    vocabulary to ``config.vocab_size`` so every embedding row has a token.
    """
    if config.model_type in ("bert", "distilbert"):
        return _wordpiece(config)
    return _byte_bpe(config)


def _fill(vocab_size: int, fixed: dict[int, str], pieces: list[str], filler: str) -> dict[str, int]:
    """Vocabulary of exactly ``vocab_size`` tokens: fixed ids first, then pieces, then fillers."""
    tokens: list[str | None] = [None] * vocab_size
    for i, tok in fixed.items():
        tokens[i] = tok
    free = (i for i, t in enumerate(tokens) if t is None)
    for piece in pieces:
        tokens[next(free)] = piece
    for i in free:
        tokens[i] = filler.format(i)
    return {t: i for i, t in enumerate(tokens) if t is not None}


def _wordpiece(config: PretrainedConfig) -> PreTrainedTokenizerBase:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pad_id = config.pad_token_id if config.pad_token_id is not None else 0
    chars = string.ascii_lowercase + string.digits + string.punctuation
    pieces = [
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *chars,
        *("##" + c for c in string.ascii_lowercase + string.digits),
    ]
    vocab = _fill(config.vocab_size, {pad_id: "[PAD]"}, pieces, "[unused{}]")
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if config.model_type == "bert" else [])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=config.max_position_embeddings,
        model_input_names=names,
    )


def _byte_bpe(config: PretrainedConfig) -> PreTrainedTokenizerBase:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    bos, eos = config.bos_token_id, config.eos_token_id
    fixed = {bos: "<s>", eos: "</s>"}
    unk = next(i for i in range(config.vocab_size) if i not in fixed)
    fixed[unk] = "<unk>"
    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = _fill(config.vocab_size, fixed, byte_chars, "<extra_{}>")
    tok = Tokenizer(models.BPE(vocab, [], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=config.max_position_embeddings,
        model_input_names=["input_ids", "attention_mask"],
    )
