"""Device ceilings and STAT's hot kernels in one call; writes a JSON file and prints a table.

Usage: python benchmarks/micro.py OUT.json [cuda|cpu]
"""

from __future__ import annotations

import json
import sys

import torch

from statprune.bench.ceilings import bench_factorization, bench_gram, measure_ceilings


def main() -> None:
    path = sys.argv[1]
    dev = torch.device(sys.argv[2] if len(sys.argv) > 2 else "cuda")
    out = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"}
    out["ceilings"] = measure_ceilings(dev)
    print(json.dumps(out["ceilings"], indent=1), flush=True)
    out["factorization"] = []
    for n, hd in [(768, 64), (3072, None), (4096, 128), (11008, None)]:
        r = bench_factorization(n, dev, head_dim=hd)
        out["factorization"].append(r)
        print(r, flush=True)
    out["gram"] = [bench_gram(16384, d, dev) for d in (768, 3072, 4096, 11008)]
    for r in out["gram"]:
        print(r, flush=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
