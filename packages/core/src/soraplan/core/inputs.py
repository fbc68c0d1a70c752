"""Input clips: a Panda-70M metadata CSV plus a video root, or a directory tree of videos.

The one place that decides what counts as a video file and how a clip is named: curation,
captioning and VAE training all read folders through `read_video_dir` / `find_media`.
Reading inputs never fails a job: a row that cannot be understood becomes an input clip
carrying an `error`, which the job turns into an error row.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".flv", ".ts", ".mpg", ".mpeg"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
_TIMESTAMP = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)\s*$")


@dataclass(frozen=True)
class InputClip:
    """One unit of work: a span of a video file (end_s None means to the end)."""

    source_id: str
    path: str
    start_s: float = 0.0
    end_s: float | None = None
    caption: str | None = None
    matching_score: float | None = None
    error: str | None = None  # set when the input row itself is unusable

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


def parse_timestamp(text: str) -> float:
    """'0:01:02.500' -> 62.5 seconds."""
    match = _TIMESTAMP.match(text)
    if not match:
        raise ValueError(f"bad timestamp {text!r}, expected H:MM:SS.fff")
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def span_id(video_id: str, start_s: float, end_s: float | None) -> str:
    """Stable id of a span: same video and span, same id, across runs and machines."""
    end = "end" if end_s is None else f"{end_s:.3f}"
    return f"{video_id}:{start_s:.3f}-{end}"


def _safe_join(root: Path, relative: str) -> Path:
    """root/relative, refusing absolute paths and '..' that would escape the root."""
    candidate = (root / relative).resolve()
    if Path(relative).is_absolute() or not candidate.is_relative_to(root.resolve()):
        raise ValueError(f"path {relative!r} escapes the video root {root}")
    return candidate


def find_video(video_root: Path, video_id: str) -> Path:
    """<root>/<id>.mp4, else the video2dataset layout <root>/<shard>/<id>.mp4 (or other suffix)."""
    direct = _safe_join(video_root, f"{video_id}.mp4")
    if direct.exists():
        return direct
    for suffix in sorted(VIDEO_SUFFIXES):
        for candidate in (f"{video_id}{suffix}", f"*/{video_id}{suffix}"):
            hits = sorted(video_root.glob(candidate)) if "/" not in video_id else []
            if hits:
                return _safe_join(video_root, str(hits[0].relative_to(video_root)))
    return direct  # missing: the decoder reports "file not found" on this path


def read_panda70m_csv(csv_path: str | Path, video_root: str | Path) -> Iterator[InputClip]:
    """One input clip per (video, timestamp span) of a Panda-70M metadata CSV.

    The list columns are Python literals, parsed with ast.literal_eval (never eval).
    """
    root = Path(video_root)
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        for line_no, row in enumerate(reader, start=2):
            video_id = (row.get("videoID") or "").strip()
            where = f"{csv_path}:{line_no}"
            if not video_id:
                yield InputClip(source_id=f"row{line_no}", path="", error=f"{where}: empty videoID")
                continue
            try:
                path = find_video(root, video_id)
            except ValueError as exc:
                yield InputClip(f"{video_id}:row{line_no}", "", error=f"{where}: {exc}")
                continue
            try:
                spans = _literal_list(row.get("timestamp"), "timestamp")
                captions = _literal_list(row.get("caption"), "caption")
                scores = _literal_list(row.get("matching_score"), "matching_score")
                if not (len(spans) == len(captions) == len(scores)):
                    raise ValueError(
                        f"timestamp/caption/matching_score have {len(spans)}/{len(captions)}/"
                        f"{len(scores)} items"
                    )
            except (ValueError, SyntaxError) as exc:
                yield InputClip(f"{video_id}:row{line_no}", str(path), error=f"{where}: malformed row: {exc}")
                continue
            for span, caption, score in zip(spans, captions, scores):
                try:
                    start, end = (parse_timestamp(t) for t in span)
                    if end <= start:
                        raise ValueError(f"span {span} ends before it starts")
                except (ValueError, TypeError) as exc:
                    yield InputClip(f"{video_id}:{span!r}", str(path), error=f"{where}: malformed span: {exc}")
                    continue
                yield InputClip(
                    source_id=span_id(video_id, start, end),
                    path=str(path),
                    start_s=start,
                    end_s=end,
                    caption=str(caption),
                    matching_score=float(score),
                )


def _literal_list(text: str | None, column: str) -> list[Any]:
    if text is None or not text.strip():
        raise ValueError(f"column {column!r} is empty")
    value = ast.literal_eval(text)
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"column {column!r} is not a list")
    return list(value)


def find_media(directory: str | Path, suffixes: frozenset[str] = VIDEO_SUFFIXES) -> list[Path]:
    """Files under `directory` (recursively) whose suffix is one of `suffixes`, sorted."""
    root = Path(directory)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file())


def folder_video_id(root: str | Path, path: str | Path) -> str:
    """The video id of a file found under `root`: its stem plus a hash of its relative path, so
    ids stay unique when stems repeat in subfolders and stable across machines."""
    rel = Path(path).relative_to(root).as_posix()
    return f"{Path(rel).stem}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}"


def read_video_dir(directory: str | Path) -> Iterator[InputClip]:
    """Each video file under `directory` (recursively) is one whole-file input clip."""
    root = Path(directory)
    for path in find_media(root):
        yield InputClip(source_id=span_id(folder_video_id(root, path), 0.0, None), path=str(path))


def read_inputs(source: str | Path, video_root: str | Path | None = None) -> list[InputClip]:
    """Input clips from a manifest CSV (videos under `video_root`, default: the CSV's folder)
    or from a directory of videos."""
    source = Path(source)
    if source.is_dir():
        return list(read_video_dir(source))
    if source.suffix.lower() == ".csv":
        return list(read_panda70m_csv(source, video_root or source.parent))
    raise ValueError(f"input {source} is neither a directory of videos nor a .csv manifest")
