"""Parameter count of every named DiT config, built on the meta device (no memory, no weights),
beside the published count where there is one.

    uv run python bench/param_counts.py
"""

import json

import torch
from soraplan.model.dit.configs import DIT_CONFIGS, DiTModelConfig

# Open-Sora v1's report: "the inserted attention increases the number of parameters from 580M to
# 724M" (STDiT-XL/2, and the PixArt-alpha image model it grows from). Those figures are in units
# of 2^20 parameters (mebi), so they are printed beside our count in both units.
PUBLISHED = {"stdit-xl-2": 724, "pixart-xl-2": 580}


def main() -> None:
    counts = {}
    for name in DIT_CONFIGS:
        with torch.device("meta"):
            model = DiTModelConfig(name=name).build()
        cfg = model.config
        row = {"params": sum(p.numel() for p in model.parameters()), "layers": cfg.num_layers,
               "hidden": cfg.num_heads * cfg.head_dim, "text_dim": cfg.text_dim,
               "model": type(model).__name__}
        if "sparse_k" in cfg:
            row["sparse_k"] = cfg.sparse_k
        if name in PUBLISHED:
            row["params_millions"] = round(row["params"] / 1e6, 1)
            row["params_mebi"] = round(row["params"] / 2**20, 1)
            row["published_M"] = PUBLISHED[name]
        counts[name] = row
    print(json.dumps(counts, indent=2))


if __name__ == "__main__":
    main()
