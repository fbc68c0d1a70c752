"""The PaddleOCR text backend: a clear error without the extra, and the same verdicts with it."""

import sys
import types

import numpy as np
import pytest

from soraplan.curation.ocr import OcrConfig, PaddleTextDetector, judge_boxes


def test_missing_paddleocr_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "paddleocr", None)  # import fails as if not installed
    with pytest.raises(ImportError, match="optional `paddle` extra"):
        OcrConfig(backend="paddle").build()


def test_paddle_boxes_feed_the_shared_judge(monkeypatch):
    calls = {}

    class FakeTextDetection:  # PaddleOCR 3.x's module API: predict() -> [{"dt_polys": quads}]
        def __init__(self, **kwargs):
            calls["init"] = kwargs

        def predict(self, image, batch_size):
            calls["shape"] = image.shape
            quad = [[200, 300], [440, 300], [440, 330], [200, 330]]  # a centred subtitle line
            return [{"dt_polys": np.asarray([quad])}]

    monkeypatch.setitem(sys.modules, "paddleocr", types.SimpleNamespace(TextDetection=FakeTextDetection))
    cfg = OcrConfig(backend="paddle", paddle_model_dir="/models/det")
    detector = cfg.build()
    assert isinstance(detector, PaddleTextDetector)
    assert calls["init"]["model_dir"] == "/models/det" and calls["init"]["limit_side_len"] == cfg.det_limit_side_len
    frames = [np.zeros((360, 640, 3), np.uint8)] * 3
    assert np.array_equal(detector.boxes(frames[0]), [[200, 300, 440, 330]])
    verdict = detector.judge(frames)
    assert verdict.subtitles
    assert verdict == judge_boxes([np.asarray([[200.0, 300, 440, 330]])] * 3, 640, 360, cfg)
