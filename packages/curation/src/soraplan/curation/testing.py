"""Synthetic camera work for the camera-motion stage's tests and `bench/eval_curation.py`: a
window moving over (or zooming into) a textured scene, with the label it should get."""

from __future__ import annotations

import cv2
import numpy as np

from soraplan.core.testing.media import scene_texture

CAMERA_KINDS = ("static", "locked_off", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out",
                "shake")
EXPECTED_LABEL = {"locked_off": "static", "shake": "mixed"}  # the others are their own label


def camera_clip(kind: str, frames: int = 72, size: tuple[int, int] = (320, 180), speed: float = 2.0,
                seed: int = 0) -> np.ndarray:
    """(frames, h, w, 3) uint8 of one kind of camera work; `speed` in pixels per frame (zooms:
    the crop's width shrinks or grows by 2 x speed pixels per frame)."""
    width, height = size
    texture = scene_texture(seed, height, width)  # twice the frame size
    rng = np.random.default_rng(seed)
    cx, cy = width, height  # the window starts centred on the texture
    out = []
    for i in range(frames):
        dx = dy = 0.0
        scale = 1.0
        if kind == "pan_right":
            dx = i * speed - frames * speed / 2
        elif kind == "pan_left":
            dx = frames * speed / 2 - i * speed
        elif kind == "tilt_down":
            dy = i * speed - frames * speed / 2
        elif kind == "tilt_up":
            dy = frames * speed / 2 - i * speed
        elif kind in ("zoom_in", "zoom_out"):
            step = (i if kind == "zoom_in" else frames - i) * 2 * speed
            scale = (width * 1.5 - step) / width
        elif kind == "shake":
            dx, dy = rng.uniform(-3, 3, size=2) * speed
        w, h = width * scale, height * scale
        x0, y0 = cx + dx - w / 2, cy + dy - h / 2
        # The window of the texture, resampled to the frame size (an affine warp: sub-pixel moves).
        warp = np.float32([[scale, 0, x0], [0, scale, y0]])
        frame = cv2.warpAffine(texture, warp, (width, height), flags=cv2.INTER_AREA | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REFLECT)
        if kind == "locked_off":  # two small figures walking across a still view
            for k, (x, y) in enumerate([(20 + 3 * i, height * 0.6), (width - 40 - 2 * i, height * 0.3)]):
                cv2.rectangle(frame, (int(x), int(y)), (int(x) + 10, int(y) + 22), (240, 40 + 150 * k, 40), -1)
        out.append(frame)
    return np.stack(out)
