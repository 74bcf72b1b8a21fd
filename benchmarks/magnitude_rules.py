"""Magnitude's allocation rules on SmolLM2-135M / sotu: perplexity of the first 16 test windows of 512.

A quick comparison (one CPU thread, ≈ 1 min per model), not a table entry: the full test split is 88
windows. Usage: ``python benchmarks/magnitude_rules.py uniform,global 0.1 0.3``.
"""

import copy
import math
import sys

import torch
import torch.nn.functional as F

from statprune.calibration import Calibration
from statprune.data import get_task
from statprune.models.load import load_model
from statprune.pruner import Target, prune


def perplexity(model: torch.nn.Module, windows: list[torch.Tensor]) -> float:
    nll, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(windows), 4):
            ids = torch.stack(windows[i : i + 4])
            logits = model(input_ids=ids).logits[:, :-1]
            nll += F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), reduction="sum"
            ).item()
            n += ids[:, 1:].numel()
    return math.exp(nll / n)


def main(rules: str, sparsities: list[float]) -> None:
    task = get_task("sotu")
    model, tok = load_model("smollm2-135m", task=task)
    windows = [w["input_ids"] for w in task.encode(tok, "test", 512)[:16]]
    print(f"dense ppl {perplexity(model, windows):.2f}", flush=True)
    no_data = Calibration(batches=[], num_examples=0, indices=[])  # magnitude uses none
    for sparsity in sparsities:
        for rule in rules.split(","):
            m = copy.deepcopy(model)
            res = prune(m, no_data, Target(sparsity, 512), method="magnitude", options={"allocation": rule})
            kv = sorted({s.num_kv_heads for s in res.shapes_pruned})
            print(
                f"{sparsity:.2f} {rule}: achieved {res.sparsity_achieved:.4f}, ppl {perplexity(m, windows):.1f}, "
                f"KV heads per layer {kv}",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1], [float(x) for x in sys.argv[2:]])
