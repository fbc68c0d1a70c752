"""Kept spans as files of their own, for trainers that read whole files (Open-Sora).

A span is stream-copied when its packets can stand alone: it starts on a keyframe and its
frames are one unbroken run in decode order (so no frame refers to a frame outside it; B-frames
across the span's end break the run). Otherwise, and for rotated sources (a copy would keep the
stored orientation, which the trainers' readers do not turn), its frames are decoded and
re-encoded upright; so are spans with a crop box, which is applied. Either way the written file
is checked: its header and a full decode must both give the span's frame count; a copy that
does not falls back to re-encoding, and a re-encode that does not fails the clip.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from soraplan.core.video import VideoDecodeError, iter_frames, probe, write_video
from soraplan.curation.stages import TIME_EPS


@dataclass(frozen=True)
class CutFile:
    path: str
    num_frames: int
    width: int
    height: int
    fps: float
    method: str  # "copy" or "encode"


def frame_times(path: str | os.PathLike[str]) -> list[float]:
    """Presentation times of every frame, seconds from the first one (packets only, no decoding)."""
    with av.open(str(path), metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        tb = stream.time_base or Fraction(1, 1)
        pts = sorted(p.pts for p in container.demux(stream) if p.size > 0 and p.pts is not None)
    origin = stream.start_time if stream.start_time is not None else (pts[0] if pts else 0)
    return [float((p - origin) * tb) for p in pts]


def _span_packets(src: Path, start_s: float, end_s: float) -> tuple[list[av.Packet], av.video.stream.VideoStream] | None:
    """The packets of the frames in [start_s, end_s) if they can be copied as they are, else None."""
    container = av.open(str(src), metadata_errors="ignore")
    stream = container.streams.video[0]
    tb = stream.time_base or Fraction(1, 1)
    origin = stream.start_time or 0
    lo, hi = start_s - TIME_EPS, end_s - TIME_EPS
    run: list[av.Packet] = []
    ended = False
    container.seek(int(start_s / tb) + origin, stream=stream, backward=True, any_frame=False)
    for packet in container.demux(stream):
        if packet.size == 0 or packet.pts is None:
            continue
        if packet.dts is not None and float((packet.dts - origin) * tb) >= hi:
            break  # decode order: no later packet shows a frame inside the span
        inside = lo <= float((packet.pts - origin) * tb) < hi
        if inside and (ended or (not run and not packet.is_keyframe)):
            container.close()
            return None
        if inside:
            run.append(packet)
        elif run:
            ended = True
    if not run:
        container.close()
        return None
    return run, stream


def _copy(src: Path, start_s: float, end_s: float, dst: Path) -> bool:
    found = _span_packets(src, start_s, end_s)
    if found is None:
        return False
    packets, stream = found
    try:
        with av.open(str(dst), "w", format="mp4") as out:
            copy = out.add_stream_from_template(stream)
            shift = packets[0].pts  # the keyframe shows first: the file starts at 0
            for packet in packets:
                packet.pts -= shift
                if packet.dts is not None:
                    packet.dts -= shift
                packet.stream = copy
                out.mux(packet)
    except av.error.FFmpegError:
        return False
    finally:
        stream.container.close()
    return True


def _encode(src: Path, start_s: float, end_s: float, fps: float, crop: Sequence[int] | None, dst: Path) -> None:
    def upright_even_frames():  # yuv420p needs even sides: drop an odd last row / column
        for frame in iter_frames(src, start_s, end_s):
            image = frame.image if crop is None else frame.image[crop[2]:crop[3], crop[0]:crop[1]]
            h, w = image.shape[:2]
            yield image[: h - h % 2, : w - w % 2]

    write_video(dst, upright_even_frames(), fps)


def _checked(path: Path, num_frames: int, method: str) -> CutFile | None:
    info = probe(path)
    decoded = sum(1 for _ in iter_frames(path, size=(16, 16)))
    if info.num_frames != num_frames or decoded != num_frames:
        return None
    return CutFile(str(path), num_frames, info.width, info.height, info.fps, method)


def cut_span(src: str | os.PathLike[str], start_s: float, end_s: float, num_frames: int,
             dst: str | os.PathLike[str], crop: Sequence[int] | None = None) -> CutFile:
    """Write the frames of `src` in [start_s, end_s) (seconds from its first frame) to the mp4
    `dst`, inside `crop` = (x0, x1, y0, y1) display pixels if given (which re-encodes); raises
    VideoDecodeError when no file with exactly `num_frames` frames comes out. An existing `dst`
    with the right frame count is kept (reruns are cheap: name files after what they hold)."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        done = _checked(dst, num_frames, "existing")
        if done:
            return done
    info = probe(src)
    if crop is not None and tuple(crop) == (0, info.width, 0, info.height):
        crop = None
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(f".{dst.name}.part.mp4")
    try:
        result = None
        if info.rotation == 0 and crop is None and _copy(src, start_s, end_s, part):
            result = _checked(part, num_frames, "copy")
        if result is None:
            _encode(src, start_s, end_s, info.fps, crop, part)
            result = _checked(part, num_frames, "encode")
        if result is None:
            raise VideoDecodeError(f"cutting {start_s:.3f}-{end_s:.3f} s of {src} did not give "
                                   f"{num_frames} frames (the curated span's count)")
        os.replace(part, dst)
        return CutFile(str(dst), result.num_frames, result.width, result.height, result.fps, result.method)
    finally:
        part.unlink(missing_ok=True)
