"""Input clips: a Panda-70M metadata CSV plus a video root, or a directory tree of videos.

The one place that decides what counts as a video file and how a clip is named: curation,
captioning and VAE training all read folders through `read_video_dir` / `find_media`.
Reading inputs never fails a job: a row or a path that cannot be used becomes an input clip
carrying an `error` (naming the file, the physical line and the column), which the job turns
into an error row. Parsing is bounded: fields over `MAX_FIELD_CHARS` and literals nested deeper
than `MAX_LITERAL_DEPTH` are errors, never a crash.

Containment: a video must lie inside its root (the video root of a manifest, the input folder
of a directory run) after symlinks are resolved, unless `allow_outside_root` is set.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from soraplan.core.config import ConfigError

VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".flv", ".ts", ".mpg", ".mpeg"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
MANIFEST_COLUMNS = ("videoID", "timestamp", "caption", "matching_score")
MAX_FIELD_CHARS = 1 << 20  # Panda-70M's longest fields are a few KB
MAX_LITERAL_DEPTH = 4  # timestamp lists nest 2 deep
_CSV_READ_LIMIT = 64 << 20  # what the csv module reads at all; longer fields are error rows too
_TIMESTAMP = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)\s*$")
_OUTSIDE_HINT = "to use it on purpose, set allow_outside_root=true"


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


def _seconds(value: float) -> str:
    """Milliseconds, as Panda-70M writes them, unless that would merge distinct spans."""
    text = f"{value:.3f}"
    return text if float(text) == value else f"{value:.6f}"


def span_id(video_id: str, start_s: float, end_s: float | None) -> str:
    """Stable id of a span: same video and span, same id, across runs and machines."""
    end = "end" if end_s is None else _seconds(end_s)
    return f"{video_id}:{_seconds(start_s)}-{end}"


def _contained(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def media_problem(path: Path, root: Path, allow_outside_root: bool = False) -> str | None:
    """Why `path` cannot be read as a media file of `root`, or None. Never opens the file, so
    a FIFO or a device cannot block the caller."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "file not found" if not path.is_symlink() else "broken symlink"
    except OSError as exc:
        return f"cannot stat: {exc.strerror or exc}"
    if not allow_outside_root and not _contained(path, root):
        return f"resolves outside {root} (to {path.resolve()}); {_OUTSIDE_HINT}"
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        return "is a directory, not a video file"
    if stat.S_ISFIFO(mode):
        return "is a FIFO (named pipe), not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a regular file"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    if not os.access(path, os.R_OK):
        return "is not readable (permission denied)"
    return None


def scan_media_paths(directory: str | Path, suffixes: frozenset[str] = VIDEO_SUFFIXES) -> list[Path]:
    """Every path under `directory` whose name has one of `suffixes` (files, and also directories,
    links and special files named like media), sorted. Symlinked folders are not descended."""
    root = Path(directory)
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        found += [Path(dirpath, n) for n in (*dirnames, *filenames) if Path(n).suffix.lower() in suffixes]
    return sorted(found)


def find_media(directory: str | Path, suffixes: frozenset[str] = VIDEO_SUFFIXES) -> list[Path]:
    """The readable regular files under `directory` with one of `suffixes`, inside it, sorted."""
    root = Path(directory)
    return [p for p in scan_media_paths(root, suffixes) if media_problem(p, root) is None]


def folder_video_id(root: str | Path, path: str | Path) -> str:
    """The video id of a file found under `root`: its stem plus a hash of its relative path, so
    ids stay unique when stems repeat in subfolders and stable across machines."""
    rel = Path(path).relative_to(root).as_posix()
    return f"{Path(rel).stem}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}"


def read_video_dir(directory: str | Path, allow_outside_root: bool = False) -> Iterator[InputClip]:
    """Each path under `directory` that looks like a video is one whole-file input clip; one that
    is not a readable regular file inside the folder carries the reason as its error."""
    root = Path(directory)
    for path in scan_media_paths(root):
        problem = media_problem(path, root, allow_outside_root)
        yield InputClip(source_id=span_id(folder_video_id(root, path), 0.0, None), path=str(path),
                        error=f"{path}: {problem}" if problem else None)


class VideoRoot:
    """Finds `<root>/<id>.<ext>` or the video2dataset layout `<root>/<shard>/<id>.<ext>` by exact
    name (never by glob: ids may hold `*`, `?` or `[`). The shard folders are listed once, when
    the first id is not found directly, and kept for the life of the object."""

    def __init__(self, root: str | Path, allow_outside_root: bool = False) -> None:
        self.root = Path(root)
        self.allow_outside_root = allow_outside_root
        self._in_shards: dict[str, Path] | None = None

    def _shard_files(self) -> dict[str, Path]:
        if self._in_shards is None:
            self._in_shards = {}
            with os.scandir(self.root) as entries:
                shards = sorted(e.path for e in entries if e.is_dir(follow_symlinks=False))
            for shard in shards:
                with os.scandir(shard) as entries:
                    for entry in entries:
                        self._in_shards.setdefault(entry.name, Path(entry.path))
        return self._in_shards

    def find(self, video_id: str) -> Path:
        """The video's path; a missing video gives `<root>/<id>.mp4`, which the decoder reports."""
        if "\0" in video_id or Path(video_id).is_absolute() or ".." in Path(video_id).parts:
            raise ValueError(f"videoID {video_id!r} escapes the video root {self.root}")
        names = [f"{video_id}.mp4", *(f"{video_id}{s}" for s in sorted(VIDEO_SUFFIXES - {".mp4"}))]
        path = next((self.root / n for n in names if (self.root / n).exists()), None)
        if path is None and "/" not in video_id and self.root.is_dir():
            path = next((self._shard_files()[n] for n in names if n in self._shard_files()), None)
        path = path or self.root / names[0]
        if path.exists() and not self.allow_outside_root and not _contained(path, self.root):
            raise ValueError(f"videoID {video_id!r} resolves outside the video root {self.root}; {_OUTSIDE_HINT}")
        return path


