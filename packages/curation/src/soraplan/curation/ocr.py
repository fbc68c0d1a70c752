"""Burned-in text: PP-OCR text detection (RapidOCR, models inside its wheel).

Where text is, not what it says, is what the filters need; the recognizer only says how sure
it is that a box holds text at all (`min_text_score`), so that texture boxes (wood grain, foliage,
defocused close-ups) do not count towards the text-area ratio. Two kinds of burned-in text
reject a segment when they recur across its sampled frames: subtitle lines (in the lower band,
at least `subtitle_min_width` wide, text-shaped, and in long segments changing at least once)
and caption overlays (wide lines that stay at the same place in the frame, at any height), both
centred horizontally. Watermarks and logos sit off-centre or in corners; text in the scene
moves with it; a short word on a sign is narrow and never changes; none of them rejects a clip.
Slides and screen captures (many text lines spread over a still picture) are told apart and
recorded as `slides`, a reason of their own (off by default). The crop box cuts edge text away,
at most `max_crop` per side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import cv2

import numpy as np
import pyarrow as pa

from soraplan.core.config import NonNegativeFloat, PositiveFloat, PositiveInt, Range, UnitFloat
from soraplan.core.schema import REASON_SUBTITLES
from soraplan.curation.resources import Resources
from soraplan.curation.stages import ClipContext, PerSecond, Score, Segment, Stage, StageConfig


@dataclass
class OcrConfig(StageConfig):
    enabled: bool = True
    backend: Literal["rapidocr", "paddle"] = "rapidocr"  # paddle: PaddleOCR, an optional extra
    paddle_model: str = "PP-OCRv5_mobile_det"  # PaddleOCR detection model name
    paddle_model_dir: str | None = None  # local PaddleOCR model folder (PaddleOCR downloads otherwise)
    fps: PositiveFloat = 1.0  # frames sampled per second of each segment
    max_frames: PositiveInt = 5  # at most this many frames per segment, spread evenly
    # Detector input: longer side scaled down to this. Smaller is faster (480: half the time)
    # but misses small text on busy backgrounds: at 512 a corner watermark on texture and the
    # many small lines of a screen recording (so `slides`) went unseen.
    det_limit_side_len: PositiveInt = 640
    det_box_thresh: UnitFloat = 0.5
    subtitle_band: UnitFloat = 0.65  # a subtitle box's centre lies below this fraction of the height
    center_tolerance: UnitFloat = 0.12  # burned-in lines are centred within this fraction of the width
    max_box_height: UnitFloat = 0.15  # taller boxes are scene text or titles, not subtitle lines
    # ... but never below this many pixels: the detector's boxes are at least ~10 px tall however
    # small the frame, so at low resolution a relative limit alone would refuse every line.
    max_box_height_floor_px: PositiveInt = 16
    # A subtitle line is at least this fraction of the width (a few characters; a one-word sign
    # is narrower) and text-shaped: at least `text_min_aspect` times as wide as tall.
    subtitle_min_width: UnitFloat = 0.07
    text_min_aspect: NonNegativeFloat = 2.5
    # In segments at least this long, subtitle lines must change (another line, another box)
    # across the samples; a line that never changes is scene text. Caption overlays need not.
    subtitle_change_min_s: NonNegativeFloat = 8.0
    overlay_min_width: UnitFloat = 0.4  # a caption overlay line is at least this fraction of the width
    overlay_min_iou: UnitFloat = 0.5  # ... and overlaps itself this much from sample to sample
    min_fraction: UnitFloat = 0.34  # burned-in text must appear in this share of samples (and in 2)
    max_area_ratio: UnitFloat | None = None  # optionally also reject above this text-area ratio
    # Boxes count towards the area ratio only if the recognizer reads them with at least this
    # confidence (null: no recognition, every box counts; the paddle backend has no recognizer).
    min_text_score: UnitFloat | None = 0.7
    # Slides and screen captures: in at least half the samples, `slides_min_lines` text lines whose
    # centres span `slides_min_spread` of the height, over a picture that changes less than
    # `slides_max_change` (mean abs grey level, 0-1) between samples.
    slides_min_lines: PositiveInt = 4
    slides_min_spread: UnitFloat = 0.4
    slides_max_change: UnitFloat = 0.02
    reject_slides: bool = False  # reject slides as `slides` (they are never called subtitles)
    # Crop at most this fraction of each side, to cut edge text away (opposite sides must not meet).
    max_crop: Annotated[float, Range(ge=0, lt=0.5)] = 0.2
    num_threads: PositiveInt = 1

    def stage_class(self) -> type[TextDetector]:
        return PaddleTextDetector if self.backend == "paddle" else TextDetector


REASON_SLIDES = "slides"


@dataclass(frozen=True)
class TextVerdict:
    area_ratio: float  # mean over samples of the (confident) text-box area / frame area
    subtitles: bool
    crop: tuple[int, int, int, int]  # x0, x1, y0, y1 in the frame's pixels
    num_frames: int
    slides: bool = False
    evidence: str | None = None  # why the segment was judged subtitled (or slides)


class TextDetector(Stage):
    """Keeps about `fps` frames a second during the pass; judges each segment's frames together."""

    name = "ocr"
    reasons = (REASON_SUBTITLES, REASON_SLIDES)
    resources = Resources(cpus=1.0)  # onnxruntime (and the paddlepaddle CPU build) on the CPU
    extra_columns = (pa.field("slides", pa.bool_()),
                     # Which line, where (fractions of the frame) and in how many samples.
                     pa.field("subtitle_evidence", pa.string()))

    def __init__(self, cfg: OcrConfig) -> None:
        self.cfg = cfg
        self.sampling = PerSecond(cfg.fps)

    def setup(self) -> None:
        from rapidocr import RapidOCR

        cfg = self.cfg
        self.engine = RapidOCR(
            params={
                "Global.use_cls": False,
                "Global.use_rec": False,
                "Global.log_level": "error",
                "Det.limit_type": "max",
                "Det.limit_side_len": cfg.det_limit_side_len,
                "Det.box_thresh": cfg.det_box_thresh,
                "EngineConfig.onnxruntime.intra_op_num_threads": cfg.num_threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
                # RapidOCR turns onnxruntime's memory arena off; reusing buffers between frames
                # makes detection about 17% faster here, with the same boxes.
                "EngineConfig.onnxruntime.enable_cpu_mem_arena": True,
            }
        )
        # Detection runs through the engine's call; the recognizer (PP-OCR rec, also in the
        # wheel) is called directly on the detected boxes, so that no box is dropped for its text.
        self.recognizer = self.engine._load_rec_model() if cfg.min_text_score is not None else None

    def start(self, clip: ClipContext) -> None:
        self.clip = clip
        self.times: list[float] = []
        self.images: list[np.ndarray] = []

    def observe(self, frame: np.ndarray, time_s: float) -> None:
        self.times.append(time_s)
        self.images.append(frame)

    def score(self, segment: Segment) -> Score:
        """Judge the segment's sampled frames, thinned evenly to `max_frames`."""
        inside = [i for i, t in enumerate(self.times) if segment.contains(t)]
        if not inside:
            return {}, []
        if len(inside) > self.cfg.max_frames:
            inside = [inside[round(p)] for p in np.linspace(0, len(inside) - 1, self.cfg.max_frames)]
        verdict = self.judge([self.images[i] for i in inside], segment.duration_s)
        # The crop is found on analysis-size frames and stored in display pixels.
        info, (width, height) = self.clip.info, self.clip.analysis_size
        sx, sy = info.width / width, info.height / height
        x0, x1, y0, y1 = verdict.crop
        too_much_text = self.cfg.max_area_ratio is not None and verdict.area_ratio > self.cfg.max_area_ratio
        columns = {"ocr_area_ratio": verdict.area_ratio, "subtitles": verdict.subtitles, "slides": verdict.slides,
                   "subtitle_evidence": verdict.evidence,
                   "crop": [round(x0 * sx), round(x1 * sx), round(y0 * sy), round(y1 * sy)]}
        reasons = [REASON_SUBTITLES] if verdict.subtitles or too_much_text else []
        if verdict.slides and self.cfg.reject_slides:
            reasons.append(REASON_SLIDES)
        return columns, reasons

    def boxes(self, rgb: np.ndarray) -> np.ndarray:
        """Axis-aligned text boxes (x0, y0, x1, y1) in pixels, shape (K, 4)."""
        # RapidOCR expects OpenCV's BGR channel order.
        result = self.engine(np.ascontiguousarray(rgb[..., ::-1]))
        if result.boxes is None or len(result.boxes) == 0:
            return np.zeros((0, 4))
        quads = np.asarray(result.boxes, dtype=np.float64)
        return np.concatenate([quads.min(axis=1), quads.max(axis=1)], axis=1)

    def text_scores(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray | None:
        """The recognizer's confidence that each box holds text, or None without recognition."""
        if self.cfg.min_text_score is None or len(boxes) == 0:
            return None
        from rapidocr.ch_ppocr_rec.typings import TextRecInput

        crops = [np.ascontiguousarray(rgb[max(0, int(y0)) : int(np.ceil(y1)) + 1,
                                          max(0, int(x0)) : int(np.ceil(x1)) + 1, ::-1])
                 for x0, y0, x1, y1 in boxes]
        scores = np.zeros(len(boxes))
        readable = [i for i, c in enumerate(crops) if c.shape[0] > 1 and c.shape[1] > 1]
        if readable:
            result = self.recognizer(TextRecInput(img=[crops[i] for i in readable]))  # batched
            scores[readable] = np.asarray(result.scores, dtype=np.float64)
        return scores

    def judge(self, frames: list[np.ndarray], duration_s: float = 0.0) -> TextVerdict:
        """Run the detector on a segment's sampled frames and judge them together."""
        boxes = [self.boxes(f) for f in frames]
        scores = [self.text_scores(f, b) for f, b in zip(frames, boxes)]
        return judge_boxes(boxes, frames[0].shape[1], frames[0].shape[0], self.cfg, scores=scores,
                           duration_s=duration_s, still=picture_still(frames, self.cfg.slides_max_change))


class PaddleTextDetector(TextDetector):
    """The same detector stage on PaddleOCR's own text-detection module (PP-OCR det only: no
    recognizer, so every box counts towards the area ratio)."""

    def setup(self) -> None:
        try:
            from paddleocr import TextDetection
        except ImportError as exc:
            raise ImportError(
                "ocr.backend=paddle needs PaddleOCR, the optional `paddle` extra, in an environment of its "
                "own (it pins numpy and a second OpenCV): `uv sync --package soraplan-curation --extra "
                "paddle`, or use ocr.backend=rapidocr (same PP-OCR models, in its wheel)."
            ) from exc
        cfg = self.cfg
        self.engine = TextDetection(model_name=cfg.paddle_model, model_dir=cfg.paddle_model_dir,
                                    limit_side_len=cfg.det_limit_side_len, limit_type="max",
                                    box_thresh=cfg.det_box_thresh)

    def boxes(self, rgb: np.ndarray) -> np.ndarray:
        # PaddleOCR, like RapidOCR, expects OpenCV's BGR channel order.
        (result,) = self.engine.predict(np.ascontiguousarray(rgb[..., ::-1]), batch_size=1)
        quads = np.asarray(result["dt_polys"], dtype=np.float64).reshape(-1, 4, 2)
        return np.concatenate([quads.min(axis=1), quads.max(axis=1)], axis=1)

    def text_scores(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray | None:
        return None


def judge_boxes(per_frame: list[np.ndarray], width: int, height: int, cfg: OcrConfig,
                scores: list[np.ndarray | None] | None = None, duration_s: float = 0.0,
                still: bool = False) -> TextVerdict:
    """The verdict on a segment from the text boxes of its sampled frames (and, if recognized,
    each box's text confidence); `still`: the picture barely changes between samples."""
    n = len(per_frame)
    scores = scores or [None] * n
    areas = []
    for boxes, score in zip(per_frame, scores):
        mask = np.zeros((height, width), dtype=bool)
        confident = boxes if score is None or cfg.min_text_score is None else boxes[score >= cfg.min_text_score]
        for x0, y0, x1, y1 in confident.astype(int):
            mask[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
        areas.append(mask.mean())
    needed = max(min(2, n), cfg.min_fraction * n)
    slides = n > 0 and still and _slide_samples(per_frame, width, height, cfg) >= max(1, n / 2)
    evidence = None
    if not slides:
        evidence = _subtitle_evidence(per_frame, width, height, cfg, needed, duration_s)
        evidence = evidence or _overlay_evidence(per_frame, width, height, cfg, needed)
    elif n:
        evidence = f"slides: {cfg.slides_min_lines}+ text lines over a still picture in most of {n} samples"
    all_boxes = np.concatenate(per_frame) if per_frame else np.zeros((0, 4))
    return TextVerdict(
        area_ratio=float(np.mean(areas)) if areas else 0.0,
        subtitles=not slides and evidence is not None,
        crop=crop_box(all_boxes, width, height, cfg),
        num_frames=n,
        slides=bool(slides),
        evidence=evidence,
    )


def picture_still(frames: list[np.ndarray], max_change: float) -> bool:
    """Whether neighbouring samples differ by at most `max_change` (mean abs grey level, 0-1)
    at a coarse scale, where text edits and a moving cursor barely count."""
    thumbs = [cv2.cvtColor(cv2.resize(f, (64, 36), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
              .astype(np.float32) / 255 for f in frames]
    return len(thumbs) > 1 and all(float(np.abs(a - b).mean()) <= max_change for a, b in zip(thumbs, thumbs[1:]))


def _text_shaped(b: np.ndarray, height: int, cfg: OcrConfig) -> np.ndarray:
    box_h = b[:, 3] - b[:, 1]
    return (box_h <= line_height_limit(height, cfg)) & ((b[:, 2] - b[:, 0]) >= cfg.text_min_aspect * box_h)


def _slide_samples(per_frame: list[np.ndarray], width: int, height: int, cfg: OcrConfig) -> int:
    """Samples that look like a slide: many text lines spread over the height."""
    count = 0
    for b in per_frame:
        lines = b[_text_shaped(b, height, cfg)] if len(b) else b
        if len(lines) >= cfg.slides_min_lines:
            centres = (lines[:, 1] + lines[:, 3]) / 2
            count += bool(np.ptp(centres) >= cfg.slides_min_spread * height)
    return count


def _describe(box: np.ndarray, width: int, height: int) -> str:
    x0, y0, x1, y1 = box
    return f"x {x0 / width:.2f}-{x1 / width:.2f}, y {y0 / height:.2f}-{y1 / height:.2f}"


def _subtitle_evidence(per_frame: list[np.ndarray], width: int, height: int, cfg: OcrConfig, needed: float,
                       duration_s: float) -> str | None:
    """Why the samples hold subtitles (which line, where, in how many samples), or None."""
    lines = [b[_subtitle_lines(b, width, height, cfg)] if len(b) else b for b in per_frame]
    sighted = [frame_lines for frame_lines in lines if len(frame_lines)]
    if len(sighted) < needed:
        return None
    # Another line has another width or place; the same sign in a locked-off shot keeps both.
    widest = [max(frame_lines, key=lambda b: b[2] - b[0]) for frame_lines in sighted]
    changes = any(_other_line(a, b, width) for a in widest for b in widest)
    if duration_s >= cfg.subtitle_change_min_s and not changes:
        return None
    line = max(widest, key=lambda b: b[2] - b[0])
    return (f"subtitle line {_describe(line, width, height)} in {len(sighted)}/{len(per_frame)} samples"
            f"{', changing' if changes else ''}")


def _other_line(a: np.ndarray, b: np.ndarray, width: int) -> bool:
    wa, wb = a[2] - a[0], b[2] - b[0]
    return abs(wa - wb) > 0.1 * max(wa, wb) or abs((a[0] + a[2]) - (b[0] + b[2])) / 2 > 0.03 * width


def _overlay_evidence(per_frame: list[np.ndarray], width: int, height: int, cfg: OcrConfig,
                      needed: float) -> str | None:
    """The wide text line that recurs at (about) the same place in most samples, or None."""
    def overlay_lines(b: np.ndarray) -> np.ndarray:
        if len(b) == 0:
            return b
        wide = (b[:, 2] - b[:, 0]) >= cfg.overlay_min_width * width
        centred = np.abs((b[:, 0] + b[:, 2]) / 2 - width / 2) <= cfg.center_tolerance * width
        return b[wide & centred & _text_shaped(b, height, cfg)]

    lines = [overlay_lines(b) for b in per_frame]
    best, best_line = 0, None
    for candidate in (line for frame_lines in lines for line in frame_lines):
        hits = sum(any(_iou(candidate, other) >= cfg.overlay_min_iou for other in frame_lines) for frame_lines in lines)
        if hits > best:
            best, best_line = hits, candidate
    if best_line is None or best < needed:
        return None
    return f"caption overlay line {_describe(best_line, width, height)} in {best}/{len(per_frame)} samples"


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _subtitle_lines(boxes: np.ndarray, width: int, height: int, cfg: OcrConfig) -> np.ndarray:
    if len(boxes) == 0:
        return np.zeros(0, dtype=bool)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    return (
        (cy >= cfg.subtitle_band * height)
        & (np.abs(cx - width / 2) <= cfg.center_tolerance * width)
        & ((boxes[:, 2] - boxes[:, 0]) >= cfg.subtitle_min_width * width)
        & _text_shaped(boxes, height, cfg)
    )


def line_height_limit(height: int, cfg: OcrConfig) -> float:
    """The tallest box a burned-in text line may have, in pixels of a frame `height` tall."""
    return max(cfg.max_box_height * height, cfg.max_box_height_floor_px)


def crop_box(boxes: np.ndarray, width: int, height: int, cfg: OcrConfig) -> tuple[int, int, int, int]:
    """(x0, x1, y0, y1) that leaves out text lying entirely within `max_crop` of an edge; text
    reaching deeper cannot be cropped away and is left in."""
    x0, x1, y0, y1 = 0.0, float(width), 0.0, float(height)
    bx, by = cfg.max_crop * width, cfg.max_crop * height
    for bx0, by0, bx1, by1 in boxes:
        if by1 <= by:  # top band
            y0 = max(y0, by1)
        elif by0 >= height - by:  # bottom band
            y1 = min(y1, by0)
        elif bx1 <= bx:  # left band
            x0 = max(x0, bx1)
        elif bx0 >= width - bx:  # right band
            x1 = min(x1, bx0)
    return int(np.floor(x0)), int(np.ceil(x1)), int(np.floor(y0)), int(np.ceil(y1))
