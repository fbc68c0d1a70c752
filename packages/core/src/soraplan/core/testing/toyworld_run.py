"""`soraplan-toyworld run`: from raw footage to a text-to-video model whose samples are checked
against their prompts, through the same console scripts a user runs.

    world -> soraplan-curate run -> soraplan-vae train -> soraplan-vae latent-stats
          -> soraplan-dit text-encoder -> soraplan-dit encode -> soraplan-dit train
          -> soraplan-sample -> soraplan-toyworld check -> summary.json, report.html

Every stage writes its config to `<out>/configs/<stage>.yaml` and its log to
`<out>/logs/<stage>.log`; `<out>/stages.json` records the finished stages and their wall time,
so a rerun with the same `--out` continues where the last one stopped. The DiT gets what is
left of the time budget once the other stages are done.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from soraplan.core.config import ConfigError, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, to_dict
from soraplan.core.outputs import prepare_output_dir, read_sample_index, write_json_atomic
from soraplan.core.schema import read_clip_table
from soraplan.core.testing.toyworld import FPS, SHOT_FRAMES, SIZE, WorldConfig, all_captions, check_samples

log = logging.getLogger(__name__)
# Models this small run fastest on one torch thread; two threads on two shared cores wait on
# each other and ran 10-40x slower under load.
TRAIN_THREADS = 1


@dataclass
class ToyRunConfig:
    out: str = "runs/toyworld"
    minutes: PositiveFloat = 60.0  # wall time of the whole run; the DiT gets what the rest leaves
    world: WorldConfig = field(default_factory=lambda: WorldConfig(videos=60))
    # The VAE trains a fixed number of steps, so a loaded machine changes its time, not its
    # quality (12 minutes under load gave 511 steps and reconstructions too soft to tell a square
    # from a circle); vae_minutes caps its wall time.
    vae_steps: PositiveInt = 2000
    vae_minutes: PositiveFloat = 30.0
    reserve_minutes: NonNegativeFloat = 4.0  # kept back from the DiT for sampling, checks, report
    min_dit_minutes: PositiveFloat = 2.0  # the DiT trains at least this long, budget or not
    seeds: list[NonNegativeInt] = field(default_factory=lambda: [0, 1])  # sampling seeds per caption
    sample_steps: PositiveInt = 20
    # Classifier-free guidance of the samples. This small conditional model needs little: at 5
    # the guided latents overshoot (std 1.26 against the data's 0.97) and decode to round blobs,
    # so every square reads as a circle; 1.5-2 keep squares square (docs/figures.md).
    guidance: NonNegativeFloat = 1.5
    sampler: str | None = None  # soraplan-sample --sampler; None: the pipeline's own
    vae_checks: PositiveInt = 16  # kept clips reconstructed by the VAE and checked
    # Extra key=value overrides for each job (e.g. dit: ["model.overrides.num_layers=6"]).
    curate: list[str] = field(default_factory=list)
    vae: list[str] = field(default_factory=list)
    encode: list[str] = field(default_factory=list)
    dit: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if not self.seeds:
            raise ConfigError("seeds: sample at least one seed per caption")


class ToyRun:
    def __init__(self, cfg: ToyRunConfig) -> None:
        self.cfg = cfg
        self.out = prepare_output_dir(cfg.out, cfg)
        self.configs, self.logs = self.out / "configs", self.out / "logs"
        self.configs.mkdir(exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.state_file = self.out / "stages.json"
        self.done: dict[str, float] = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}
        self.world, self.curated = self.out / "world", self.out / "curated"
        self.vae_run, self.vae_dir = self.out / "vae", self.out / "vae_model"
        self.text_encoder, self.latents = self.out / "text_encoder", self.out / "latents"
        self.dit_run, self.samples = self.out / "dit", self.out / "samples"

    # --- running the jobs ---------------------------------------------------------------------
    def job(self, stage: str, argv: list[str], config: dict[str, Any] | None = None) -> None:
        """Run one console script, its output going to `<out>/logs/<stage>.log`."""
        if config is not None:
            path = self.configs / f"{stage}.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            argv = [*argv, "--config", str(path)]
        with open(self.logs / f"{stage}.log", "a") as fh:
            fh.write(f"$ {' '.join(argv)}\n")
            fh.flush()
            done = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, env=os.environ.copy())
        if done.returncode:
            tail = (self.logs / f"{stage}.log").read_text().strip().splitlines()[-3:]
            raise RuntimeError(f"stage {stage} failed (exit {done.returncode}); see {self.logs / f'{stage}.log'}: "
                               + " | ".join(tail))

    def stage(self, name: str, work: Callable[[], None]) -> None:
        if name in self.done:
            log.info("toyworld: %s already done (%.0f s)", name, self.done[name])
            return
        log.info("toyworld: %s ...", name)
        started = time.monotonic()
        work()
        self.done[name] = round(time.monotonic() - started, 1)
        write_json_atomic(self.state_file, self.done)
        log.info("toyworld: %s done in %.0f s", name, self.done[name])

    def run(self) -> dict[str, Any]:
        self.stage("world", self.make_world)
        self.stage("curate", self.curate)
        self.stage("vae", self.train_vae)
        self.stage("latent_stats", self.latent_stats)
        self.stage("text_encoder", self.make_text_encoder)
        self.stage("encode", self.encode)
        self.stage("dit", self.train_dit)
        self.stage("sample", self.sample)
        self.stage("vae_check", self.check_vae)
        samples = check_samples(self.samples, self.cfg.world.holdout)
        summary = self.summary(samples)
        write_json_atomic(self.out / "summary.json", summary)
        from soraplan.core.testing.toyworld_report import write_report

        write_report(self.out, summary, samples["videos"])
        return summary

    # --- the stages -----------------------------------------------------------------------------
    def make_world(self) -> None:
        self.job("world", ["soraplan-toyworld", "make"], {"out": str(self.world), "world": to_dict(self.cfg.world)})

    def curate(self) -> None:
        self.job("curate", ["soraplan-curate", "run", *self.cfg.curate],
                 {"input": str(self.world / "manifest.csv"), "out": str(self.curated)})

    def train_vae(self) -> None:
        config = {
            "output_dir": str(self.vae_run), "steps": self.cfg.vae_steps, "max_minutes": self.cfg.vae_minutes,
            "model": {"name": "wfvae-toy"},
            # The toy VAE has no attention, so it learns on crops a quarter of a shot's size (4x
            # the steps per minute) and still encodes whole shots.
            "data": {"shard_dirs": [str(self.curated)], "num_frames": 9, "crop_size": SIZE // 2,
                     "short_side": SIZE, "fps": FPS, "batch_size": 8},
            "loss": {"l1_weight": 0.0, "l2_weight": 1.0, "lpips_weight": 0.0, "disc_start_step": 10**9},
            "optimizer": {"lr": 1e-3, "warmup_steps": 50},
            "ema": {"decay": 0.999},
            "checkpoint": {"every": 500, "keep_last": 1},
            "video_every": 0, "log_every": 50, "cpu_threads": TRAIN_THREADS,
        }
        self.job("vae", ["soraplan-vae", "train", *self.cfg.vae], config)

    def latent_stats(self) -> None:
        self.job("latent_stats", ["soraplan-vae", "latent-stats", "--vae", str(self.vae_run),
                                  "--shards", str(self.curated), "--out", str(self.vae_dir)])

    def make_text_encoder(self) -> None:
        corpus = self.out / "captions.txt"
        corpus.write_text("\n".join(all_captions() + ["a red circle standing still"]) + "\n")
        self.job("text_encoder", ["soraplan-dit", "text-encoder", "--out", str(self.text_encoder),
                                  "--corpus", str(corpus)])

    def encode(self) -> None:
        config = {
            "shards": str(self.curated), "out": str(self.latents), "vae": str(self.vae_dir),
            "vae_chunk_frames": None,
            "text_encoder": {"path": str(self.text_encoder), "max_length": 16},
            "buckets": {"min_hxw": SIZE * SIZE, "max_hxw": SIZE * SIZE, "hw_stride": 16, "train_fps": FPS,
                        "num_frames": SHOT_FRAMES, "min_num_frames": SHOT_FRAMES},
            "ray": {"batch_size": 16},
        }
        self.job("encode", ["soraplan-dit", "encode", *self.cfg.encode], config)

    def dit_minutes(self) -> float:
        spent = sum(self.done.values()) / 60
        return max(self.cfg.min_dit_minutes, self.cfg.minutes - spent - self.cfg.reserve_minutes)

    def train_dit(self) -> None:
        config = {
            "output_dir": str(self.dit_run), "steps": 1_000_000, "max_minutes": round(self.dit_minutes(), 2),
            "model": {"name": "skiparse-toy"},
            "data": {"root": str(self.latents), "global_batch": 16, "caption_dropout": 0.1},
            # The DiT trains to a time budget, so its cosine decay spans that budget: at a
            # constant rate its squares stopped sharpening long before the budget ran out.
            "optimizer": {"lr": 1e-3, "warmup_steps": 100, "weight_decay": 0.0, "grad_clip": 1.0,
                          "schedule": "cosine", "horizon": "max_minutes", "min_lr_ratio": 0.02},
            "diffusion": {"loss_weighting": "none"},
            "ema": {"decay": 0.999},
            "checkpoint": {"every": 1000, "keep_last": 1},
            "zero_stage": 0, "log_every": 100, "cpu_threads": TRAIN_THREADS,
        }
        self.job("dit", ["soraplan-dit", "train", *self.cfg.dit], config)

    def sample(self) -> None:
        prompts = self.out / "prompts.txt"
        prompts.write_text("\n".join(all_captions()) + "\n")
        self.job("sample", [
            "soraplan-sample", "--checkpoint", str(self.dit_run), "--vae", str(self.vae_dir),
            "--text-encoder", str(self.text_encoder), "--prompts-file", str(prompts),
            "--seeds", *map(str, self.cfg.seeds), "--out", str(self.samples),
            "--frames", str(SHOT_FRAMES), "--height", str(SIZE), "--width", str(SIZE),
            "--steps", str(self.cfg.sample_steps), "--cfg", str(self.cfg.guidance), "--fps", str(FPS),
            *(["--sampler", self.cfg.sampler] if self.cfg.sampler else [])])

    def check_vae(self) -> None:
        """Reconstruct kept clips with the trained VAE, for the checker: what the DiT can reach at
        best."""
        self.job("vae_check", ["soraplan-vae", "reconstruct", "--shards", str(self.curated),
                               "--clips", str(self.cfg.vae_checks), str(self.out / "vae_check"),
                               "--model.pretrained", str(self.vae_dir), f"max_frames={SHOT_FRAMES}",
                               f"short_side={SIZE}"])

    # --- what the run shows ---------------------------------------------------------------------
    def curation_figures(self) -> dict[str, Any]:
        """What curation did to each kind of planted shot."""
        shots = json.loads((self.world / "world.json").read_text())["shots"]
        kind = {(s["video"], round(s["start_s"], 3)): s["kind"] for s in shots}
        rows = read_clip_table(self.curated, columns=["source_id", "status", "reject_reasons"]).to_pylist()
        by_kind: dict[str, dict[str, int]] = {}
        for row in rows:
            video, span = row["source_id"].rsplit(":", 1)
            key = kind.get((video, round(float(span.split("-")[0]), 3)), "unknown")
            counts = by_kind.setdefault(key, {"rows": 0, "kept": 0})
            counts["rows"] += 1
            counts["kept"] += row["status"] == "kept"
            for reason in row["reject_reasons"] or []:
                counts[reason] = counts.get(reason, 0) + 1
        good, still, subtitled = (by_kind.get(k, {"rows": 0, "kept": 0}) for k in ("good", "still", "subtitled"))

        def share(counts: dict[str, int], reason: str) -> float | None:
            return round(counts.get(reason, 0) / counts["rows"], 3) if counts["rows"] else None

        return {"by_kind": by_kind, "still_removed_static": share(still, "static"),
                "subtitled_removed_subtitles": share(subtitled, "subtitles"),
                "good_kept": good["kept"], "good_shots": good["rows"]}

    def vae_figures(self) -> dict[str, Any]:
        """The checker on the VAE's reconstructions of kept clips, with their mean PSNR."""
        folder = self.out / "vae_check"
        psnr = [e["psnr"] for e in read_sample_index(folder) if "psnr" in e]
        return {**check_samples(folder)["all"], "psnr": round(sum(psnr) / len(psnr), 2) if psnr else None}

    def summary(self, samples: dict[str, Any]) -> dict[str, Any]:
        targets = {"colour": 0.9, "direction": 0.8, "shape": 0.7, "one_blob": 0.9}
        figures = samples["all"]
        return {
            "figures": {k: v for k, v in samples.items() if k != "videos"},
            "targets": targets,
            "met": {k: figures.get(k, 0) >= v for k, v in targets.items()},
            "vae_reconstructions": self.vae_figures(),
            "curation": self.curation_figures(),
            "stage_seconds": self.done,
            "total_minutes": round(sum(self.done.values()) / 60, 1),
            "training": {name: last_metrics(self.out / name / "metrics.jsonl") for name in ("vae", "dit")},
            "config": to_dict(self.cfg),
        }


def last_metrics(path: Path) -> dict[str, Any]:
    """Steps and first/last loss of a trainer's metrics.jsonl."""
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return {}
    window = max(1, len(rows) // 20)

    def mean(part: list[dict[str, Any]]) -> float:
        return round(sum(r["loss"] for r in part) / len(part), 5)

    return {"steps": rows[-1]["step"], "loss_first": mean(rows[:window]), "loss_last": mean(rows[-window:])}


def run_toyworld(cfg: ToyRunConfig) -> dict[str, Any]:
    summary = ToyRun(cfg).run()
    return {k: summary[k] for k in ("figures", "met", "vae_reconstructions", "curation", "stage_seconds",
                                    "total_minutes")}
