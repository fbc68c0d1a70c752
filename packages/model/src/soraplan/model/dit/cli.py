"""`soraplan-dit`: train the Skiparse DiT, encode its training data, inspect attention patterns.

    soraplan-dit train --config pipelines/configs/dit_tiny_cpu.yaml data.root=... [key=value ...]
    soraplan-dit encode --config pipelines/configs/dit_encode.yaml --shards S --out O vae=...
    soraplan-dit attention-distance --shape 24 32 32 --k 2 4 6 8 [--json]
    soraplan-dit text-encoder --out DIR --corpus captions.txt [--d-model 64]
    soraplan-dit convert <Open-Sora-Plan v1.3 DiT folder> OUT   # released weights -> ours

`text-encoder` saves a small randomly initialised T5 encoder with a word-level tokenizer over the
corpus's words: an offline text encoder for trials and CPU runs (`text_encoder.path`,
`soraplan-sample --text-encoder`), where mT5-XXL cannot be downloaded. `train` runs in this process; several processes: `deepspeed pipelines/train_dit.py ...` or
`torchrun --nproc_per_node N pipelines/train_dit.py ...`. `encode` is a Ray job
(`ray job submit -- python pipelines/encode_latents.py ...` on a cluster).
"""

from __future__ import annotations

import argparse
from typing import Any

from soraplan.core.cli import Command, console_main
from soraplan.model.dit.distance import MODE_KINDS, distance_table
from soraplan.model.dit.encode import EncodeConfig, run_encode
from soraplan.model.dit.train import DiTTrainer, TrainDiTConfig
from soraplan.model.upstream import convert_arguments

MODE_TITLES = {"full": "full 3D", "spatial_temporal": "2+1D", "skip_window": "skip+window",
               "skiparse": "skiparse"}


def format_table(rows: list[dict[str, float | int]]) -> str:
    header = "| k | " + " | ".join(MODE_TITLES[m] for m in MODE_KINDS) + " |"
    lines = [header, "|---" * (len(MODE_KINDS) + 1) + "|"]
    for row in rows:
        lines.append(f"| {row['k']} | " + " | ".join(f"{row[m]:.4f}" for m in MODE_KINDS) + " |")
    return "\n".join(lines)


def train(cfg: TrainDiTConfig, args: argparse.Namespace) -> None:
    DiTTrainer(cfg).fit()


def encode(cfg: EncodeConfig, args: argparse.Namespace) -> dict[str, Any]:
    return run_encode(cfg)


def encode_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", help="curated output folder (config: shards)")
    parser.add_argument("--out", help="latent shard folder (config: out)")
    parser.add_argument("--address", help="Ray address, e.g. auto (config: ray.address); "
                        "default: a local Ray")


def attention_distance(cfg: None, args: argparse.Namespace) -> dict[str, Any] | str:
    rows = distance_table(tuple(args.shape), args.k)
    if args.json:
        return {"shape": args.shape, "rows": rows}
    t, h, w = args.shape
    return f"average attention distance on {t}x{h}x{w} = {t * h * w} tokens\n{format_table(rows)}"


def distance_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", type=int, nargs=3, metavar=("T", "H", "W"),
                        default=[24, 32, 32], help="latent token grid after patchifying")
    parser.add_argument("--k", type=int, nargs="+", default=[2, 4, 6, 8], help="sparse ratios")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def text_encoder(cfg: None, args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    from soraplan.core.config import ConfigError
    from soraplan.model.testing import save_tiny_t5

    corpus = Path(args.corpus)
    if not corpus.is_file():
        raise FileNotFoundError(f"corpus not found: {corpus} (--corpus)")
    words = sorted({w for line in corpus.read_text().lower().splitlines() for w in line.split()})
    if not words:
        raise ConfigError(f"{corpus} holds no words (--corpus)")
    if args.d_model % args.heads:
        raise ConfigError(f"--d-model {args.d_model} must be a multiple of --heads {args.heads}")
    save_tiny_t5(args.out, args.d_model, args.seed, words, args.layers, args.heads)
    return {"out": args.out, "words": len(words), "d_model": args.d_model}


def text_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder for the encoder and its tokenizer")
    parser.add_argument("--corpus", required=True, help="text file; its words are the vocabulary")
    parser.add_argument("--d-model", type=int, default=64, help="state width (the DiT's text_dim)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)


def convert(cfg: None, args: argparse.Namespace) -> dict[str, object]:
    from soraplan.model.dit.convert import convert_dit

    return convert_dit(args.source, args.out, args.config)


COMMANDS = [
    Command("train", "train the DiT in this process (several: deepspeed pipelines/train_dit.py)",
            train, TrainDiTConfig),
    Command("encode", "encode kept clips into latent shards (Ray job)", encode, EncodeConfig,
            encode_arguments, {"shards": "shards", "out": "out", "address": "ray.address"}),
    Command("attention-distance", "average attention distance of each attention mode",
            attention_distance, arguments=distance_arguments),
    Command("text-encoder", "save a small random T5 encoder with a word-level tokenizer (offline trials)",
            text_encoder, arguments=text_encoder_arguments),
    Command("convert", "convert a released Open-Sora-Plan v1.3 DiT checkpoint into a save_pretrained folder",
            convert, arguments=convert_arguments),
]

main = console_main("soraplan-dit", __doc__, COMMANDS)

if __name__ == "__main__":
    main()