def _nesting_depth(text: str) -> int:
    """The deepest bracket nesting of a literal, outside its strings."""
    depth = deepest = 0
    quote = None
    escaped = False
    for ch in text:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth -= 1
    return deepest


def _literal_list(text: str | None, column: str) -> list[Any]:
    """A Python list literal from a manifest column (ast.literal_eval, never eval), bounded."""
    if text is None or not text.strip():
        raise ValueError(f"column {column!r} is empty")
    if len(text) > MAX_FIELD_CHARS:
        raise ValueError(f"column {column!r} has {len(text)} characters, over the limit of {MAX_FIELD_CHARS}")
    depth = _nesting_depth(text)
    if depth > MAX_LITERAL_DEPTH:
        raise ValueError(f"column {column!r} nests {depth} levels deep, over the limit of {MAX_LITERAL_DEPTH}")
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError(f"column {column!r} is not a Python list literal: {_excerpt(text)}") from None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"column {column!r} is a {type(value).__name__}, not a list: {_excerpt(text)}")
    return list(value)


def _excerpt(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _span(value: Any, i: int) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(isinstance(t, str) for t in value):
        raise ValueError(f"column 'timestamp' item {i} is not a pair of 'H:MM:SS.fff' strings")
    start, end = (parse_timestamp(t) for t in value)
    if end <= start:
        raise ValueError(f"column 'timestamp' item {i}: span {value[0]}-{value[1]} ends before it starts")
    return start, end


def _score(value: Any, i: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"column 'matching_score' item {i} is not a number: {_excerpt(repr(value))}")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"column 'matching_score' item {i} is not a number: {_excerpt(value)}") from None


def _rows(fh: Any, csv_path: Path) -> Iterator[tuple[int, dict[str, str] | None, str | None]]:
    """(first physical line, row or None, csv error or None) for every record of the file."""
    reader = csv.reader(fh)
    header = next(reader, None)
    missing = [c for c in MANIFEST_COLUMNS if c not in (header or [])]
    if missing:
        raise ConfigError(f"{csv_path} is not a Panda-70M manifest: no column(s) {missing} in its header "
                          f"{header}")
    while True:
        line = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield line, None, str(exc)
            continue
        if values:
            yield line, dict(zip(header, values)), None


def read_panda70m_csv(csv_path: str | Path, video_root: str | Path,
                      allow_outside_root: bool = False) -> Iterator[InputClip]:
    """One input clip per (video, timestamp span) of a Panda-70M metadata CSV."""
    csv_path = Path(csv_path)
    root = VideoRoot(video_root, allow_outside_root)
    limit = csv.field_size_limit()
    csv.field_size_limit(_CSV_READ_LIMIT)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig", errors="replace") as fh:
            yield from _manifest_clips(_rows(fh, csv_path), csv_path, root)
    finally:
        csv.field_size_limit(limit)


def _manifest_clips(rows: Iterator[tuple[int, dict[str, str] | None, str | None]], csv_path: Path,
                    root: VideoRoot) -> Iterator[InputClip]:
    for line, row, csv_error in rows:
        where = f"{csv_path}:{line}"
        if row is None:
            yield InputClip(f"line{line}", "", error=f"{where}: unreadable CSV record: {csv_error}")
            continue
        video_id = (row.get("videoID") or "").strip()
        if not video_id:
            yield InputClip(f"line{line}", "", error=f"{where}: column 'videoID' is empty")
            continue
        if len(video_id) > 1024:
            yield InputClip(f"line{line}", "", error=f"{where}: column 'videoID' is over 1024 characters")
            continue
        row_id = f"{video_id}:line{line}"
        try:
            path = root.find(video_id)
        except (ValueError, OSError) as exc:
            yield InputClip(row_id, "", error=f"{where}: {exc}")
            continue
        try:
            spans = _literal_list(row.get("timestamp"), "timestamp")
            captions = _literal_list(row.get("caption"), "caption")
            scores = _literal_list(row.get("matching_score"), "matching_score")
            if not spans:
                raise ValueError("column 'timestamp' is an empty list: the row has no clips")
            if not (len(spans) == len(captions) == len(scores)):
                raise ValueError(f"columns timestamp/caption/matching_score have {len(spans)}/{len(captions)}/"
                                 f"{len(scores)} items")
        except ValueError as exc:
            yield InputClip(row_id, str(path), error=f"{where}: malformed row: {exc}")
            continue
        for i, (span, caption, score) in enumerate(zip(spans, captions, scores)):
            try:
                start, end = _span(span, i)
                if not isinstance(caption, str):
                    raise ValueError(f"column 'caption' item {i} is not a string: {_excerpt(repr(caption))}")
                clip = InputClip(span_id(video_id, start, end), str(path), start, end, caption, _score(score, i))
            except ValueError as exc:
                yield InputClip(f"{row_id}:span{i}", str(path), error=f"{where}: malformed span: {exc}")
                continue
            yield clip


def read_inputs(source: str | Path, video_root: str | Path | None = None,
                allow_outside_root: bool = False) -> list[InputClip]:
    """Input clips from a manifest CSV (videos under `video_root`, default: the CSV's folder)
    or from a directory of videos."""
    source = Path(source)
    if source.is_dir():
        return list(read_video_dir(source, allow_outside_root))
    if source.suffix.lower() == ".csv":
        return list(read_panda70m_csv(source, video_root or source.parent, allow_outside_root))
    raise ValueError(f"input {source} is neither a directory of videos nor a .csv manifest")
