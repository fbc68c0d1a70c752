"""Train a small caption refiner on CPU for a bounded time on the VBench short->dense pairs
(../shared/devset/captions/vbench) and report held-out loss before/after and rewrite lengths.

    uv run python bench/eval_refiner.py --minutes 8            # tiny random LLaMA built here
    uv run python bench/eval_refiner.py --base-model <dir>     # a real (local) chat model

No pretrained weights can be downloaded here, so by default the base is a small randomly
initialised LLaMA with a BPE tokenizer trained on the training split: the figures show that
the LoRA recipe and loss masking learn, not what LLaMA-3.1-8B would reach. Prints JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from soraplan.captioner.prompts import PromptConfig
from soraplan.captioner.refine.data import PairSourceConfig, load_pairs, split_pairs
from soraplan.captioner.refine.rewrite import RefinerConfig
from soraplan.captioner.refine.train import RefinerTrainer, RefineTrainConfig
from soraplan.captioner.testing import build_tiny_llama, train_tokenizer
from soraplan.core.train.config import OptimizerConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _devset import devset_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "pipelines" / "configs" / "prompts" / "refine.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="training time bound")
    parser.add_argument("--base-model", default="", help="local chat model; default: a tiny random LLaMA")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4000)
    parser.add_argument("--lr", type=float, default=2e-3, help="1.5e-4 is the recipe for a pretrained 8B base")
    parser.add_argument("--heldout", type=float, default=0.1)
    parser.add_argument("--rewrite", type=int, default=32, help="held-out prompts to rewrite")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=1, help="more only on an idle machine")
    parser.add_argument("--out", default="", help="keep the run here (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    vbench = devset_dir() / "captions" / "vbench"
    source = PairSourceConfig(path=str(vbench / "short_prompts.txt"), dense_path=str(vbench / "dense_prompts.txt"))
    pairs = load_pairs(source)
    seed = 0
    train_pairs, heldout = split_pairs(pairs, args.heldout, seed)  # the same split the trainer makes
    work = Path(args.out or tempfile.mkdtemp(prefix="eval_refiner_"))
    base = args.base_model
    if not base:
        corpus = [p.short + "\n" + p.dense for p in train_pairs] + [PROMPTS.read_text()]
        tokenizer = train_tokenizer(corpus, vocab_size=args.vocab)
        base = str(build_tiny_llama(work / "base", tokenizer, hidden_size=args.hidden, num_layers=args.layers))

    cfg = RefineTrainConfig(
        base_model=base, output_dir=str(work / "run"), data=source,
        prompt=PromptConfig(file=str(PROMPTS), id="osp_refine"),
        epochs=1000.0, max_minutes=args.minutes, global_batch_size=32, micro_batch_size=8,
        optimizer=OptimizerConfig(lr=args.lr, warmup_ratio=0.1, schedule="linear"),
        eval_fraction=args.heldout, seed=seed, dtype="float32", cpu_threads=args.threads, log_every=10,
    )
    # The warm-up/decay schedule is planned over the steps that fit in the time bound.
    probe = RefinerTrainer(dataclasses.replace(cfg, output_dir=str(work / "probe"), steps=2)).run()
    seconds_per_step = probe["train_seconds"] / max(probe["steps"], 1)
    cfg.steps = max(1, int(args.minutes * 60 / seconds_per_step))
    m = RefinerTrainer(cfg).run()

    refiner_cfg = RefinerConfig(model=base, adapter=str(work / "run" / "adapter"), dtype="float32", device="cpu",
                                prompt=cfg.prompt)
    refiner_cfg.generation.max_new_tokens = args.max_new_tokens
    refiner = refiner_cfg.build()
    sample = heldout[: args.rewrite]
    start = time.perf_counter()
    rewrites = []
    for i in range(0, len(sample), 8):
        rewrites.extend(refiner.rewrite([p.short for p in sample[i : i + 8]]))
    seconds = time.perf_counter() - start

    def words(text: str | None) -> int:
        return len((text or "").split())

    short_words = sum(words(p.short) for p in sample)
    figures = {
        "pairs": len(pairs),
        "train_pairs": m["train_pairs"],
        "heldout_pairs": m["eval_pairs"],
        "base_model": args.base_model or f"random LLaMA hidden={args.hidden} layers={args.layers} vocab={args.vocab}",
        "steps": m["steps"],
        "epochs_seen": round(m["steps"] * 32 / m["train_pairs"], 2),
        "train_seconds": m["train_seconds"],
        "heldout_loss_before": round(m["eval_loss_before"], 4),
        "heldout_loss_after": round(m["eval_loss_after"], 4),
        "rewrites": len(rewrites),
        "rewrite_errors": sum(r.error is not None for r in rewrites),
        "length_ratio_rewrite_to_short": round(sum(words(r.text) for r in rewrites) / max(short_words, 1), 2),
        "length_ratio_reference_to_short": round(sum(words(p.dense) for p in sample) / max(short_words, 1), 2),
        "rewrite_tokens_per_s": round(sum(r.num_tokens for r in rewrites) / seconds, 2),
        "examples": [{"short": p.short, "rewrite": r.text} for p, r in list(zip(sample, rewrites))[:3]],
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
