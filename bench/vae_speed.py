"""Encode/decode time and peak memory of WF-VAE vs diffusers' AutoencoderKLCogVideoX (default
config), random weights, fp32, on this machine's CPU (or GPU if present). Prints JSON.

    uv run python bench/vae_speed.py                       # 33x256x256, wfvae-s, wfvae-l, cogvideox
    uv run python bench/vae_speed.py --shapes 17x512x512 --models wfvae-s cogvideox-tiled cogvideox

`cogvideox-tiled` is the same model with diffusers' `enable_tiling()`. With `--upstream WF_VAE_SRC`
(a PKU-YuanGroup/WF-VAE checkout) every WF-VAE model also runs as upstream's `WFVAEModel` built
from that checkout with the same widths and trilinear upsampling (`upstream:<name>` rows and
`ours_over_upstream` ratios; compare it with an upstream-compatible config such as
`wfvae-l-16chn`, which interpolates the same way):

    uv run python bench/vae_speed.py --models wfvae-l-16chn --upstream ../upstream/WF-VAE

A run that dies (e.g. out of memory) is reported with the phase it died in and the figures of the
phases before it.

Each (model, shape) runs in a fresh process, with large allocations served by mmap so that
freed memory leaves the resident set at once: peak = high-water mark of resident memory during
the call minus the resident memory before it (Linux /proc; on GPU, torch.cuda peak stats).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import time

CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _rss_peak_reset() -> int:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the high-water mark restarts from the current resident set
    return _vm("VmRSS")


def _vm(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def upstream_wfvae(name: str, src: str):
    """Upstream's WFVAEModel (from a WF-VAE checkout) with the widths of our named config."""
    from soraplan.model.vae import WFVAE_CONFIGS, WFVAEModel

    sys.path.insert(0, src)
    from causalvideovae.model.vae.modeling_wfvae import WFVAEModel as UpstreamWFVAE

    signature = inspect.signature(WFVAEModel.__init__).parameters.values()
    c = {p.name: p.default for p in signature if p.default is not p.empty} | WFVAE_CONFIGS[name]
    return UpstreamWFVAE(
        latent_dim=c["latent_channels"], base_channels=c["base_channels"],
        encoder_num_resblocks=c["encoder_num_res_blocks"],
        decoder_num_resblocks=c["decoder_num_res_blocks"],
        encoder_energy_flow_hidden_size=c["encoder_energy_flow_channels"],
        decoder_energy_flow_hidden_size=c["decoder_energy_flow_channels"],
        connect_res_layer_num=c["connect_res_blocks"], use_attention=c["use_attention"],
        norm_type=c["norm_type"], t_interpolation="trilinear",
    )


