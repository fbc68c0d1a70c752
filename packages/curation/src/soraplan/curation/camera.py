"""Camera motion from the optical flow: a label per segment and the camera-vs-subject split.

Per pair of sampled frames, a similarity model (shift, zoom, roll) is fitted to the flow field
by least squares, refitted on the points it explains (the background, for a camera move; moving
subjects are left out): the model's flow is the camera's, what it leaves is the subjects'. With
the flow motion backend the stage reuses the motion stage's flow fields; otherwise it measures
flow itself on the same frames.

Rule per segment, on the mean model over its pairs (in fractions of the short side per pair of
samples): the camera is `static` if its flow stays below `static_max` (a locked-off view with
small moving subjects is static here, whatever the subjects do); else the largest component
names it (`pan_left` / `pan_right`, `tilt_up` / `tilt_down`, `zoom_in` / `zoom_out`) when it
holds at least `dominance` of the camera's motion and the camera keeps its direction (the mean
model is at least `consistency` of the pairs' own magnitudes); anything else is `mixed`
(handheld shake, a pan while zooming, a roll). Optionally, a static-camera segment whose
subjects move less than `reject_locked_off_below` is rejected as `locked_off`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from soraplan.core.config import NonNegativeFloat, PositiveInt, UnitFloat
from soraplan.curation.motion import FLOW_FIELDS, FLOW_SAMPLING, FLOW_STRIDE, dense_flow, grey_flow_frame
from soraplan.curation.resources import Resources
from soraplan.curation.stages import ClipContext, EveryNth, Score, Segment, Stage, StageConfig, pairs_inside

REASON_LOCKED_OFF = "locked_off"


@dataclass
class CameraConfig(StageConfig):
    enabled: bool = True
    frame_skip: PositiveInt = 4  # as motion.frame_skip, so that the flow backend's fields are reused
    flow_short_side: PositiveInt = 128  # as motion.flow_short_side
    # Camera flow (fraction of the short side per pair of samples) below which the camera is
    # static: the flow motion bound (motion.flow_min) on the camera's share of the motion.
    static_max: NonNegativeFloat = 0.002
    dominance: UnitFloat = 0.6  # a label's component holds at least this share of the camera motion
    consistency: UnitFloat = 0.5  # mean camera motion / mean of the pairs' magnitudes, else `mixed`
    reject_locked_off_below: NonNegativeFloat | None = None  # subject motion floor for static cameras

    def stage_class(self) -> type[CameraMotion]:
        return CameraMotion


def fit_camera(flow: np.ndarray, stride: int = 1) -> tuple[np.ndarray, float, float]:
    """Similarity model of a flow field (h, w, 2) sampled every `stride` pixels: (params
    [shift x, shift y, zoom, roll], camera flow, subject flow), all in fractions of the frame's
    short side (zoom and roll: the flow they give half a short side away from the centre)."""
    h, w = flow.shape[:2]
    short = min(h, w) * stride
    half = short / 2
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) * stride
    x, y = (xs - xs.mean()).ravel() / half, (ys - ys.mean()).ravel() / half
    u, v = flow[..., 0].ravel().astype(np.float64), flow[..., 1].ravel().astype(np.float64)
    # u = tx + a x - b y;  v = ty + b x + a y  (a: zoom, b: roll; flow in pixels at unit radius).
    # Least squares by its 4x4 normal equations, written out: they need only sums over the points.
    keep = np.ones(x.size, dtype=bool)
    for _ in range(2):  # fit, then refit on the points the model explains (the background)
        xk, yk, uk, vk = x[keep], y[keep], u[keep], v[keep]
        n, sx, sy, q = float(keep.sum()), xk.sum(), yk.sum(), (xk * xk + yk * yk).sum()
        normal = np.array([[n, 0, sx, -sy], [0, n, sy, sx], [sx, sy, q, 0], [-sy, sx, 0, q]])
        params = np.linalg.solve(normal, [uk.sum(), vk.sum(), (xk * uk + yk * vk).sum(), (xk * vk - yk * uk).sum()])
        tx, ty, a, b = params
        mu, mv = tx + a * x - b * y, ty + b * x + a * y
        residual = np.hypot(u - mu, v - mv)
        keep = residual <= max(2.0 * float(np.median(residual)), 0.1)
    # Shifts in pixels, zoom and roll in pixels at half the short side from the centre.
    return params / short, float(np.hypot(mu, mv).mean()) / short, float(residual.mean()) / short


def camera_label(params: np.ndarray, magnitudes: np.ndarray, cfg: CameraConfig) -> str:
    """The label of a segment from its pairs' model parameters (N, 4) and camera flows (N,)."""
    if len(params) == 0:
        return "static"
    mean = params.mean(axis=0)
    pan_x, pan_y, zoom, roll = mean
    components = np.abs([pan_x, pan_y, zoom, roll])
    total = float(components.sum())
    if float(magnitudes.mean()) < cfg.static_max:
        return "static"
    shake = float(np.abs(params).sum(axis=1).mean())
    if total < cfg.consistency * shake or components.max() < cfg.dominance * total:
        return "mixed"
    # Content moving left means the camera turns right; moving down, the camera tilts up.
    return [("pan_right" if pan_x < 0 else "pan_left"), ("tilt_up" if pan_y > 0 else "tilt_down"),
            ("zoom_in" if zoom > 0 else "zoom_out"), "mixed"][int(np.argmax(components))]


