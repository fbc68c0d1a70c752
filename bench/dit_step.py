"""Training-step time and peak memory of the skiparse-small DiT per attention mode (CPU, fp32).

    uv run python bench/dit_step.py [--latent 8x12x32x32] [--text-tokens 32] [--modes full skiparse]
        [--no-grad-checkpointing] [--threads 1] [--runs 3] [--steps 1]

One step = v-prediction loss + backward + AdamW update, batch 1. Each mode runs in a fresh
process (see bench/attention_speed.py for how peak memory is measured and why CPU seconds with
one thread are the primary time on a shared machine); `--runs` rounds of all modes give the
median and range of each figure, ratios to the first mode taken within a round. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from _stats import spread
from attention_speed import measure_in_subprocess, peak_rss_mib, rss_mib

MODES = ["full", "spatial_temporal", "skip_window", "skiparse"]


def run_one(mode: str, latent: tuple[int, ...], text_tokens: int, grad_ckpt: bool,
            steps: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from soraplan.model.dit.configs import DiTModelConfig
    from soraplan.model.dit.diffusion import DiffusionConfig, diffusion_loss

    torch.manual_seed(0)
    model = DiTModelConfig(name="skiparse-small", gradient_checkpointing=grad_ckpt,
                           overrides=dict(attention_mode=mode, in_channels=latent[0])).build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=1e-2, eps=1e-15)
    scheduler = DiffusionConfig().train_scheduler()
    latents = torch.randn(1, *latent)
    text = torch.randn(1, text_tokens, model.config.text_dim)
    mask = torch.ones(1, text_tokens, dtype=torch.bool)

    def step(seed: int) -> None:
        loss = diffusion_loss(model, scheduler, latents, text, mask, [seed]).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(0)  # warm-up; also allocates the AdamW state
    before = rss_mib()
    wall, cpu = [], []
    for i in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        step(i + 1)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"seconds": sorted(wall)[len(wall) // 2], "cpu_seconds": sorted(cpu)[len(cpu) // 2],
            "peak_mib_over_warm_state": peak_rss_mib() - before, "peak_rss_mib": peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latent", default="8x12x32x32", help="C x T x H x W of the latents")
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1, help="measured steps per process")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per mode; figures are their "
                        "median and range")
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-grad-checkpointing", action="store_true")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="skiparse", help=argparse.SUPPRESS)
    args = parser.parse_args()
    latent = tuple(int(v) for v in args.latent.split("x"))
    if args.one:
        print(json.dumps(run_one(args.mode, latent, args.text_tokens,
                                 not args.no_grad_checkpointing, args.steps, args.threads)))
        return
    c, t, h, w = latent
    results = {"config": "skiparse-small", "latent": args.latent, "tokens": t * (h // 2) * (w // 2),
               "grad_checkpointing": not args.no_grad_checkpointing, "threads": args.threads,
               "runs": args.runs, "load_average_before": os.getloadavg(), "modes": {}}
    extra = ["--no-grad-checkpointing"] if args.no_grad_checkpointing else []
    rounds = []
    for run in range(args.runs):  # every mode once per round; ratios are taken within a round
        rounds.append({})
        for mode in args.modes:
            one = measure_in_subprocess(__file__, ["--mode", mode, "--latent", args.latent,
                                                   "--text-tokens", str(args.text_tokens),
                                                   "--steps", str(args.steps),
                                                   "--threads", str(args.threads), *extra])
            rounds[-1][mode] = one
            print(json.dumps({"run": run, "mode": mode, **one}), file=sys.stderr, flush=True)
    base = args.modes[0]
    for mode in args.modes:
        results["modes"][mode] = {
            key: spread([r[mode][key] for r in rounds])
            for key in ("cpu_seconds", "seconds", "peak_mib_over_warm_state", "peak_rss_mib")}
        results["modes"][mode][f"speedup_vs_{base}"] = spread(
            [r[base]["cpu_seconds"] / r[mode]["cpu_seconds"] for r in rounds])
    results["load_average_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
