"""Fingerprint STAT's numerics on tiny models, to prove a performance change did not change results.

``--save ref.pt`` records, for every family and option set, the pruned weights and kept shapes, plus
raw pivoted-Cholesky factors of rank-deficient matrices; ``--compare ref.pt`` recomputes them and
prints the max relative difference per case (and whether the kept shapes/pivots are identical).
Runs on CPU in seconds; ``--device cuda`` compares a GPU run against a CPU reference.
"""

from __future__ import annotations

import argparse
import copy

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
from statprune.pruner import Target, prune
from statprune.stat.id import pivoted_cholesky


def _calib(vocab: int, n: int = 16, length: int = 24, bs: int = 8) -> Calibration:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(0, n, bs):
        ids = torch.randint(1, vocab, (bs, length), generator=g)
        am = torch.ones(bs, length, dtype=torch.long)
        for r in range(bs):
            cut = int(torch.randint(length // 2, length + 1, (1,), generator=g))
            am[r, cut:] = 0
            ids[r, cut:] = 0
        out.append({"input_ids": ids, "attention_mask": am})
    return Calibration(out, n, list(range(n)))


def _models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "llama": LlamaForCausalLM(
            LlamaConfig(
                vocab_size=100,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                tie_word_embeddings=True,
            )
        ),
        "llama_mid": LlamaForCausalLM(
            LlamaConfig(
                vocab_size=100,
                hidden_size=128,
                intermediate_size=352,
                num_hidden_layers=3,
                num_attention_heads=8,
                num_key_value_heads=4,
            )
        ),
        "bert": BertForSequenceClassification(
            BertConfig(
                vocab_size=100,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
            )
        ),
        "bert_mid": BertForSequenceClassification(
            BertConfig(
                vocab_size=100,
                hidden_size=96,
                intermediate_size=200,
                num_hidden_layers=3,
                num_attention_heads=6,
            )
        ),
        "distil": DistilBertForSequenceClassification(
            DistilBertConfig(vocab_size=100, dim=64, hidden_dim=128, n_layers=2, n_heads=4)
        ),
    }


CASES = [
    (0.3, {}),
    (0.3, {"allocation": "paper"}),
    (0.5, {"repropagate": "false"}),
    (0.5, {"correction": "false"}),
    (0.3, {"gqa": "uniform"}),
]


def _chol_cases() -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = {}
    for n, r in [(50, 50), (200, 120), (300, 300)]:
        X = torch.randn(400, r, generator=g, dtype=torch.float64) @ torch.randn(
            r, n, generator=g, dtype=torch.float64
        )
        G = X.T @ X
        c = pivoted_cholesky(G)
        out[f"chol{n}_{r}"] = {"L": c.L, "perm": c.perm.double(), "res": c.residual}
        blocks = [torch.arange(s, min(s + 16, n)) for s in range(0, n, 16)][::-1]
        c = pivoted_cholesky(G, blocks=blocks)
        out[f"blk{n}_{r}"] = {"L": c.L, "perm": c.perm.double(), "ends": torch.tensor(c.block_ends).double()}
        c = pivoted_cholesky(G, max_steps=n // 3)
        out[f"cap{n}_{r}"] = {"L": c.L, "perm": c.perm.double()}
    return out


def fingerprint(device: str) -> dict[str, dict[str, torch.Tensor]]:
    out = _chol_cases() if device == "cpu" else {}
    for name, m in _models().items():
        m.eval()
        cal = _calib(100)
        for sp, opts in CASES:
            if opts.get("gqa") and "llama" not in name:
                continue
            mm = copy.deepcopy(m).to(device)
            prune(mm, cal, Target(sp, 24), options={**opts, "progress": False})
            key = f"{name}/{sp}/{sorted(opts.items())}"
            out[key] = {k: v.detach().double().cpu() for k, v in mm.state_dict().items()}
    return out


def compare(ref: dict, new: dict) -> float:
    worst = 0.0
    for key, tensors in ref.items():
        if key not in new:
            print(f"{key}: missing")
            continue
        rel = 0.0
        for k, a in tensors.items():
            b = new[key].get(k)
            if b is None or a.shape != b.shape:
                print(f"{key}: {k} shape {tuple(a.shape)} vs {None if b is None else tuple(b.shape)}")
                rel = float("inf")
                break
            den = a.norm().item() or 1.0
            rel = max(rel, (a - b).norm().item() / den)
        worst = max(worst, rel)
        print(f"{key:60s} max rel diff {rel:.2e}")
    print(f"WORST {worst:.2e}")
    return worst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--save")
    ap.add_argument("--compare")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    fp = fingerprint(a.device)
    if a.save:
        torch.save(fp, a.save)
    if a.compare:
        compare(torch.load(a.compare), fp)


if __name__ == "__main__":
    main()
