"""`soraplan-toyworld`: the toy world, its end-to-end run, and the checker.

    soraplan-toyworld run --out runs/toyworld [--minutes 60]     world -> curated -> VAE -> DiT -> checked samples
    soraplan-toyworld make --out data/toyworld --videos 40       source videos + Panda-70M-style manifest
    soraplan-toyworld check --samples runs/toyworld/samples      sampled videos scored against their prompts
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from soraplan.core.cli import Command, console_main
from soraplan.core.config import ConfigError
from soraplan.core.testing.toyworld import DEFAULT_HOLDOUT, WorldConfig, check_samples, make_world
from soraplan.core.testing.toyworld_run import ToyRunConfig, run_toyworld


@dataclass
class MakeConfig:
    out: str = ""
    world: WorldConfig = field(default_factory=WorldConfig)


def make(cfg: MakeConfig, args: argparse.Namespace) -> dict[str, Any]:
    if not cfg.out:
        raise ConfigError("set the output folder (--out)")
    return make_world(cfg.out, cfg.world)


def check(cfg: None, args: argparse.Namespace) -> dict[str, Any]:
    holdout = DEFAULT_HOLDOUT if args.holdout is None else args.holdout
    figures = check_samples(args.samples, holdout)
    return figures if args.per_video else {k: v for k, v in figures.items() if k != "videos"}


def _make_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="folder for videos/, manifest.csv and world.json (config: out)")
    p.add_argument("--videos", type=int, help="source videos (config: world.videos)")
    p.add_argument("--seed", type=int, help="config: world.seed")


def _check_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", required=True, help="folder with samples.jsonl and the sampled videos")
    p.add_argument("--holdout", nargs="*", help="captions held out of training (default: the world's four)")
    p.add_argument("--per-video", action="store_true", help="also print every video's reading")


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="run folder (config: out); a rerun continues where it stopped")
    p.add_argument("--minutes", type=float, help="wall-time budget of the whole run (config: minutes)")


main = console_main("soraplan-toyworld", __doc__, [
    Command("run", "curate the world, train WF-VAE and the DiT on it, sample and check (the real jobs)",
            lambda cfg, args: run_toyworld(cfg), ToyRunConfig, _run_arguments,
            {"out": "out", "minutes": "minutes"}),
    Command("make", "write the toy world's source videos and Panda-70M-style manifest", make, MakeConfig,
            _make_arguments, {"out": "out", "videos": "world.videos", "seed": "world.seed"}),
    Command("check", "score sampled videos against their prompts", check, None, _check_arguments),
])

if __name__ == "__main__":
    main()
