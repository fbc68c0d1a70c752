"""Train the Skiparse DiT on latent shards.

    deepspeed --num_gpus 2 pipelines/train_dit.py --config pipelines/configs/dit_small.yaml \
        [key=value ...]
    python pipelines/train_dit.py --config pipelines/configs/dit_tiny_cpu.yaml steps=20
"""

import argparse

from soraplan.core.config import load_config
from soraplan.model.dit.training import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file of TrainConfig")
    parser.add_argument("--local_rank", type=int, default=None,
                        help="set by the deepspeed launcher")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides")
    args = parser.parse_args()
    train(load_config(TrainConfig, args.config, args.overrides))


if __name__ == "__main__":
    main()
