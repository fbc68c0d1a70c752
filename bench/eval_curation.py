"""Curation quality on ../shared/devset: cuts, subtitle rejection, static clips. Prints JSON.

    uv run python bench/eval_curation.py [--out DIR] [KEY=VALUE overrides]

Runs the curation job (local Ray) on every devset video with score_all=true, so every segment
gets every score, then compares with labels.json:
- cuts: a detected cut matches a labelled hard cut within 2 frames; detections inside a labelled
  gradual transition (fade, dissolve) are not counted either way. Per detector and combined,
  against labels.json as shipped; the combined figures also against those labels plus the
  reviewed additions of bench/devset_cut_review.json (hard cuts, with the frames that show them,
  in clips whose labels say they were not exhaustively checked).
- subtitles: a clip counts as rejected for subtitles if any segment is; positives are clips with
  `subtitle` or `caption_overlay` text, and clips with only watermarks or scene text must pass.
- static: in labelled static clips, every segment long enough to keep must be rejected as static.
- camera motion: the label of synthetic pans, tilts, zooms, shake, still and locked-off views
  (`soraplan.curation.testing`, 2 seeds x 2 speeds each), analysed in-process.
It also prints the motion scores of every clip, from which the flow and LPIPS bounds were calibrated.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from functools import lru_cache
from collections import defaultdict
from pathlib import Path

import numpy as np

from _devset import devset_dir, labels
from soraplan.core.config import load_config
from soraplan.curation.pipeline import CurateConfig, run
from soraplan.core.schema import read_clip_table
from soraplan.core.inputs import InputClip
from soraplan.core.video import iter_frames, write_video
from soraplan.curation.analyze import ClipAnalyzer
from soraplan.curation.testing import CAMERA_KINDS, EXPECTED_LABEL, camera_clip

REPO = Path(__file__).resolve().parents[1]
MATCH_FRAMES = 2


@lru_cache(maxsize=None)
def frame_times(path: Path) -> np.ndarray:
    return np.asarray([f.time_s for f in iter_frames(path, size=(32, 18))])


def reviewed_cut_labels() -> list[dict]:
    """labels.json's cut labels plus the reviewed additions of bench/devset_cut_review.json, which
    may only add to clips whose labels say they were not exhaustively checked."""
    additions = {a["file"]: a["add"] for a in json.loads((REPO / "bench/devset_cut_review.json").read_text())["cuts"]}
    items = []
    for item in labels()["cuts"]:
        extra = additions.pop(item["file"], [])
        if extra and "only strongest candidates checked" not in item.get("verified", ""):
            sys.exit(f"devset_cut_review.json adds cuts to {item['file']}, whose labels are complete")
        items.append({**item, "cuts": sorted(item["cuts"] + extra)})
    if additions:
        sys.exit(f"devset_cut_review.json names clips without cut labels: {sorted(additions)}")
    return items


def cut_scores(rows_by_file: dict[str, list[dict]], videos: Path, column: str = "cut_times_s",
               items: list[dict] | None = None) -> dict:
    """P/R/F1 of the cuts in `column`: `cut_times_s` (combined), `scene_cut_times_s` (the scene
    detector alone) or `jump_cut_times_s` (confirmed jump cuts alone, before merging), against
    `items` (default: labels.json's cut labels)."""
    tp = fp = fn = 0
    per_file = {}
    for item in items or labels()["cuts"]:
        rows = rows_by_file.get(item["file"])
        if not rows:
            continue
        times = frame_times(videos / item["file"])
        detected = [int(np.searchsorted(times, t - 1e-6)) for t in rows[0][column] or []]
        gradual = [g["frames"] for g in item.get("gradual", [])]
        detected = [d for d in detected if not any(a - MATCH_FRAMES <= d <= b + MATCH_FRAMES for a, b in gradual)]
        unmatched = list(item["cuts"])
        hits = 0
        for d in detected:
            near = [c for c in unmatched if abs(c - d) <= MATCH_FRAMES]
            if near:
                unmatched.remove(near[0])
                hits += 1
        tp += hits
        fp += len(detected) - hits
        fn += len(unmatched)
        per_file[item["file"]] = {"labelled": item["cuts"], "detected": detected, "missed": unmatched}
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn, "files": per_file}


