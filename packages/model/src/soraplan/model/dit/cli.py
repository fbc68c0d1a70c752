"""`soraplan-dit`: small command-line tools around the DiT.

    soraplan-dit attention-distance --shape 24 32 32 --k 2 4 6 8 [--json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from soraplan.model.dit.distance import MODE_KINDS, distance_table

MODE_TITLES = {"full": "full 3D", "spatial_temporal": "2+1D", "skip_window": "skip+window",
               "skiparse": "skiparse"}


def format_table(rows: list[dict[str, float | int]]) -> str:
    header = "| k | " + " | ".join(MODE_TITLES[m] for m in MODE_KINDS) + " |"
    lines = [header, "|---" * (len(MODE_KINDS) + 1) + "|"]
    for row in rows:
        lines.append(f"| {row['k']} | " + " | ".join(f"{row[m]:.4f}" for m in MODE_KINDS) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="soraplan-dit")
    commands = parser.add_subparsers(dest="command", required=True)
    distance = commands.add_parser(
        "attention-distance", help="average attention distance of each attention mode")
    distance.add_argument("--shape", type=int, nargs=3, metavar=("T", "H", "W"),
                          default=[24, 32, 32], help="latent token grid after patchifying")
    distance.add_argument("--k", type=int, nargs="+", default=[2, 4, 6, 8], help="sparse ratios")
    distance.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    if args.command == "attention-distance":
        rows = distance_table(tuple(args.shape), args.k)
        if args.json:
            print(json.dumps({"shape": args.shape, "rows": rows}, indent=2))
        else:
            t, h, w = args.shape
            print(f"average attention distance on {t}x{h}x{w} = {t * h * w} tokens")
            print(format_table(rows))


if __name__ == "__main__":
    main()
