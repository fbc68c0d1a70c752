"""The subtitle verdict on synthetic frames, with RapidOCR's real detector and recognizer: what
counts as a subtitle line, slides, the audit column, and texture that only looks like text."""

import cv2
import numpy as np
import pytest

from soraplan.core.inputs import InputClip
from soraplan.core.testing.media import scene_texture
from soraplan.core.video import write_video
from soraplan.curation.analyze import AnalyzeConfig, ClipAnalyzer
from soraplan.curation.motion import MotionConfig
from soraplan.curation.ocr import OcrConfig

H, W = 360, 640
FONT = cv2.FONT_HERSHEY_SIMPLEX


@pytest.fixture(scope="module")
def detector():
    return OcrConfig().build()


def put_text(frame: np.ndarray, text: str, cy: float, scale: float = 1.0, x: float | None = None) -> np.ndarray:
    """White text with a dark outline, centred (or starting at fraction `x`), baseline at `cy` of the height."""
    (tw, _), _ = cv2.getTextSize(text, FONT, scale, 2)
    org = (int(x * W) if x is not None else (W - tw) // 2, int(cy * H))
    cv2.putText(frame, text, org, FONT, scale, (0, 0, 0), 5, cv2.LINE_AA)
    cv2.putText(frame, text, org, FONT, scale, (255, 255, 255), 2, cv2.LINE_AA)
    return frame


def scene() -> np.ndarray:
    return np.ascontiguousarray(scene_texture(3, H, W)[:H, :W])


def glyph_rows(seed: int = 1) -> np.ndarray:
    """Rows of small dark blobs on a light ground (gravel, a grille, wood grain): the detector
    boxes nearly all of it as text lines, the recognizer reads none of it."""
    rng = np.random.default_rng(seed)
    frame = np.full((H, W, 3), 210, np.uint8)
    for row in range(10, H, 18):
        x = 5
        while x < W - 10:
            w = int(rng.integers(3, 9))
            if rng.random() < 0.85:
                cv2.rectangle(frame, (x, row), (x + w, row + int(rng.integers(5, 11))), (30, 30, 30), -1)
            x += w + int(rng.integers(2, 5))
    return frame


def test_texture_boxes_do_not_count_towards_the_area_ratio(detector):
    texture = glyph_rows()
    unfiltered = OcrConfig(min_text_score=None).build().judge([texture] * 2)
    assert unfiltered.area_ratio > 0.5  # the detector's boxes cover the texture
    assert detector.judge([texture] * 2).area_ratio < 0.02
    text = put_text(scene(), "line 1: the quick brown fox", 0.9)
    assert detector.judge([text] * 2).area_ratio > 0.01  # real text still counts


def test_a_one_word_sign_is_no_subtitle_line(detector):
    sign = put_text(scene(), "EXIT", 0.88, scale=0.6)  # about 6% of the width
    verdict = detector.judge([sign] * 5, duration_s=3.0)
    assert verdict.area_ratio > 0 and not verdict.subtitles and verdict.evidence is None


def test_long_segments_need_changing_lines(detector):
    station = [put_text(scene(), "CENTRAL STATION", 0.9, scale=0.7) for _ in range(5)]  # 30% wide
    assert not detector.judge(station, duration_s=10.0).subtitles  # a sign on a locked-off shot
    assert detector.judge(station, duration_s=3.0).subtitles  # one line may last a short segment
    lines = ["where are you going", "home, it is late", "wait for me", "I will be quick", "then hurry up"]
    spoken = [put_text(scene(), line, 0.9) for line in lines]
    verdict = detector.judge(spoken, duration_s=10.0)
    assert verdict.subtitles and not verdict.slides
    assert verdict.evidence.startswith("subtitle line x 0.") and "in 5/5 samples, changing" in verdict.evidence


def test_a_wide_caption_overlay_needs_no_change(detector):
    overlay = [put_text(scene(), "BREAKING: RIVER FLOODS THE OLD TOWN", 0.2, scale=1.0) for _ in range(4)]
    verdict = detector.judge(overlay, duration_s=10.0)
    assert verdict.subtitles and verdict.evidence.startswith("caption overlay line") and "4/4 samples" in verdict.evidence


def slide(cursor: int) -> np.ndarray:
    frame = np.full((H, W, 3), (245, 245, 240), np.uint8)
    cv2.putText(frame, "Quarterly results", (140, 60), FONT, 1.2, (20, 20, 120), 3, cv2.LINE_AA)
    for i, bullet in enumerate(["- revenue grew in every region", "- costs fell by a tenth",
                                "- two new products shipped", "- hiring continues next year"]):
        cv2.putText(frame, bullet, (120, 140 + 50 * i), FONT, 0.8, (30, 30, 30), 2, cv2.LINE_AA)
    cv2.circle(frame, (500 + cursor, 320), 4, (0, 0, 0), -1)  # a mouse pointer
    return frame


def test_slides_are_told_apart_and_rejected_only_on_request(tmp_path):
    path = write_video(tmp_path / "slides.mp4", np.stack([slide(i // 8) for i in range(96)]), 24)
    cfg = AnalyzeConfig(motion=MotionConfig(flow_min=0.0))
    (row,) = ClipAnalyzer(cfg).analyze(InputClip(source_id="s", path=str(path)))
    assert row["slides"] is True and row["subtitles"] is False and row["reject_reasons"] == []
    assert row["subtitle_evidence"].startswith("slides")
    cfg.ocr.reject_slides = True
    (row,) = ClipAnalyzer(cfg).analyze(InputClip(source_id="s", path=str(path)))
    assert row["reject_reasons"] == ["slides"]
