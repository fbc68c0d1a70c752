"""`soraplan-curate`: run the curation job (locally or on a Ray cluster)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from soraplan.curation.config import ConfigError, load_config
from soraplan.curation.pipeline import CurateConfig, run


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
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides)
    for key, value in (("input", args.input), ("video_root", args.video_root), ("out", args.out),
                       ("ray.address", args.address)):
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    try:
        cfg = load_config(CurateConfig, args.config, overrides)
        summary = run(cfg)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"soraplan-curate: {exc}", file=sys.stderr)
        return 2
    brief = {k: summary[k] for k in ("inputs", "rows", "kept", "rejected", "errors", "rejected_by_reason")}
    print(json.dumps(brief))
    return 0


if __name__ == "__main__":
    sys.exit(main())