class CameraMotion(Stage):
    """Fits the camera's motion to each pair's flow after the pass; labels each segment."""

    name = "camera"
    reasons = (REASON_LOCKED_OFF,)
    resources = Resources(cpus=1.0)  # NumPy least squares (and OpenCV flow without the flow backend)
    extra_columns = (pa.field("camera_motion", pa.string()),  # one of core.schema.CAMERA_LABELS
                     pa.field("camera_motion_score", pa.float64()),  # camera flow, fraction of the short side
                     pa.field("subject_motion_score", pa.float64()))  # flow the camera leaves unexplained
    scores_rejected = True  # its columns cost nothing once the clip is measured

    def __init__(self, cfg: CameraConfig) -> None:
        self.cfg = cfg
        self.sampling = EveryNth(cfg.frame_skip)

    def start(self, clip: ClipContext) -> None:
        self.clip = clip
        self.positions: list[int] = []
        self.frames: list[np.ndarray] = []
        # The flow backend samples the same frames at the same size: its fields serve as they
        # are, and this stage keeps no frames of its own.
        self.reuses_flow = clip.signals.get(FLOW_SAMPLING) == (self.cfg.frame_skip, self.cfg.flow_short_side)

    def observe(self, frame: np.ndarray, time_s: float) -> None:
        self.positions.append(self.clip.position)
        if not self.reuses_flow:
            self.frames.append(grey_flow_frame(frame, self.cfg.flow_short_side))

    def finish(self, clip: ClipContext) -> None:
        if self.reuses_flow:
            positions, fields = clip.signals[FLOW_FIELDS]
            if list(positions) != self.positions:
                raise RuntimeError("the flow backend sampled other frames than it announced")
        else:
            fields = [dense_flow(a, b)[::FLOW_STRIDE, ::FLOW_STRIDE] for a, b in zip(self.frames, self.frames[1:])]
        self.frames = []
        fits = [fit_camera(f, FLOW_STRIDE) for f in fields]
        self.params = np.array([p for p, _, _ in fits]).reshape(-1, 4)
        self.camera = np.array([c for _, c, _ in fits])
        self.subject = np.array([s for _, _, s in fits])
        self.sample_times = np.asarray(clip.times)[self.positions]

    def score(self, segment: Segment) -> Score:
        pairs = pairs_inside(self.sample_times, segment)
        if not pairs.any():
            return {}, []
        label = camera_label(self.params[pairs], self.camera[pairs], self.cfg)
        subject = float(self.subject[pairs].mean())
        floor = self.cfg.reject_locked_off_below
        reasons = [REASON_LOCKED_OFF] if label == "static" and floor is not None and subject < floor else []
        return {"camera_motion": label, "camera_motion_score": float(self.camera[pairs].mean()),
                "subject_motion_score": subject}, reasons
