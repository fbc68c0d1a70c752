"""Synthetic test videos: textured scenes that move, cut between shots, and carry subtitles.

Tests and the examples use these instead of downloaded media. Shots differ in texture and
colour so that a cut is a real change of content, as it is in film.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from soraplan.core.video import write_video


def scene_texture(seed: int, height: int, width: int) -> np.ndarray:
    """A smooth random RGB texture twice the frame size, so it can pan."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    texture = cv2.resize(small, (width * 2, height * 2), interpolation=cv2.INTER_CUBIC)
    # Blobs give the flow and the shot detector structure to lock onto.
    for _ in range(12):
        center = (int(rng.integers(0, width * 2)), int(rng.integers(0, height * 2)))
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        cv2.circle(texture, center, int(rng.integers(height // 10, height // 3)), color, -1)
    return texture


def make_video(
    path: str | Path,
    shots: Sequence[float] = (3.0,),
    fps: float = 24.0,
    size: tuple[int, int] = (320, 180),
    speed: float = 2.0,
    subtitles: bool = False,
    seed: int = 0,
) -> Path:
    """Write an H.264 mp4 of consecutive shots (durations in seconds) with hard cuts between.

    `speed` is the pan in pixels per frame (0 gives a static video). With `subtitles`, a
    centred white line of text in the lower band changes every second.
    """
    width, height = size
    frames = []
    for shot, seconds in enumerate(shots):
        texture = scene_texture(seed * 1000 + shot, height, width)
        for i in range(max(1, round(seconds * fps))):
            x = int(i * speed) % width
            y = int(i * speed * 0.5) % height
            frame = np.ascontiguousarray(texture[y : y + height, x : x + width])
            if subtitles:
                second = len(frames) // int(fps)
                text = f"line {second}: the quick brown fox"
                scale = height / 360
                (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
                org = ((width - tw) // 2, int(height * 0.9))
                cv2.putText(frame, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 4, cv2.LINE_AA)
                cv2.putText(frame, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 2, cv2.LINE_AA)
            frames.append(frame)
    return write_video(path, np.stack(frames), fps)
