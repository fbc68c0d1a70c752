"""Jump-cut confirmation on synthetic clips, one per kind of false cut (and the real cut that
only jump cuts find). The scene detector is switched off, so every cut here is a jump cut."""

import cv2
import numpy as np
import pytest

from soraplan.core.inputs import InputClip
from soraplan.core.testing.media import scene_texture
from soraplan.core.video import write_video
from soraplan.curation.analyze import AnalyzeConfig, ClipAnalyzer
from soraplan.curation.cuts import CutsConfig, opens_dark
from soraplan.curation.motion import MotionConfig
from soraplan.curation.ocr import OcrConfig

FPS = 24
H, W = 180, 320


def jump_cuts(path, **cuts) -> tuple[list[float], ClipAnalyzer]:
    cfg = AnalyzeConfig(cuts=CutsConfig(adaptive_threshold=1e9, min_content_val=255, min_seconds=0.5, **cuts),
                        ocr=OcrConfig(enabled=False))
    analyzer = ClipAnalyzer(cfg)
    rows = analyzer.analyze(InputClip(source_id="c", path=str(path)))
    assert rows[0]["scene_cut_times_s"] == []
    assert set(rows[0]["cut_times_s"]) <= set(rows[0]["jump_cut_times_s"])
    return rows[0]["cut_times_s"], analyzer


def pan(texture: np.ndarray, frames: int, speed: float, blur: int = 0, y: int = 0, x0: int = 0) -> list[np.ndarray]:
    """Frames of a horizontal pan across `texture` (no wrap-around), optionally motion-blurred."""
    out = []
    for i in range(frames):
        x = x0 + int(i * speed)
        frame = np.ascontiguousarray(texture[y : y + H, x : x + W])
        out.append(cv2.blur(frame, (blur, 1)) if blur else frame)
    return out


def candidates(analyzer: ClipAnalyzer, path) -> dict[int, str | None]:
    """Every jump-cut candidate of the clip, with the reason it was not confirmed."""
    stage = analyzer.stage("cuts")
    ctx = analyzer.decode(InputClip(source_id="c", path=str(path)), __import__("collections").defaultdict(float))
    return {p: stage.rejects_jump(p) for p in stage.jump_candidates(ctx)}


def test_black_leader_is_no_cut(tmp_path):
    shot = pan(scene_texture(1, H, W), 72, 3.0)
    frames = [np.full((H, W, 3), 4, np.uint8)] * 24 + shot
    path = write_video(tmp_path / "leader.mp4", np.stack(frames), FPS)
    cuts, analyzer = jump_cuts(path)
    assert cuts == []
    found = candidates(analyzer, path)
    assert any(reason == "end of a dark leader or fade-in" for reason in found.values()), found
    unconfirmed, _ = jump_cuts(path, confirm_jumps=False)
    assert unconfirmed == [pytest.approx(1.0, abs=2 / FPS)]  # the outlier rule alone cut it


def test_fade_in_is_no_cut_but_a_later_cut_is():
    luma = [0.01] * 10 + [0.05 + 0.03 * i for i in range(15)]
    assert opens_dark(luma, 0.08)
    assert not opens_dark(luma + [0.5, 0.5, 0.5], 0.08)  # a held shot after the fade
    assert not opens_dark([0.3] + luma, 0.08)


def test_sudden_local_motion_in_a_quiet_shot_is_no_cut(tmp_path):
    # A locked-off view; a figure stands still, then darts across the frame in a few frames.
    background = scene_texture(2, H, W)[:H, :W].copy()
    frames = []
    for i in range(96):
        frame = background.copy()
        x = 20 if i < 50 else min(260, 20 + (i - 50) * 40)
        cv2.rectangle(frame, (x, 60), (x + 80, 170), (250, 30, 30), -1)
        frames.append(frame)
    path = write_video(tmp_path / "local.mp4", np.stack(frames), FPS)
    assert jump_cuts(path, confirm_jumps=False)[0] != []  # an outlier against a near-zero median
    assert jump_cuts(path)[0] == []


def test_tiny_change_in_a_still_shot_is_no_cut_even_without_a_motion_floor(tmp_path):
    still = scene_texture(3, H, W)[:H, :W].copy()
    frames = []
    for i in range(96):
        frame = still.copy()
        if i >= 48:  # a small lamp switches on
            frame[20:32, 150:162] = 255
        frames.append(frame)
    path = write_video(tmp_path / "still.mp4", np.stack(frames), FPS)
    # Without the motion backend's floor the lamp is a huge multiple of the still clip's median;
    # the confirmation's own absolute minimum (picture change) still refuses it.
    cfg = AnalyzeConfig(cuts=CutsConfig(adaptive_threshold=1e9, min_content_val=255),
                        motion=MotionConfig(flow_jump_floor=0.0), ocr=OcrConfig(enabled=False))
    found = candidates(ClipAnalyzer(cfg), path)
    assert 48 in found and all(reason.startswith("picture change") for reason in found.values()), found


def test_cut_between_fast_blurred_shots_is_kept(tmp_path):
    a = pan(scene_texture(4, H, W), 60, 5.0, blur=15)
    b = pan(scene_texture(5, H, W), 60, -5.0, blur=15, y=90, x0=310)
    path = write_video(tmp_path / "fast.mp4", np.stack(a + b), FPS)
    cuts, _ = jump_cuts(path)
    assert cuts == [pytest.approx(60 / FPS, abs=2 / FPS)]


def test_shrink_keeps_the_picture_of_an_area_resize_at_any_factor():
    from soraplan.curation.stages import shrink

    frame = np.ascontiguousarray(cv2.GaussianBlur(scene_texture(3, 360, 640), (0, 0), 2)[:360, :640])
    for size in [(256, 144), (228, 128), (320, 180), (640, 360)]:
        small = shrink(frame, size)
        area = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        assert small.shape == area.shape and small.dtype == np.uint8
        assert np.abs(small.astype(int) - area).mean() < 3.0, size
    assert shrink(frame, (640, 360)) is frame  # no resize at the same size
    assert shrink(frame[:64, :64], (128, 128)).shape == (128, 128, 3)  # enlarging works too