def measure(model_name: str, frames: int, size: int, chunked: bool, upstream_src: str | None = None
            ) -> dict[str, float]:
    import torch

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if model_name.startswith("upstream:"):
        vae = upstream_wfvae(model_name.removeprefix("upstream:"), upstream_src).eval().to(device)
        chunks = {}
    elif model_name.startswith("cogvideox"):
        from diffusers import AutoencoderKLCogVideoX

        vae = AutoencoderKLCogVideoX().eval().to(device)
        if model_name == "cogvideox-tiled":
            vae.enable_tiling()  # diffusers' own way to bound memory at high resolution
        chunks: dict[str, int | None] = {}
    else:
        from soraplan.model.vae import WFVAEConfig

        vae = WFVAEConfig(name=model_name).build().eval().to(device)
        chunks = {"chunk_frames": 16 if chunked else None}
        decode_chunks = {"chunk_latents": 4 if chunked else None}

    def encode(x: torch.Tensor) -> torch.Tensor:
        return vae.encode(x, **chunks).latent_dist.mode()

    def decode(z: torch.Tensor) -> torch.Tensor:
        return vae.decode(z, **(decode_chunks if chunks else {})).sample

    x = torch.rand(1, 3, frames, size, size, device=device) * 2 - 1
    result: dict[str, float] = {"params_m": sum(p.numel() for p in vae.parameters()) / 1e6}
    z = None
    with torch.no_grad():
        for phase, fn in (("encode", encode), ("decode", decode)):
            arg = x if phase == "encode" else z
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            else:
                before = _rss_peak_reset()
            start, cpu_start = time.perf_counter(), time.process_time()
            out = fn(arg)
            if device == "cuda":
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() - before
            else:
                peak = _vm("VmHWM") - before
            result[f"{phase}_s"] = time.perf_counter() - start
            # CPU seconds of all threads: comparable between runs when other jobs share the cores
            result[f"{phase}_cpu_s"] = time.process_time() - cpu_start
            result[f"{phase}_peak_gib"] = peak / 2**30
            if phase == "encode":
                z = out
                result["latent_shape"] = list(z.shape)
            del out
            print(json.dumps(result), file=sys.stderr, flush=True)  # kept if a later phase dies
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["wfvae-s", "wfvae-l", "cogvideox"])
    parser.add_argument("--shapes", nargs="+", default=["33x256x256"], help="TxHxW (H = W)")
    parser.add_argument(
        "--chunked", action="store_true", help="also time WF-VAE with chunked encode/decode"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per run")
    parser.add_argument("--upstream", help="PKU-YuanGroup/WF-VAE checkout: also run upstream's model")
    parser.add_argument(
        "--include", help="JSON lines of rows from an earlier run (its stderr) to report with these"
    )
    parser.add_argument(
        "--child", nargs=4, metavar=("MODEL", "T", "SIZE", "CHUNKED"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        name, t, size, chunked = args.child
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(measure(name, int(t), int(size), chunked == "1", args.upstream)))
        return

    import torch

    runs = (
        [json.loads(line) for line in open(args.include) if line.startswith("{")]
        if args.include
        else []
    )
    for shape in args.shapes:
        t, h, w = (int(v) for v in shape.split("x"))
        assert h == w, "square inputs only"
        models = list(args.models)
        if args.upstream:
            models += [f"upstream:{m}" for m in args.models if m.startswith("wfvae")]
        for name in models:
            chunk_modes = [False, True] if args.chunked and name.startswith("wfvae") else [False]
            for chunked in chunk_modes:
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    name,
                    str(t),
                    str(h),
                    "1" if chunked else "0",
                ]
                cmd += ["--threads", str(args.threads)] if args.threads else []
                cmd += ["--upstream", args.upstream] if args.upstream else []
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, env={**os.environ, **CHILD_ENV}
                )
                row = {"model": name, "shape": shape, "chunked": chunked}
                if proc.returncode:
                    lines = proc.stderr.strip().splitlines()
                    done = [ln for ln in lines if ln.startswith("{")]
                    row.update(json.loads(done[-1]) if done else {})
                    phase = "decode" if "encode_s" in row else "encode"
                    killed = " (SIGKILL: out of memory?)" if proc.returncode == -9 else ""
                    last_message = next((ln for ln in reversed(lines) if not ln.startswith("{")), "")
                    row["error"] = f"{phase} failed: exit {proc.returncode}{killed}: {last_message}"
                else:
                    row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
                runs.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    ratios = []
    for shape in args.shapes:
        base = next(
            (
                r
                for r in runs
                if r["model"].startswith("cogvideox") and r["shape"] == shape and "error" not in r
            ),
            None,
        )
        for r in runs:
            if (
                base is None
                or r["model"].startswith("cogvideox")
                or r["shape"] != shape
                or "error" in r
            ):
                continue
            ratios.append(
                {
                    "model": r["model"],
                    "baseline": base["model"],
                    "shape": shape,
                    "chunked": r["chunked"],
                    **{
                        f"cogvideox_over_wfvae_{k}": base[k] / r[k]
                        for k in (
                            "encode_s",
                            "decode_s",
                            "encode_cpu_s",
                            "decode_cpu_s",
                            "encode_peak_gib",
                            "decode_peak_gib",
                        )
                        if k in base and r.get(k, 0) > 0
                    },
                }
            )
    for r in runs:
        up = next((u for u in runs if u["model"] == f"upstream:{r['model']}" and u["shape"] == r["shape"]
                   and "error" not in u), None)
        if up is None or "error" in r:
            continue
        ratios.append({"model": r["model"], "baseline": up["model"], "shape": r["shape"],
                       "chunked": r["chunked"],
                       **{f"ours_over_upstream_{k}": r[k] / up[k]
                          for k in ("encode_cpu_s", "decode_cpu_s", "encode_peak_gib", "decode_peak_gib")
                          if up.get(k, 0) > 0 and k in r}})
    print(
        json.dumps(
            {
                "device": "cuda" if torch.cuda.is_available() else "cpu",
                "threads": args.threads or torch.get_num_threads(),  # what each measuring process used
                "load_average": os.getloadavg(),
                "runs": runs,
                "ratios": ratios,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
