"""Video decoding and encoding with PyAV: the one place every package reads video.

Times are seconds on the video's own timeline, starting at 0 for its first frame. Frames are
found by their timestamps, never by assuming a constant frame rate, so variable-frame-rate
files come out right. Display rotation is applied, so frames look as a player shows them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


class VideoDecodeError(RuntimeError):
    """A file that cannot be read as video; the message says why in plain words."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    duration_s: float
    fps: float  # average frame rate: frames / duration
    width: int  # display size, rotation applied
    height: int
    rotation: int  # degrees counter-clockwise the stored frames are turned for display
    codec: str
    num_frames: int
    start_time_s: float  # timestamp of the first frame on the container timeline
    has_audio: bool


@dataclass(frozen=True)
class DecodedFrame:
    index: int  # 0-based position in decode order within the whole video
    time_s: float
    image: np.ndarray  # uint8 RGB, H x W x 3, rotation applied


def _open(path: str | os.PathLike[str]) -> av.container.InputContainer:
    p = Path(path)
    if not p.exists():
        raise VideoDecodeError(f"file not found: {p}")
    if p.is_dir():
        raise VideoDecodeError(f"is a directory, not a video file: {p}")
    if not p.is_file():  # never open a FIFO or a device: reading one can block forever
        raise VideoDecodeError(f"not a regular file: {p}")
    if p.stat().st_size == 0:
        raise VideoDecodeError(f"file is empty (0 bytes): {p}")
    try:
        container = av.open(str(p), metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(f"not a readable media file ({exc.__class__.__name__}: {exc}): {p}")
    if container.format.name == "tty":  # FFmpeg renders text files (e.g. .txt) as ANSI-art video
        container.close()
        raise VideoDecodeError(f"a text file, not a video: {p}")
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise VideoDecodeError(f"no video stream (streams: {', '.join(kinds)}): {p}")
    return container


def _rotation_of(stream: av.video.stream.VideoStream, container: av.container.InputContainer) -> int:
    """Display rotation in degrees (multiple of 90), read from the first decoded frame."""
    try:
        frame = next(container.decode(stream))
    except (StopIteration, av.error.FFmpegError):
        return 0
    finally:
        container.seek(0)
    return int(round((frame.rotation or 0) / 90.0)) * 90 % 360


def _count_packets(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    count = sum(1 for pkt in container.demux(stream) if pkt.size > 0)
    container.seek(0)
    return count


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Read the metadata of a video; counts frames by demuxing when the header lacks it."""
    with _open(path) as container:
        stream = container.streams.video[0]
        tb = stream.time_base or Fraction(1, 1)
        start = float(stream.start_time * tb) if stream.start_time is not None else 0.0
        if stream.duration:
            duration = float(stream.duration * tb)
        elif container.duration:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        num_frames = stream.frames or _count_packets(container, stream)
        rate = stream.average_rate or stream.guessed_rate
        fps = num_frames / duration if duration > 0 and num_frames > 1 else float(rate or 0.0)
        if not duration and fps:
            duration = num_frames / fps
        rotation = _rotation_of(stream, container)
        width, height = stream.codec_context.width, stream.codec_context.height
        if rotation in (90, 270):
            width, height = height, width
        if width <= 0 or height <= 0:
            raise VideoDecodeError(f"video stream has no frame size: {path}")
        return VideoInfo(
            path=str(path),
            duration_s=duration,
            fps=fps,
            width=width,
            height=height,
            rotation=rotation,
            codec=stream.codec_context.name,
            num_frames=int(num_frames),
            start_time_s=start,
            has_audio=bool(container.streams.audio),
        )


def fit_short_side(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) scaled so the shorter side is at most `short_side`, kept even."""
    if not short_side or min(width, height) <= short_side:
        return width, height
    scale = short_side / min(width, height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def iter_frames(
    path: str | os.PathLike[str],
    start_s: float = 0.0,
    end_s: float | None = None,
    size: tuple[int, int] | None = None,
) -> Iterator[DecodedFrame]:
    """Decode every frame with start_s <= time < end_s, in order, seeking once to start_s.

    `size` is the (width, height) of the returned frames in display orientation.
    """
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = stream.time_base or Fraction(1, 1)
        origin = float(stream.start_time * tb) if stream.start_time is not None else 0.0
        frame_period = 1.0 / float(stream.average_rate or stream.guessed_rate or 25)
        index = 0
        if start_s > 0:
            # Seek to the keyframe before start_s, then count frames from there by timestamp.
            container.seek(int((start_s + origin) / tb), stream=stream, backward=True, any_frame=False)
            index = -1  # unknown until re-derived below
        last_time = -math.inf
        try:
            for frame in container.decode(stream):
                t = float(frame.time) - origin if frame.time is not None else last_time + frame_period
                last_time = t
                if index < 0:
                    index = round(t / frame_period)
                if t < start_s - 1e-6:
                    index += 1
                    continue
                if end_s is not None and t >= end_s - 1e-6:
                    break
                yield DecodedFrame(index, t, _to_rgb(frame, size))
                index += 1
        except av.error.FFmpegError as exc:
            raise VideoDecodeError(f"decoding failed after {max(index, 0)} frames ({exc}): {path}")


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
    k = int(round((frame.rotation or 0) / 90.0)) % 4
    if size is not None:
        w, h = size if k % 2 == 0 else (size[1], size[0])
        image = frame.reformat(width=w, height=h, format="rgb24").to_ndarray()
    else:
        image = frame.to_ndarray(format="rgb24")
    return np.ascontiguousarray(np.rot90(image, k)) if k else image


def sample_frames(
    path: str | os.PathLike[str],
    times_s: Sequence[float],
    size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, list[float]]:
    """The frames shown at `times_s` (the last frame starting at or before each time).

    Decodes one forward pass from the earliest time. Returns (frames N x H x W x 3, frame times).
    """
    if len(times_s) == 0:
        raise ValueError("sample_frames needs at least one time")
    order = sorted(range(len(times_s)), key=lambda i: times_s[i])
    wanted = [times_s[i] for i in order]
    picked: list[DecodedFrame | None] = [None] * len(wanted)
    previous: DecodedFrame | None = None
    j = 0
    for frame in iter_frames(path, start_s=max(0.0, wanted[0] - 1.0), size=size):
        while j < len(wanted) and frame.time_s > wanted[j] + 1e-6:
            picked[j] = previous or frame
            j += 1
        if j == len(wanted):
            break
        previous = frame
    for k in range(j, len(wanted)):
        picked[k] = previous
    if any(p is None for p in picked):
        raise VideoDecodeError(f"no frames decoded at {wanted[0]:.3f}s or later: {path}")
    frames = [None] * len(wanted)
    times = [0.0] * len(wanted)
    for slot, p in zip(order, picked):
        frames[slot] = p.image
        times[slot] = p.time_s
    return np.stack(frames), times


def write_video(
    path: str | os.PathLike[str], frames: np.ndarray | Iterable[np.ndarray], fps: float, crf: int = 18
) -> Path:
    """Encode uint8 RGB frames (T x H x W x 3, or an iterable of H x W x 3; even H and W) to
    H.264 in an mp4. An iterable is encoded as it comes, so a long clip never sits in memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for i, image in enumerate(frames):
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
                raise ValueError(f"expected uint8 frames of shape H x W x 3, got {image.shape} {image.dtype}")
            if i == 0:
                stream.width, stream.height = image.shape[1], image.shape[0]
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def gif_bytes(frames: np.ndarray, fps: float) -> bytes:
    """An animated GIF of uint8 RGB frames (T x H x W x 3): how TensorBoard and HTML reports
    show short videos."""
    import io

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="gif") as container:
        stream = container.add_stream("gif", rate=max(1, round(fps)))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb8"
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24").reformat(format="rgb8")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()
