"""Input clips: Panda-70M metadata CSVs plus a video root, or a directory tree of videos.

The one place that decides what counts as a video file and how a clip is named: curation,
captioning and VAE training all read folders through `read_video_dir` / `find_media`.
Reading inputs never fails a job: a row or a path that cannot be used becomes an input clip
carrying an `error` (naming the file, the physical line and the column), which the job turns
into an error row; its `error_kind` names the class of problem, for counts. Parsing is bounded: fields over `MAX_FIELD_CHARS` and literals nested deeper
than `MAX_LITERAL_DEPTH` are errors, never a crash.

Containment: a video must lie inside its root (the video root of a manifest, the input folder
of a directory run) after symlinks are resolved, unless `allow_outside_root` is set.
"""

from __future__ import annotations

import ast
import csv
import glob
import hashlib
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from soraplan.core.config import ConfigError

VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".flv", ".ts", ".mpg", ".mpeg"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
MANIFEST_COLUMNS = ("videoID", "timestamp", "caption", "matching_score")
MAX_FIELD_CHARS = 1 << 20  # Panda-70M's longest fields are a few KB
MAX_LITERAL_DEPTH = 4  # timestamp lists nest 2 deep
_CSV_READ_LIMIT = 64 << 20  # what the csv module reads at all; longer fields are error rows too
_TIMESTAMP = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)\s*$")
_OUTSIDE_HINT = "to use it on purpose, set allow_outside_root=true"
# What `InputClip.error_kind` can be: manifest rows, then paths found in a directory run.
ERROR_KINDS = ("unreadable_record", "bad_video_id", "outside_root", "malformed_row", "malformed_span",
               "missing", "not_a_file", "unreadable_file")


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
    error_kind: str | None = None  # the class of `error`, e.g. malformed_span (see ERROR_KINDS)


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


class MediaProblem(NamedTuple):
    kind: str  # one of ERROR_KINDS
    reason: str


def media_problem(path: Path, root: Path, allow_outside_root: bool = False) -> MediaProblem | None:
    """Why `path` cannot be read as a media file of `root`, or None. Never opens the file, so
    a FIFO or a device cannot block the caller."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return MediaProblem("missing", "file not found" if not path.is_symlink() else "broken symlink")
    except OSError as exc:
        return MediaProblem("unreadable_file", f"cannot stat: {exc.strerror or exc}")
    if not allow_outside_root and not _contained(path, root):
        return MediaProblem("outside_root", f"resolves outside {root} (to {path.resolve()}); {_OUTSIDE_HINT}")
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        return MediaProblem("not_a_file", "is a directory, not a video file")
    if stat.S_ISFIFO(mode):
        return MediaProblem("not_a_file", "is a FIFO (named pipe), not a regular file")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return MediaProblem("not_a_file", "is a device, not a regular file")
    if not stat.S_ISREG(mode):
        return MediaProblem("not_a_file", "is not a regular file")
    if not os.access(path, os.R_OK):
        return MediaProblem("unreadable_file", "is not readable (permission denied)")
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
                        error=f"{path}: {problem.reason}" if problem else None,
                        error_kind=problem.kind if problem else None)


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


def read_panda70m_csv(csv_path: str | Path, video_root: str | Path, allow_outside_root: bool = False,
                      name: str | None = None) -> Iterator[InputClip]:
    """One input clip per (video, timestamp span) of a Panda-70M metadata CSV. Error clips are
    named by `name` (default: the file name) and the line, so they stay unique across manifests."""
    csv_path = Path(csv_path)
    root = VideoRoot(video_root, allow_outside_root)
    limit = csv.field_size_limit()
    csv.field_size_limit(_CSV_READ_LIMIT)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig", errors="replace") as fh:
            yield from _manifest_clips(_rows(fh, csv_path), csv_path, name or csv_path.name, root)
    finally:
        csv.field_size_limit(limit)


def _error_clip(kind: str, source_id: str, path: str, message: str) -> InputClip:
    return InputClip(source_id, path, error=message, error_kind=kind)


def _manifest_clips(rows: Iterator[tuple[int, dict[str, str] | None, str | None]], csv_path: Path, name: str,
                    root: VideoRoot) -> Iterator[InputClip]:
    for line, row, csv_error in rows:
        where = f"{csv_path}:{line}"
        if row is None:
            yield _error_clip("unreadable_record", f"{name}:line{line}", "",
                              f"{where}: unreadable CSV record: {csv_error}")
            continue
        video_id = (row.get("videoID") or "").strip()
        if not video_id or len(video_id) > 1024:
            problem = "is empty" if not video_id else "is over 1024 characters"
            yield _error_clip("bad_video_id", f"{name}:line{line}", "", f"{where}: column 'videoID' {problem}")
            continue
        row_id = f"{video_id}:{name}:line{line}"
        try:
            path = root.find(video_id)
        except ValueError as exc:
            yield _error_clip("outside_root", row_id, "", f"{where}: {exc}")
            continue
        except OSError as exc:
            yield _error_clip("unreadable_file", row_id, "", f"{where}: {exc}")
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
            yield _error_clip("malformed_row", row_id, str(path), f"{where}: malformed row: {exc}")
            continue
        for i, (span, caption, score) in enumerate(zip(spans, captions, scores)):
            try:
                start, end = _span(span, i)
                if not isinstance(caption, str):
                    raise ValueError(f"column 'caption' item {i} is not a string: {_excerpt(repr(caption))}")
                clip = InputClip(span_id(video_id, start, end), str(path), start, end, caption, _score(score, i))
            except ValueError as exc:
                yield _error_clip("malformed_span", f"{row_id}:span{i}", str(path), f"{where}: malformed span: {exc}")
                continue
            yield clip


@dataclass(frozen=True)
class InputSource:
    """One file or folder of a job's input: a manifest CSV or a directory of videos."""

    path: Path
    name: str  # names a manifest's error clips: its path relative to the sources' common folder

    def clips(self, video_root: str | Path | None = None, allow_outside_root: bool = False) -> Iterator[InputClip]:
        """Its input clips; a manifest's videos are under `video_root`, default: the CSV's folder."""
        if self.path.is_dir():
            return read_video_dir(self.path, allow_outside_root)
        return read_panda70m_csv(self.path, video_root or self.path.parent, allow_outside_root, self.name)


