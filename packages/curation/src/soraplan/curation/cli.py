"""`soraplan-curate`: the curation job (locally or on a Ray cluster), and its companions.

    soraplan-curate run --config C --input I --out O [--video-root D] [--address auto]
                        [--weights-dir W] [--plan-only] [key.path=value ...]       the job
    soraplan-curate report <out> [--to FILE] [--per-reason N]                      report.html
    soraplan-curate export <out> --format osp|opensora|opensora-scenes --to FILE [--cut-to DIR]
                                                                                   trainer annotations
    soraplan-curate weights download --to DIR [--config C] [key.path=value ...]    fetch weights
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from soraplan.core.cli import Command, console_main
from soraplan.core.ray_session import refuse_relative_paths_on_a_cluster
from soraplan.curation.analyze import AnalyzeConfig
from soraplan.curation.pipeline import CurateConfig, plan_only, run
from soraplan.curation.weights import WEIGHTS_DIR_ENV

PROG = "soraplan-curate"
DESCRIPTION = __doc__


def weights_only_from(directory: str, cfg: AnalyzeConfig) -> None:
    """Point every stage with weights at `directory` and forbid downloads (air-gapped clusters)."""
    os.environ[WEIGHTS_DIR_ENV] = directory
    os.environ["HF_HUB_OFFLINE"] = "1"  # honoured by open_clip's hub downloads and our LPIPS fetch
    cfg.motion.weights_dir = cfg.aesthetic.weights_dir = directory


def run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", help="Panda-70M CSV manifest, a glob of them (quoted: 'manifests/*.csv') "
                   "or a directory of videos (config: input, which also takes a list)")
    p.add_argument("--video-root", help="folder holding the manifest's videos (config: video_root)")
    p.add_argument("--out", help="output folder (config: out)")
    p.add_argument("--address", help="Ray address, e.g. auto (config: ray.address); default: a local Ray")
    p.add_argument("--weights-dir", help=f"load model weights only from this folder, never download "
                   f"(also ${WEIGHTS_DIR_ENV}; see `{PROG} weights download`)")
    p.add_argument("--plan-only", action="store_true",
                   help="stop after input planning and print its counts (inputs, duplicates, already done, errors)")


def run_job(cfg: CurateConfig, args: argparse.Namespace) -> dict[str, Any]:
    inputs = cfg.input if isinstance(cfg.input, list) else [cfg.input]
    refuse_relative_paths_on_a_cluster(cfg.ray.address, [*(("--input", p) for p in inputs),
                                                         ("--video-root", cfg.video_root), ("--out", cfg.out),
                                                         ("--weights-dir", args.weights_dir)])
    if args.plan_only:
        return plan_only(cfg)
    if args.weights_dir:
        weights_only_from(args.weights_dir, cfg.analyze)
    summary = run(cfg)
    return {k: summary[k] for k in ("inputs", "rows", "kept", "rejected", "errors", "rejected_by_reason")}


def report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output folder of a curation run")
    p.add_argument("--to", help="HTML file to write (default: <out>/report.html)")
    p.add_argument("--per-reason", type=int, default=6, help="clips shown per reject reason (and kept)")


def report(cfg: None, args: argparse.Namespace) -> Path:
    from soraplan.curation.report import write_report

    return write_report(args.out, args.to, per_reason=args.per_reason)


def export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output folder of a curation run")
    p.add_argument("--format", required=True, choices=["osp", "opensora", "opensora-scenes"],
                   help="osp: Open-Sora-Plan annotation JSON (+ its data list file); opensora: Open-Sora CSV "
                   "of cut clips; opensora-scenes: path,timestamp per source for Open-Sora's scene_cut/cut.py")
    p.add_argument("--to", required=True, help="file to write (.json for osp, .csv for the others)")
    p.add_argument("--cut-to", help="folder for clip files: every kept span (opensora, required), or the clips "
                   "Open-Sora-Plan cannot read in place (osp: other containers, rotated videos)")


def export(cfg: None, args: argparse.Namespace) -> dict[str, Any]:
    from soraplan.curation.export import export_kept

    return export_kept(args.out, args.format, args.to, args.cut_to)


def weights_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["download"])
    p.add_argument("--to", required=True, help="weights folder; later runs use it with --weights-dir")


def weights(cfg: CurateConfig, args: argparse.Namespace) -> dict[str, Any]:
    """Fetch every weight the config's stages need, on a connected machine."""
    from soraplan.curation.aesthetic import download_laion_mlp
    from soraplan.curation.weights import ensure_lpips_alexnet

    to, analyze = Path(args.to), cfg.analyze
    fetched = []
    try:
        if analyze.motion.backend == "lpips":
            fetched.append(str(ensure_lpips_alexnet(to)))
        if analyze.aesthetic.enabled:
            if not analyze.aesthetic.mlp_path:
                fetched.append(str(download_laion_mlp(to)))
            analyze.aesthetic.weights_dir = str(to)
            analyze.aesthetic.build()  # open_clip downloads its pretrained tag into <to>/open_clip
            fetched.append(f"open_clip {analyze.aesthetic.clip_model} {analyze.aesthetic.clip_pretrained}")
    except (OSError, ValueError) as exc:  # a refused or failed download: the weights are not there
        raise FileNotFoundError(f"cannot fetch weights into {to}: {exc}") from None
    return {"weights_dir": str(to), "fetched": fetched}


COMMANDS = [
    Command("run", "curate a video collection into Parquet shards (local Ray, or a cluster with --address)",
            run_job, CurateConfig, run_arguments,
            {"input": "input", "video_root": "video_root", "out": "out", "address": "ray.address"}),
    Command("report", "write a self-contained report.html for a curation output", report,
            arguments=report_arguments),
    Command("export", "export the kept clips for a trainer", export, arguments=export_arguments),
    Command("weights", "`weights download`: fetch the weights the config's stages need", weights,
            CurateConfig, weights_arguments),
]

main = console_main(PROG, DESCRIPTION, COMMANDS)

if __name__ == "__main__":
    main()
