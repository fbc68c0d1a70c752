"""Forward+backward time and peak memory of one self-attention layer per attention kind.

    uv run python bench/attention_speed.py [--shapes 24x32x32 12x16x16] [--heads 2] [--head-dim 64]
        [--threads 1]

Time is reported as wall seconds and as CPU seconds of the process; on a shared machine the CPU
seconds (with one thread) are the steadier measure of work, and the ratios use them.

Each (shape, kind) runs in a fresh process: peak memory is that process's peak RSS during the
measured step minus its RSS just before it (CPU has no allocator high-water mark to reset).
2+1D alternates spatial and temporal layers, skiparse alternates single and group skip, so their
per-layer figures are the mean of the two kinds. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_in_subprocess(script: str, args: list[str]) -> dict:
    """Run `script --one <args>` in a fresh interpreter and parse the JSON line it prints last."""
    out = subprocess.run([sys.executable, script, "--one", *args], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_one(shape: tuple[int, int, int], kind: str, k: int, heads: int, head_dim: int,
            repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)

    from soraplan.model.dit.attention import SelfAttention, rope_3d

    torch.manual_seed(0)
    dim = heads * head_dim
    attn = SelfAttention(dim, heads, kind, sparse_k=k)

    def step(grid: tuple[int, int, int]) -> None:
        x = torch.randn(1, grid[0] * grid[1] * grid[2], dim, requires_grad=True)
        attn(x, grid, rope_3d(grid, head_dim)).square().mean().backward()

    step((2, 4, 4))  # warm-up: kernels, thread pools
    before = rss_mib()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        step(shape)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"seconds": sorted(wall)[len(wall) // 2], "cpu_seconds": sorted(cpu)[len(cpu) // 2],
            "peak_mib": peak_rss_mib() - before}


KINDS = [("full", "full", 0), ("skiparse k=2", "single_skip", 2), ("skiparse k=2", "group_skip", 2),
         ("skiparse k=4", "single_skip", 4), ("skiparse k=4", "group_skip", 4),
         ("skiparse k=8", "single_skip", 8), ("skiparse k=8", "group_skip", 8),
         ("2+1D", "spatial", 0), ("2+1D", "temporal", 0)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", default=["24x32x32", "12x16x16"])
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=0, help="0: 1 for >16k tokens, else 3")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="full", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        shape = tuple(int(v) for v in args.shapes[0].split("x"))
        print(json.dumps(run_one(shape, args.kind, args.k, args.heads, args.head_dim,
                                 args.repeats, args.threads)))
        return

    results = {"heads": args.heads, "head_dim": args.head_dim, "threads": args.threads,
               "shapes": {}}
    for text in args.shapes:
        t, h, w = (int(v) for v in text.split("x"))
        repeats = args.repeats or (1 if t * h * w > 16384 else 3)
        per_kind = {}
        for label, kind, k in KINDS:
            run = measure_in_subprocess(__file__, [
                "--shapes", text, "--kind", kind, "--k", str(max(k, 2)), "--heads",
                str(args.heads), "--head-dim", str(args.head_dim), "--repeats", str(repeats),
                "--threads", str(args.threads)])
            per_kind[f"{label} ({kind})" if label != "full" else "full"] = run
            print(json.dumps({"shape": text, "mode": label, "kind": kind, **run}),
                  file=sys.stderr, flush=True)
        modes: dict[str, dict[str, float]] = {}
        for label in dict.fromkeys(lbl for lbl, _, _ in KINDS):
            runs = [v for key, v in per_kind.items()
                    if key == label or key.startswith(label + " (")]
            modes[label] = {key: sum(r[key] for r in runs) / len(runs)
                            for key in ("seconds", "cpu_seconds")}
            modes[label]["peak_mib"] = max(r["peak_mib"] for r in runs)
        full = modes["full"]
        for label, mode in modes.items():
            mode["speedup_vs_full"] = full["cpu_seconds"] / mode["cpu_seconds"]
            mode["wall_speedup_vs_full"] = full["seconds"] / mode["seconds"]
            mode["memory_vs_full"] = mode["peak_mib"] / max(full["peak_mib"], 1e-9)
        results["shapes"][text] = {"tokens": t * h * w, "per_layer_mode": modes,
                                   "per_kind": per_kind}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
