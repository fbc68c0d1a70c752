"""`soraplan-refine train | merge | rewrite --config <yaml> [key.path=value ...]`."""

from __future__ import annotations

import argparse
import json

from soraplan.captioner.hub import ModelSourceError
from soraplan.core.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="soraplan-refine", description="LoRA caption refiner")
    # The deepspeed launcher puts --local_rank=N before the command; the rank is read from LOCAL_RANK.
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in [
        ("train", "LoRA fine-tuning (single process, or ZeRO-2 under the deepspeed launcher)"),
        ("merge", "merge an adapter into its base model (safetensors)"),
        ("rewrite", "add refined_caption to shards (Ray) or rewrite a text file of prompts"),
    ]:
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", help="YAML config (pipelines/configs/refine*.yaml)")
        if name == "rewrite":
            p.add_argument("--input", help="shard dir or .txt file of prompts")
            p.add_argument("--out", help="output dir (shards) or .txt file")
        p.add_argument("overrides", nargs="*", help="key.path=value config overrides")
    args = parser.parse_args(argv)
    try:
        _run(args)
    except (ModelSourceError, ConfigError, FileNotFoundError, KeyError) as exc:  # config mistakes: no traceback
        raise SystemExit(f"soraplan-refine {args.command}: {exc}") from exc


def _run(args: argparse.Namespace) -> None:
    overrides = list(args.overrides)
    if args.command == "train":
        from soraplan.captioner.refine.train import RefineTrainConfig, train_refiner

        metrics = train_refiner(load_config(RefineTrainConfig, args.config, overrides)).metrics
        print(json.dumps({k: v for k, v in metrics.items() if k != "train_losses"}, indent=2))
    elif args.command == "merge":
        from soraplan.captioner.refine.merge import MergeConfig, merge_adapter

        print(merge_adapter(load_config(MergeConfig, args.config, overrides)))
    else:
        from soraplan.captioner.refine.rewrite import RewriteJobConfig, run_rewrite

        overrides += [f"input={args.input}"] * bool(args.input) + [f"out={args.out}"] * bool(args.out)
        print(json.dumps(run_rewrite(load_config(RewriteJobConfig, args.config, overrides)), indent=2))


if __name__ == "__main__":
    main()
