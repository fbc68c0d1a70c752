"""Kept clips as the trainers' own annotation files, in the form their loaders read.

- `osp`: Open-Sora-Plan v1.3's JSON list (`path, cap, resolution, num_frames, fps, cut, crop`,
  ...) and the `sub_root,anno.json` list file its `--data` flag takes. Its loader reads the span
  `cut` of the source with the `crop` box applied, so `resolution` is the crop's size. It raises
  for any path not ending in `.mp4` or `.jpg`, and reads stored frames without turning them, so
  clips of other containers or of rotated videos are cut to mp4 files under `--cut-to` (or
  skipped and reported without it).
- `opensora`: Open-Sora's CSV. Its loader reads every frame of `path` and samples a window
  anywhere in it, so each kept span is cut to a file of its own under `--cut-to` (required) and
  the row describes that file.
- `opensora-scenes`: one row per source video, `path,timestamp`, the kept spans in the form
  Open-Sora's `tools/scene_cut/cut.py` reads, for users who cut with their tools.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Literal

from soraplan.core.config import ConfigError
from soraplan.core.schema import STATUS_KEPT, read_clip_table
from soraplan.core.video import VideoDecodeError, probe
from soraplan.curation.cutting import CutFile, cut_span, frame_times

log = logging.getLogger(__name__)

Format = Literal["osp", "opensora", "opensora-scenes"]
OPENSORA_COLUMNS = ["path", "text", "num_frames", "width", "height", "aspect_ratio", "fps", "aes", "flow",
                    "clip_id", "source_path", "start_s", "end_s"]
SCENE_COLUMNS = ["path", "timestamp", "clip_ids"]
# Best caption first: refined by the captioner, then its VLM caption, then the manifest's.
CAPTION_COLUMNS = ("refined_caption", "vlm_caption", "caption")
OSP_SUFFIXES = (".mp4", ".jpg")  # Open-Sora-Plan v1.3 raises NameError for any other ending
SKIPPED_SHOWN = 20  # skipped clips listed by name in the result; all are counted


def best_caption(row: dict[str, Any]) -> str:
    return next((row[c] for c in CAPTION_COLUMNS if row.get(c)), "")


def cut_name(row: dict[str, Any]) -> str:
    """File name of a kept span: readable, and unique per clip id and crop box."""
    key = hashlib.sha1(json.dumps([row["clip_id"], row["crop"]]).encode()).hexdigest()[:10]
    return f"{Path(row['path']).stem}_{row['start_s']:.3f}-{row['end_s']:.3f}_{key}.mp4"


def cut_row(row: dict[str, Any], cut_to: Path, crop: list[int] | None = None) -> CutFile:
    return cut_span(row["path"], row["start_s"], row["end_s"], row["num_frames"], cut_to / cut_name(row), crop)


def osp_record(row: dict[str, Any], cut: CutFile | None = None) -> dict[str, Any]:
    """One clip as Open-Sora-Plan reads it; `cut` is the clip's own file when it was cut."""
    path, fps, width, height = row["path"], row["fps"], row["width"], row["height"]
    start, crop = round(row["start_s"] * fps), row["crop"]
    if cut is not None:
        path, fps, width, height, start = cut.path, cut.fps, cut.width, cut.height, 0
        if crop is not None:  # the cut file holds the display frame: the box stays where it was
            crop = [min(crop[0], width), min(crop[1], width), min(crop[2], height), min(crop[3], height)]
    record = {"path": path, "cap": best_caption(row), "resolution": {"height": height, "width": width},
              "num_frames": row["num_frames"], "fps": fps, "cut": [start, start + row["num_frames"]],
              "motion": row["motion_score"]}
    if crop is not None:  # their loader slices [y0:y1, x0:x1]: the frames it sees have the crop's size
        record["crop"] = crop
        record["resolution"] = {"height": crop[3] - crop[2], "width": crop[1] - crop[0]}
    if row["aesthetic_score"] is not None:  # a null would reach their caption notice as None
        record["aesthetic"] = row["aesthetic_score"]
    return record