def expand_inputs(source: str | Path | Sequence[str | Path]) -> list[InputSource]:
    """The sources `source` names: one directory of videos, or manifest CSVs given by path, by
    glob pattern (`manifests/*.csv`; `**` spans folders) or as a list of either. Order is kept
    (a pattern's matches sorted), and a file named twice is read once. Problems are ConfigErrors."""
    entries = [source] if isinstance(source, (str, Path)) else list(source)
    if not entries:
        raise ConfigError("input: the list of manifests is empty")
    paths: dict[Path, Path] = {}  # resolved -> as given
    for entry in entries:
        given = Path(entry)
        if given.exists() or given.is_symlink():  # an existing name is taken as it is, brackets and all
            found = [given]
        elif glob.escape(str(entry)) != str(entry):
            found = sorted(Path(p) for p in glob.glob(str(entry), recursive=True))
            if not found:
                raise ConfigError(f"input: {entry} matches no file")
        else:
            raise ConfigError(f"input: {entry} does not exist")
        for path in found:
            paths.setdefault(path.resolve(), path)
    found = list(paths.values())
    folders = [p for p in found if p.is_dir()]
    if folders and len(found) > 1:
        raise ConfigError(f"input: a directory of videos ({folders[0]}) is an input on its own, not one of several")
    other = [p for p in found if not p.is_dir() and p.suffix.lower() != ".csv"]
    if other:
        raise ConfigError(f"input: {other[0]} is neither a directory of videos nor a .csv manifest")
    common = os.path.commonpath([os.path.abspath(p.parent) for p in found])
    return [InputSource(p, os.path.relpath(os.path.abspath(p), common)) for p in found]


def read_inputs(source: str | Path | Sequence[str | Path], video_root: str | Path | None = None,
                allow_outside_root: bool = False) -> list[InputClip]:
    """Every input clip of `source` (see `expand_inputs`) in one list: for inputs that fit in
    memory; a large job reads its sources one by one (`InputSource.clips`)."""
    return [clip for s in expand_inputs(source) for clip in s.clips(video_root, allow_outside_root)]
