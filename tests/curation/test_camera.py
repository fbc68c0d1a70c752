"""The camera-motion stage on synthetic camera work: pans, tilts, zooms, shake, a still view and
a locked-off view with small moving subjects."""

import numpy as np
import pytest

from soraplan.core.inputs import InputClip
from soraplan.core.video import write_video
from soraplan.curation.analyze import AnalyzeConfig, ClipAnalyzer
from soraplan.curation.camera import CameraConfig, fit_camera
from soraplan.curation.motion import MotionConfig
from soraplan.curation.ocr import OcrConfig
from soraplan.curation.testing import CAMERA_KINDS, EXPECTED_LABEL, camera_clip


@pytest.fixture(scope="module")
def analyzer() -> ClipAnalyzer:
    return ClipAnalyzer(AnalyzeConfig(motion=MotionConfig(flow_min=0.0), ocr=OcrConfig(enabled=False)))


@pytest.mark.parametrize("kind", CAMERA_KINDS)
def test_camera_labels(analyzer, tmp_path, kind):
    path = write_video(tmp_path / f"{kind}.mp4", camera_clip(kind, seed=3), 24)
    (row,) = analyzer.analyze(InputClip(source_id=kind, path=str(path)))
    assert row["camera_motion"] == EXPECTED_LABEL.get(kind, kind), row
    if kind == "locked_off":  # the subjects move, the camera does not
        assert row["subject_motion_score"] > 3 * row["camera_motion_score"]
        assert row["motion_score"] > 0


def test_locked_off_view_can_be_rejected(tmp_path):
    path = write_video(tmp_path / "locked.mp4", camera_clip("locked_off", seed=1), 24)
    cfg = AnalyzeConfig(motion=MotionConfig(flow_min=0.0), ocr=OcrConfig(enabled=False),
                        camera=CameraConfig(reject_locked_off_below=0.01))
    (row,) = ClipAnalyzer(cfg).analyze(InputClip(source_id="l", path=str(path)))
    assert row["reject_reasons"] == ["locked_off"]


def test_the_lpips_free_path_measures_flow_itself(tmp_path):
    """Without the flow backend's fields (another frame_skip here) the stage measures the same."""
    path = write_video(tmp_path / "pan.mp4", camera_clip("pan_left", seed=2), 24)
    cfg = AnalyzeConfig(motion=MotionConfig(flow_min=0.0, frame_skip=3), ocr=OcrConfig(enabled=False))
    (row,) = ClipAnalyzer(cfg).analyze(InputClip(source_id="p", path=str(path)))
    assert row["camera_motion"] == "pan_left"


def test_the_stage_reuses_the_flow_backends_frames_and_fields_when_they_match(tmp_path):
    path = write_video(tmp_path / "zoom.mp4", camera_clip("zoom_in", seed=3), 24)
    clip = InputClip(source_id="z", path=str(path))
    shared = ClipAnalyzer(AnalyzeConfig(motion=MotionConfig(flow_min=0.0), ocr=OcrConfig(enabled=False)))
    # Flow at another size: the camera stage keeps its own frames and measures them itself.
    own = ClipAnalyzer(AnalyzeConfig(motion=MotionConfig(flow_min=0.0, flow_short_side=96), ocr=OcrConfig(enabled=False)))
    (a,), (b,) = shared.analyze(clip), own.analyze(clip)
    assert shared.stage("camera").reuses_flow and not own.stage("camera").reuses_flow
    assert a["camera_motion"] == b["camera_motion"] == "zoom_in"
    assert a["camera_motion_score"] == b["camera_motion_score"]
    assert a["subject_motion_score"] == b["subject_motion_score"]


def test_fit_recovers_shift_and_zoom():
    ys, xs = np.mgrid[0:32, 0:57].astype(np.float32) * 4
    zoom = 0.05  # flow = 5% of the distance from the centre
    flow = np.stack([3.0 + zoom * (xs - xs.mean()), -2.0 + zoom * (ys - ys.mean())], axis=-1)
    flow[10:14, 20:24] += 15.0  # a moving subject the fit leaves out
    params, camera, subject = fit_camera(flow, stride=4)
    short = 32 * 4
    assert params[:2] == pytest.approx([3.0 / short, -2.0 / short], rel=1e-3)
    assert params[2] == pytest.approx(zoom * short / 2 / short, rel=1e-3)
    assert abs(params[3]) < 1e-6 and subject > 0 and camera > 0