def opensora_record(row: dict[str, Any], cut: CutFile) -> dict[str, Any]:
    return {
        "path": cut.path, "text": best_caption(row), "num_frames": cut.num_frames, "width": cut.width,
        "height": cut.height, "aspect_ratio": cut.height / cut.width, "fps": cut.fps,
        "aes": row["aesthetic_score"], "flow": row["motion_score"], "clip_id": row["clip_id"],
        "source_path": row["path"], "start_s": row["start_s"], "end_s": row["end_s"],
    }


def timecode(seconds: float) -> str:
    """HH:MM:SS.mmm, the form Open-Sora's scene tools write and parse (FrameTimecode at 1000 fps)."""
    ms = max(0, round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def scene_bounds(times: list[float], start_s: float, end_s: float) -> tuple[float, float]:
    """Times that take exactly the frames in [start_s, end_s) when a cutter keeps the frames
    with start <= t < end: half-way between the span's first / last frame and its neighbours."""
    inside = [i for i, t in enumerate(times) if start_s - 1e-6 <= t < end_s - 1e-6]
    if not inside:
        raise VideoDecodeError(f"no frame between {start_s:.3f} and {end_s:.3f} s")
    first, last = inside[0], inside[-1]
    period = (times[-1] - times[0]) / max(1, len(times) - 1) or 1 / 25
    start = 0.0 if first == 0 else (times[first - 1] + times[first]) / 2
    end = (times[last] + (times[last + 1] if last + 1 < len(times) else times[last] + period)) / 2
    return start, end


class Skipped:
    """Clips left out of an export, counted by reason; the first few named."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.shown: list[dict[str, str]] = []

    def add(self, row: dict[str, Any], reason: str, detail: str) -> None:
        self.counts[reason] += 1
        if len(self.shown) < SKIPPED_SHOWN:
            self.shown.append({"clip_id": row["clip_id"], "reason": reason, "detail": detail})
        log.warning("skipped %s (%s): %s", row["clip_id"], reason, detail)

    def result(self) -> dict[str, Any]:
        return {"skipped": sum(self.counts.values()), "skipped_by_reason": dict(self.counts),
                "skipped_clips": self.shown}


def _source_problem(path: str, probed: dict[str, Any]) -> tuple[int, str | None]:
    """(display rotation, why the source cannot be read or None), probing each file once."""
    if path not in probed:
        try:
            probed[path] = (probe(path).rotation, None)
        except VideoDecodeError as exc:
            probed[path] = (0, str(exc))
    return probed[path]


def _no_comma(path: Path, what: str) -> None:
    if "," in str(path):
        raise ConfigError(f"{what} {path} has a comma, which Open-Sora-Plan's list file cannot hold")


def export_osp(rows: list[dict[str, Any]], to: Path, cut_to: Path | None) -> dict[str, Any]:
    skipped, probed, records, cuts = Skipped(), {}, [], Counter()
    for row in rows:
        rotation, problem = _source_problem(row["path"], probed)
        if problem:
            skipped.add(row, "unreadable", problem)
            continue
        needs_file = not row["path"].endswith(OSP_SUFFIXES) or rotation != 0
        if needs_file and cut_to is None:
            why = f"rotated {rotation} degrees" if rotation else "not .mp4 or .jpg"
            skipped.add(row, "needs_cut_to", f"{row['path']}: {why}; give --cut-to DIR to convert it")
            continue
        cut = None
        if needs_file:
            try:
                cut = cut_row(row, cut_to)
            except VideoDecodeError as exc:
                skipped.add(row, "cut_failed", str(exc))
                continue
            cuts[cut.method] += 1
        records.append(osp_record(row, cut))
    # Paths relative to the folder every file shares: the list file's sub_root.
    absolute = [os.path.abspath(r["path"]) for r in records]
    sub_root = Path(os.path.commonpath([os.path.dirname(p) for p in absolute])) if absolute else Path.cwd()
    for record, path in zip(records, absolute):
        record["path"] = os.path.relpath(path, sub_root)
    data = to.with_suffix(".txt")
    _no_comma(sub_root, "the clips' common folder")
    _no_comma(to.resolve(), "the annotation file")
    to.write_text(json.dumps(records, indent=1))
    data.write_text(f"{sub_root},{to.resolve()}\n")
    return {"exported": len(records), "to": str(to), "data": str(data), "cut": dict(cuts), **skipped.result()}


def export_opensora(rows: list[dict[str, Any]], to: Path, cut_to: Path | None) -> dict[str, Any]:
    if cut_to is None:
        raise ConfigError("Open-Sora trains on every frame of `path`: give --cut-to DIR to write each kept span "
                          "as its own file (or --format opensora-scenes to cut with Open-Sora's tools/scene_cut)")
    skipped, records, cuts = Skipped(), [], Counter()
    for row in rows:
        try:
            cut = cut_row(row, cut_to, row["crop"])
        except VideoDecodeError as exc:
            skipped.add(row, "cut_failed", str(exc))
            continue
        cuts[cut.method] += 1
        records.append(opensora_record(row, cut))
    # Unscored aesthetics: no column at all, so their `datautil --aesmin` stops with a clear
    # assertion instead of silently dropping every row as NaN.
    columns = [c for c in OPENSORA_COLUMNS if c != "aes" or any(r["aes"] is not None for r in records)]
    with open(to, "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    return {"exported": len(records), "to": str(to), "cut": dict(cuts), **skipped.result()}


def export_scenes(rows: list[dict[str, Any]], to: Path) -> dict[str, Any]:
    skipped, by_source = Skipped(), defaultdict(list)
    for row in rows:
        by_source[row["path"]].append(row)
    scenes = []
    for path, spans in by_source.items():
        spans.sort(key=lambda r: r["start_s"])
        try:
            probe(path)  # a missing or unreadable file: one clear message
            times = frame_times(path)
            bounds = [scene_bounds(times, r["start_s"], r["end_s"]) for r in spans]
        except VideoDecodeError as exc:
            for row in spans:
                skipped.add(row, "unreadable", str(exc))
            continue
        scenes.append({"path": os.path.abspath(path),
                       "timestamp": repr([(timecode(a), timecode(b)) for a, b in bounds]),
                       "clip_ids": json.dumps([r["clip_id"] for r in spans])})
    with open(to, "w", newline="") as fh:
        writer = csv.DictWriter(fh, SCENE_COLUMNS)
        writer.writeheader()
        writer.writerows(scenes)
    return {"exported": len(rows) - sum(skipped.counts.values()), "sources": len(scenes), "to": str(to),
            **skipped.result()}


def export_kept(out: str | os.PathLike[str], fmt: Format, to: str | os.PathLike[str],
                cut_to: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Write the kept clips of the shards under `out` to `to`; returns counts (exported, skipped
    by reason, spans cut by method). A clip that cannot be exported is skipped and reported."""
    to = Path(to)
    suffix = {"osp": ".json", "opensora": ".csv", "opensora-scenes": ".csv"}.get(fmt)
    if suffix is None:
        raise ConfigError(f"unknown export format {fmt!r}: osp, opensora or opensora-scenes")
    if to.suffix != suffix:  # both trainers pick their reader by the file name's ending
        raise ConfigError(f"--to {to}: the {fmt} export must end in {suffix}")
    rows = sorted(read_clip_table(out, status=STATUS_KEPT).to_pylist(), key=lambda r: r["clip_id"])
    to.parent.mkdir(parents=True, exist_ok=True)
    cut_dir = Path(cut_to).resolve() if cut_to is not None else None
    if fmt == "osp":
        return export_osp(rows, to, cut_dir)
    if fmt == "opensora":
        return export_opensora(rows, to, cut_dir)
    return export_scenes(rows, to)
