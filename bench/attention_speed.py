"""Forward+backward time and peak memory of one self-attention layer per attention kind.

    uv run python bench/attention_speed.py [--shapes 24x32x32 12x16x16] [--heads 2] [--head-dim 64]
        [--threads 1] [--runs 3]

Time is reported as wall seconds and as CPU seconds of the process; on a shared machine the CPU
seconds (with one thread) are the steadier measure of work, and the ratios use them.

Each (shape, kind) runs in a fresh process: peak memory is that process's peak RSS during the
measured step minus its RSS just before it (CPU has no allocator high-water mark to reset).
2+1D alternates spatial and temporal layers, skiparse alternates single and group skip, so their
per-layer figures are the mean of the two kinds. Every (shape, kind) runs in `--runs` fresh
processes, one round of all kinds after another; each figure is the median of the rounds with its
range, and ratios are taken within a round. Each process also times the layer's parts alone
(projections, RoPE, rearrangement into sets, attention kernel). Prints JSON with the load
average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from _stats import spread


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


def cpu_times(step, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        step()
        times.append(time.process_time() - start)
    return times


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def run_one(shape: tuple[int, int, int], kind: str, k: int, heads: int, head_dim: int,
            repeats: int, threads: int) -> dict:
    """The whole layer's forward+backward, then each of its parts alone on inputs of the shapes
    the layer gives them: projections (qkv and output linear layers), RoPE on q and k, the
    rearrangement into sets and back (padding, reshapes, the copies they force), and the
    attention kernel on contiguous sets."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)

    from soraplan.model.dit.attention import (SelfAttention, apply_rope, from_sequences, padded_length,
                                              rope_3d, to_sequences)

    torch.manual_seed(0)
    dim = heads * head_dim
    attn = SelfAttention(dim, heads, kind, sparse_k=k)

    def layer(grid: tuple[int, int, int]) -> None:
        x = torch.randn(1, grid[0] * grid[1] * grid[2], dim, requires_grad=True)
        attn(x, grid, rope_3d(grid, head_dim)).square().mean().backward()

    layer((2, 4, 4))  # warm-up: kernels, thread pools
    before = rss_mib()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        layer(shape)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    peak = peak_rss_mib() - before

    n = shape[0] * shape[1] * shape[2]
    m = padded_length(n, kind, k)
    cos, sin = rope_3d(shape, head_dim)

    def leaf(*size: int) -> "torch.Tensor":
        return torch.randn(*size, requires_grad=True)

    def projections() -> None:
        x, o = leaf(1, n, dim), leaf(1, n, dim)
        (attn.to_qkv(x).square().mean() + attn.to_out(o).square().mean()).backward()

    def rope() -> None:
        q, key = leaf(1, n, heads, head_dim), leaf(1, n, heads, head_dim)
        sum(apply_rope(y, cos, sin).square().mean() for y in (q, key)).backward()

    def to_sets(y: "torch.Tensor") -> "torch.Tensor":
        y = F.pad(y, (0, 0, 0, 0, 0, m - n))
        return to_sequences(y, kind, shape, k).transpose(1, 2).contiguous()

    sets = to_sets(torch.zeros(1, n, heads, head_dim))

    def rearrangement() -> None:
        qkv = [leaf(1, n, heads, head_dim) for _ in range(3)]
        out = leaf(*sets.shape)
        back = from_sequences(out.transpose(1, 2), kind, shape, k, 1)[:, :n].contiguous()
        (sum(to_sets(y).square().mean() for y in qkv) + back.square().mean()).backward()

    def kernel() -> None:
        q, key, v = (leaf(*sets.shape) for _ in range(3))
        F.scaled_dot_product_attention(q, key, v).square().mean().backward()

    parts = {name: median(cpu_times(fn, repeats)) for name, fn in
             (("projections", projections), ("rope", rope), ("rearrangement", rearrangement),
              ("kernel", kernel))}
    return {"seconds": median(wall), "cpu_seconds": median(cpu), "peak_mib": peak,
            "parts_cpu_seconds": parts}


KINDS = [("full", "full", 0), ("skiparse k=2", "single_skip", 2), ("skiparse k=2", "group_skip", 2),
         ("skiparse k=4", "single_skip", 4), ("skiparse k=4", "group_skip", 4),
         ("skiparse k=8", "single_skip", 8), ("skiparse k=8", "group_skip", 8),
         ("2+1D", "spatial", 0), ("2+1D", "temporal", 0)]


def per_mode(per_kind: dict[str, dict]) -> dict[str, dict]:
    """A mode's per-layer figures: the mean of its layer kinds (skiparse alternates single and
    group skip, 2+1D spatial and temporal)."""
    modes: dict[str, dict] = {}
    for label in dict.fromkeys(lbl for lbl, _, _ in KINDS):
        runs = [per_kind[f"{label} ({kind})" if label != "full" else "full"]
                for lbl, kind, _ in KINDS if lbl == label]
        modes[label] = {key: sum(r[key] for r in runs) / len(runs) for key in ("seconds", "cpu_seconds")}
        modes[label]["peak_mib"] = max(r["peak_mib"] for r in runs)
        modes[label]["parts"] = {part: sum(r["parts_cpu_seconds"][part] for r in runs) / len(runs)
                                 for part in runs[0]["parts_cpu_seconds"]}
    return modes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", default=["24x32x32", "12x16x16"])
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=0, help="steps per process; 0: 1 for >16k tokens, else 3")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per (shape, kind); the figures "
                        "are their median and range")
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

    results = {"heads": args.heads, "head_dim": args.head_dim, "threads": args.threads, "runs": args.runs,
               "load_average_before": os.getloadavg(), "shapes": {}}
    for text in args.shapes:
        t, h, w = (int(v) for v in text.split("x"))
        repeats = args.repeats or (1 if t * h * w > 16384 else 3)
        rounds = []
        for run in range(args.runs):  # every kind once per round, so load drifts hit all of them
            per_kind = {}
            for label, kind, k in KINDS:
                one = measure_in_subprocess(__file__, [
                    "--shapes", text, "--kind", kind, "--k", str(max(k, 2)), "--heads",
                    str(args.heads), "--head-dim", str(args.head_dim), "--repeats", str(repeats),
                    "--threads", str(args.threads)])
                per_kind[f"{label} ({kind})" if label != "full" else "full"] = one
                print(json.dumps({"shape": text, "run": run, "mode": label, "kind": kind, **one}),
                      file=sys.stderr, flush=True)
            rounds.append(per_mode(per_kind))
        modes = {}
        for label in rounds[0]:
            mine = [r[label] for r in rounds]
            full = [r["full"] for r in rounds]
            modes[label] = {
                "cpu_seconds": spread([m["cpu_seconds"] for m in mine]),
                "seconds": spread([m["seconds"] for m in mine]),
                "peak_mib": spread([m["peak_mib"] for m in mine]),
                "speedup_vs_full": spread([f["cpu_seconds"] / m["cpu_seconds"] for f, m in zip(full, mine)]),
                "memory_vs_full": spread([m["peak_mib"] / max(f["peak_mib"], 1e-9) for f, m in zip(full, mine)]),
                "parts_cpu_seconds": {part: spread([m["parts"][part] for m in mine]) for part in mine[0]["parts"]},
                "parts_speedup_vs_full": {part: spread([f["parts"][part] / max(m["parts"][part], 1e-9)
                                                        for f, m in zip(full, mine)]) for part in mine[0]["parts"]},
            }
        results["shapes"][text] = {"tokens": t * h * w, "steps_per_process": repeats, "per_layer_mode": modes}
    results["load_average_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
