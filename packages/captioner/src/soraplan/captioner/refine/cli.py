"""`soraplan-refine train | merge | rewrite [--config C] [key.path=value ...]`: caption refiner.

`train` runs in one process or under the `deepspeed` launcher / torchrun (one process a device).
"""

from __future__ import annotations

import argparse
from typing import Any

from soraplan.captioner.refine.merge import MergeConfig, merge_adapter
from soraplan.captioner.refine.rewrite import RewriteJobConfig, run_rewrite
from soraplan.captioner.refine.train import RefinerTrainer, RefineTrainConfig
from soraplan.core.cli import Command, console_main


def _train(cfg: RefineTrainConfig, args: argparse.Namespace) -> dict[str, Any]:
    return RefinerTrainer(cfg).run()


def _rewrite_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", help="shard dir (e.g. soraplan-caption output) or .txt file of prompts")
    parser.add_argument("--out", help="output dir (shards) or .txt file")


COMMANDS = [
    Command("train", "LoRA fine-tuning on the shared trainer (DeepSpeed; checkpoints and resume)",
            _train, RefineTrainConfig),
    Command("merge", "merge an adapter into its base model (safetensors)",
            lambda cfg, args: merge_adapter(cfg), MergeConfig),
    Command("rewrite", "add refined_caption to shards (Ray) or rewrite a text file of prompts",
            lambda cfg, args: run_rewrite(cfg), RewriteJobConfig, _rewrite_arguments,
            {"input": "input", "out": "out"}),
]
main = console_main("soraplan-refine", __doc__, COMMANDS)

if __name__ == "__main__":
    main()
