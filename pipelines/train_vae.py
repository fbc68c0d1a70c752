"""Train WF-VAE.

    deepspeed --num_gpus 2 pipelines/train_vae.py --config pipelines/configs/vae_tiny.yaml [key.path=value ...]
    python pipelines/train_vae.py --config pipelines/configs/vae_tiny.yaml max_steps=10   # one process

On a CPU-only machine the deepspeed launcher starts CPU processes (gloo); use
`deepspeed --num_accelerators 2 ...` or `torchrun --nproc_per_node 2 ...` for two.
"""

from __future__ import annotations

import argparse
import logging

from soraplan.core.config import load_config
from soraplan.model.vae.train import Trainer, TrainVAEConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML file with TrainVAEConfig fields")
    parser.add_argument(
        "--local_rank", type=int, default=None, help="set by the deepspeed launcher"
    )
    parser.add_argument("overrides", nargs="*", help="key.path=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = load_config(TrainVAEConfig, args.config, args.overrides)
    Trainer(cfg).fit()


if __name__ == "__main__":
    main()
