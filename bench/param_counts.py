"""Parameter count of every named DiT config, built on the meta device (no memory, no weights).

    uv run python bench/param_counts.py
"""

import json

import torch
from soraplan.model.dit.configs import DIT_CONFIGS, DiTModelConfig


def main() -> None:
    counts = {}
    for name in DIT_CONFIGS:
        with torch.device("meta"):
            model = DiTModelConfig(name=name).build()
        dim = model.config.num_heads * model.config.head_dim
        counts[name] = {"params": sum(p.numel() for p in model.parameters()),
                        "layers": model.config.num_layers, "hidden": dim,
                        "text_dim": model.config.text_dim, "sparse_k": model.config.sparse_k}
    print(json.dumps(counts, indent=2))


if __name__ == "__main__":
    main()