def subtitle_scores(rows_by_file: dict[str, list[dict]]) -> dict:
    text = {t["file"]: {i["kind"] for i in t["items"]} for t in labels()["text"]}
    positives = {f for f, kinds in text.items() if kinds & {"subtitle", "caption_overlay"}}
    must_pass = {f for f, kinds in text.items() if not kinds & {"subtitle", "caption_overlay"}}
    flagged = {f for f, rows in rows_by_file.items() if any(r["subtitles"] for r in rows)}
    tp = len(flagged & positives)
    return {
        "precision": tp / len(flagged) if flagged else 1.0,
        "recall": tp / len(positives) if positives else 1.0,
        "positives": sorted(positives),
        "flagged": sorted(flagged),
        "missed": sorted(positives - flagged),
        "watermark_or_scene_text_rejected": sorted(flagged & must_pass),
        # Flagged clips without a subtitle or caption-overlay label (unlabelled ones included).
        "false_rejects": sorted(flagged - positives),
        "evidence": {f: next(r["subtitle_evidence"] for r in rows_by_file[f] if r["subtitles"]) for f in sorted(flagged)},
        "slides_found": sorted(f for f, rows in rows_by_file.items() if any(r["slides"] for r in rows)),
    }


def static_scores(rows_by_file: dict[str, list[dict]]) -> dict:
    static = {s["file"] for s in labels()["static"]}

    def all_static(rows: list[dict]) -> bool:
        # Segments too short to keep are out either way; the motion filter must reject the rest.
        scored = [r for r in rows if r["motion_score"] is not None and "too_short" not in r["reject_reasons"]]
        return bool(scored) and all("static" in r["reject_reasons"] for r in scored)

    found = {f for f in static if f in rows_by_file and all_static(rows_by_file[f])}
    others_static = sorted(f for f, rows in rows_by_file.items() if f not in static and all_static(rows))
    return {"recall": len(found) / len(static), "labelled": sorted(static), "missed": sorted(static - found),
            "unlabelled_clips_rejected_static": others_static}


def camera_scores(cfg: CurateConfig, folder: Path) -> dict:
    """Accuracy of the camera-motion label on synthetic camera work, with the job's config."""
    analyzer = ClipAnalyzer(replace(cfg.analyze, ocr=replace(cfg.analyze.ocr, enabled=False), score_all=True))
    confusions, right, total = defaultdict(int), 0, 0
    for kind in CAMERA_KINDS:
        for seed in (1, 2):
            for speed in (1.0, 3.0):
                path = write_video(folder / f"{kind}_{seed}_{speed}.mp4", camera_clip(kind, speed=speed, seed=seed), 24)
                (row,) = analyzer.analyze(InputClip(source_id=path.name, path=str(path)))
                expected = EXPECTED_LABEL.get(kind, kind)
                right += row["camera_motion"] == expected
                total += 1
                if row["camera_motion"] != expected:
                    confusions[f"{kind} {speed} px/frame -> {row['camera_motion']}"] += 1
    return {"accuracy": right / total, "clips": total, "errors": dict(confusions)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="output folder (default: a temporary one)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    videos = devset_dir() / "videos"
    out = Path(args.out or tempfile.mkdtemp(prefix="eval_curation_"))
    cfg = load_config(CurateConfig, REPO / "pipelines/configs/curate.yaml",
                      [f"input={videos}", f"out={out}", "analyze.score_all=true", *args.overrides])
    summary = run(cfg)
    rows_by_file: dict[str, list[dict]] = defaultdict(list)
    for row in read_clip_table(out).to_pylist():
        rows_by_file[str(Path(row["path"]).relative_to(videos))].append(row)
    for rows in rows_by_file.values():
        rows.sort(key=lambda r: r["start_s"] or 0.0)
    motion = {f: [round(r["motion_score"], 5) for r in rows if r["motion_score"] is not None]
              for f, rows in sorted(rows_by_file.items())}
    result = {
        "motion_backend": cfg.analyze.motion.backend,
        "motion_bounds": list(cfg.analyze.motion.bounds()),
        "cuts": cut_scores(rows_by_file, videos),
        "cuts_scene_detector_alone": cut_scores(rows_by_file, videos, "scene_cut_times_s"),
        "cuts_jump_cuts_alone": cut_scores(rows_by_file, videos, "jump_cut_times_s"),
        # With the hard cuts that review found in clips whose labels were not exhaustive.
        "cuts_with_reviewed_labels": {k: v for k, v in cut_scores(
            rows_by_file, videos, items=reviewed_cut_labels()).items() if k != "files"},
        "subtitles": subtitle_scores(rows_by_file),
        "static": static_scores(rows_by_file),
        "camera_motion_synthetic": camera_scores(cfg, Path(tempfile.mkdtemp(prefix="eval_camera_"))),
        "errors": summary["errors"],
        "motion_scores_by_clip": motion,
        "out": str(out),
    }
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
