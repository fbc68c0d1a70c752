"""`soraplan-curate`: run the curation job (locally or on a Ray cluster), and its companions.

    soraplan-curate --config C --input I --out O [key=value ...]    the job
    soraplan-curate report <out>                                    report.html
    soraplan-curate export <out> --format osp|opensora --to FILE    trainer annotations
    soraplan-curate weights download --to DIR [--config C] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from soraplan.core.config import ConfigError, load_config
from soraplan.curation.pipeline import CurateConfig, run
from soraplan.curation.weights import WEIGHTS_DIR_ENV


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="soraplan-curate",
        description="Curate a video collection into Parquet shards. Extra KEY=VALUE arguments "
        "override config keys, e.g. analyze.motion.backend=flow ray.concurrency=4.",
    )
    p.add_argument("--config", help="YAML config (pipelines/configs/curate.yaml)")
    p.add_argument("--input", help="Panda-70M CSV manifest or a directory of videos (config: input)")
    p.add_argument("--video-root", help="folder holding the manifest's videos (config: video_root)")
    p.add_argument("--out", help="output folder (config: out)")
    p.add_argument("--address", help="Ray address, e.g. auto (config: ray.address); default: local Ray")
    p.add_argument("--weights-dir", help=f"load model weights only from this folder, never download "
                   f"(also ${WEIGHTS_DIR_ENV}; see `soraplan-curate weights download`)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return p


def weights_only_from(directory: str, overrides: list[str]) -> None:
    """Point every scorer at `directory` and forbid downloads (air-gapped clusters)."""
    os.environ[WEIGHTS_DIR_ENV] = directory
    os.environ["HF_HUB_OFFLINE"] = "1"  # honoured by open_clip's hub downloads and our LPIPS fetch
    for key in ("analyze.motion.weights_dir", "analyze.aesthetic.weights_dir"):
        overrides.append(f"{key}={json.dumps(directory)}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = {"report": report_main, "export": export_main, "weights": weights_main}
    if argv and argv[0] in commands:
        return commands[argv[0]](argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides)
    if args.weights_dir:
        weights_only_from(args.weights_dir, overrides)
    for key, value in (("input", args.input), ("video_root", args.video_root), ("out", args.out),
                       ("ray.address", args.address)):
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    try:
        cfg = load_config(CurateConfig, args.config, overrides)
        summary = run(cfg)
    except (ConfigError, ValueError, FileNotFoundError, ImportError) as exc:
        print(f"soraplan-curate: {exc}", file=sys.stderr)
        return 2
    brief = {k: summary[k] for k in ("inputs", "rows", "kept", "rejected", "errors", "rejected_by_reason")}
    print(json.dumps(brief))
    return 0


def report_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="soraplan-curate report",
                                description="Write a self-contained report.html for a curation output.")
    p.add_argument("out", help="output folder of a curation run")
    p.add_argument("--to", help="HTML file to write (default: <out>/report.html)")
    p.add_argument("--per-reason", type=int, default=6, help="clips shown per reject reason (and kept)")
    args = p.parse_args(argv)
    from soraplan.curation.report import write_report

    path = write_report(args.out, args.to, per_reason=args.per_reason)
    print(path)
    return 0


def export_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="soraplan-curate export", description="Export kept clips for a trainer.")
    p.add_argument("out", help="output folder of a curation run")
    p.add_argument("--format", required=True, choices=["osp", "opensora"],
                   help="osp: Open-Sora-Plan annotation JSON; opensora: Open-Sora CSV")
    p.add_argument("--to", required=True, help="file to write")
    args = p.parse_args(argv)
    from soraplan.curation.export import export_kept

    count = export_kept(args.out, args.format, args.to)
    print(json.dumps({"exported": count, "to": args.to}))
    return 0


def weights_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="soraplan-curate weights",
                                description="Fetch every weight the config needs, on a connected machine.")
    p.add_argument("action", choices=["download"])
    p.add_argument("--to", required=True, help="weights folder; later runs use it with --weights-dir")
    p.add_argument("--config", help="YAML config whose scorers need the weights")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_intermixed_args(argv)  # `download --to DIR key=value`: positionals on both sides
    from soraplan.curation.aesthetic import download_laion_mlp
    from soraplan.curation.weights import ensure_lpips_alexnet

    try:
        cfg = load_config(CurateConfig, args.config, args.overrides).analyze
    except ConfigError as exc:
        print(f"soraplan-curate: {exc}", file=sys.stderr)
        return 2
    to = Path(args.to)
    fetched = []
    try:
        if cfg.motion.backend == "lpips":
            fetched.append(str(ensure_lpips_alexnet(to)))
        if cfg.aesthetic.enabled:
            if not cfg.aesthetic.mlp_path:
                fetched.append(str(download_laion_mlp(to)))
            cfg.aesthetic.weights_dir = str(to)
            cfg.aesthetic.build()  # open_clip downloads its pretrained tag into <to>/open_clip
            fetched.append(f"open_clip {cfg.aesthetic.clip_model} {cfg.aesthetic.clip_pretrained}")
    except (OSError, ValueError) as exc:
        print(f"soraplan-curate weights: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"weights_dir": str(to), "fetched": fetched}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
