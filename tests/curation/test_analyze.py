"""The per-clip analyzer on synthetic videos: cuts, motion, text, and bad input as error rows."""

from dataclasses import replace

import cv2
import numpy as np
import pytest

from soraplan.curation.analyze import AnalyzeConfig, ClipAnalyzer
from soraplan.curation.cuts import CutsConfig, merge_cuts, robust_outliers
from soraplan.core.inputs import InputClip
from soraplan.curation.ocr import OcrConfig, crop_box, judge_boxes
from soraplan.core.testing.media import scene_texture
from soraplan.core.video import write_video
from soraplan.curation.stages import split_segments


@pytest.fixture(scope="module")
def analyzer() -> ClipAnalyzer:
    return ClipAnalyzer(AnalyzeConfig())


def analyze(analyzer, path, **clip):
    return analyzer.analyze(InputClip(source_id=str(path), path=str(path), **clip))


def test_hard_cuts_split_the_clip_within_two_frames(analyzer, media):
    rows = analyze(analyzer, media["three_shots"])
    assert [r["status"] for r in rows] == ["kept", "kept", "kept"]
    cuts = np.asarray(rows[0]["cut_times_s"])
    assert np.abs(cuts - [2.5, 5.5]).max() <= 2 / 24 + 1e-6
    assert [(r["start_s"], r["end_s"]) for r in rows] == [(0.0, cuts[0]), (cuts[0], cuts[1]), (cuts[1], 8.0)]
    assert sum(r["num_frames"] for r in rows) == 192
    assert len({r["clip_id"] for r in rows}) == 3
    assert rows[0]["stage_seconds"]["decode"] > 0 and rows[1]["stage_seconds"] is None


def test_short_segments_are_rejected_and_skip_later_stages(analyzer, media):
    rows = analyze(analyzer, media["short_shot"])
    assert [r["reject_reasons"] for r in rows] == [[], ["too_short"], []]
    # Motion still scores the stub (it costs nothing); the costly stages skip it.
    assert rows[1]["motion_score"] > 0 and rows[1]["ocr_area_ratio"] is None


def test_a_still_stub_is_static_as_well_as_too_short(analyzer, tmp_path):
    texture = scene_texture(6, 180, 320)
    moving = [texture[:180, 2 * i : 2 * i + 320] for i in range(60)]
    still = [texture[100:280, 300:620]] * 30
    path = write_video(tmp_path / "stub.mp4", np.stack(moving + still + moving), fps=24)
    rows = analyze(analyzer, path)
    assert [r["reject_reasons"] for r in rows] == [[], ["too_short", "static"], []]


def test_score_all_scores_rejected_segments_too(media):
    scored = ClipAnalyzer(AnalyzeConfig(score_all=True))
    rows = scored.analyze(InputClip(source_id="s", path=str(media["short_shot"])))
    assert rows[1]["reject_reasons"] == ["too_short"]
    assert rows[1]["motion_score"] is not None and rows[1]["ocr_area_ratio"] is not None


def test_jump_cut_found_from_motion_outliers(tmp_path):
    # One scene, but the view jumps across it at frame 40: a jump cut. The shot detector is
    # switched off so only the outlier rule on the frame-skip distances can find it.
    texture = scene_texture(3, 180, 320)
    xs = [i for i in range(40)] + [260 + i for i in range(40)]
    frames = np.stack([texture[20:200, x : x + 320] for x in xs])
    path = write_video(tmp_path / "jump.mp4", frames, fps=20)
    cfg = AnalyzeConfig(cuts=CutsConfig(adaptive_threshold=1e9, min_content_val=1e9, min_seconds=1.0))
    rows = ClipAnalyzer(cfg).analyze(InputClip(source_id="j", path=str(path)))
    assert rows[0]["cut_times_s"] == [pytest.approx(2.0, abs=2 / 20)]
    no_jump = ClipAnalyzer(replace(cfg, cuts=replace(cfg.cuts, jump_cuts=False)))
    assert no_jump.analyze(InputClip(source_id="j", path=str(path)))[0]["cut_times_s"] == []


def test_motion_bounds(analyzer, media):
    static = analyze(analyzer, media["static"])
    moving = analyze(analyzer, media["moving"])
    assert static[0]["reject_reasons"] == ["static"] and static[0]["motion_backend"] == "flow"
    assert moving[0]["status"] == "kept"
    assert moving[0]["motion_score"] > 20 * max(static[0]["motion_score"], 1e-6)


def test_subtitles_are_rejected(analyzer, media):
    row = analyze(analyzer, media["subtitled"])[0]
    assert row["subtitles"] is True and row["reject_reasons"] == ["subtitles"]
    assert row["ocr_area_ratio"] > 0
    x0, x1, y0, y1 = row["crop"]
    assert 0.8 * 360 <= y1 < 360  # the subtitle band is cut off


def test_watermark_and_scene_text_do_not_reject(analyzer, tmp_path):
    texture = scene_texture(5, 360, 640)
    frames = []
    for i in range(72):
        frame = np.ascontiguousarray(texture[i : i + 360, i * 2 : i * 2 + 640])
        cv2.putText(frame, "soraplan.tv", (500, 345), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)
        # A sign in the scene: upper half, moving with the camera.
        cv2.putText(frame, "OPEN", (200 - i, 120), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (255, 255, 0), 4)
        frames.append(frame)
    path = write_video(tmp_path / "wm.mp4", np.stack(frames), fps=24)
    row = analyze(analyzer, path)[0]
    assert row["ocr_area_ratio"] > 0  # the text is seen
    assert row["subtitles"] is False and row["status"] == "kept"
    x0, x1, y0, y1 = row["crop"]
    assert x1 < 640 or y1 < 360  # the corner watermark is cropped away


@pytest.mark.parametrize("name, stage, message", [
    ("zero", "probe", "empty"), ("text", "probe", "not a readable media file"),
    ("truncated", "probe", "not a readable"), ("audio_only", "probe", "no video stream"),
])
def test_bad_files_become_error_rows(analyzer, bad_media, name, stage, message):
    rows = analyze(analyzer, bad_media[name])
    assert len(rows) == 1
    assert rows[0]["status"] == "error" and rows[0]["error_stage"] == stage and message in rows[0]["error"]


def test_one_frame_video_is_too_short(analyzer, media):
    rows = analyze(analyzer, media["one_frame"])
    assert len(rows) == 1 and rows[0]["reject_reasons"] == ["too_short"] and rows[0]["num_frames"] == 1


def test_span_outside_the_video_is_an_error(analyzer, media):
    rows = analyze(analyzer, media["moving"], start_s=10.0, end_s=12.0)
    assert rows[0]["status"] == "error" and "outside the video" in rows[0]["error"]


def test_span_of_a_longer_video(analyzer, media):
    rows = analyze(analyzer, media["three_shots"], start_s=3.0, end_s=7.5, caption="c", matching_score=0.3)
    assert rows[0]["start_s"] == 3.0 and rows[-1]["end_s"] == 7.5
    assert [r["caption"] for r in rows] == ["c", "c"] and rows[0]["matching_score"] == 0.3
    assert rows[0]["cut_times_s"] == [pytest.approx(5.5, abs=2 / 24)]


def test_rotated_and_vfr_videos_are_handled(analyzer, media):
    rotated = analyze(analyzer, media["rotated"])[0]
    assert (rotated["width"], rotated["height"]) == (96, 160) and rotated["status"] != "error"
    vfr = analyze(analyzer, media["vfr"])
    assert vfr[0]["status"] != "error"
    assert vfr[-1]["end_s"] == pytest.approx(3.7, abs=0.11)  # 60 x 20 ms + 25 x 100 ms, by timestamps
    assert sum(r["num_frames"] for r in vfr) == 86


def test_outlier_rule_and_merging():
    values = np.array([1.0, 1.1, 0.9, 1.0, 9.0, 1.05, 0.95])
    assert robust_outliers(values, z=8, min_ratio=3).tolist() == [4]
    assert robust_outliers(np.ones(10), z=8, min_ratio=3).tolist() == []
    # A tiny change in a near-still sequence is a large multiple of its median, but no cut.
    still = np.array([0.011, 0.003, 0.003, 0.003, 0.0031])
    assert robust_outliers(still, z=8, min_ratio=3).tolist() == [0]
    assert robust_outliers(still, z=8, min_ratio=3, floor=0.03).tolist() == []
    assert merge_cuts([1.0, 5.0], [1.1, 3.0, 3.2], merge_s=0.25, min_gap_s=0.5) == [1.0, 3.0, 5.0]
    assert split_segments(0.0, 6.0, [1.0, 5.0, 7.0]) == [(0.0, 1.0), (1.0, 5.0), (5.0, 6.0)]


def test_text_judgement_rules():
    cfg = OcrConfig()
    subtitle = np.array([[220.0, 320, 420, 345]])
    corner = np.array([[540.0, 330, 630, 350]])
    frames = [subtitle, subtitle, np.zeros((0, 4))]
    assert judge_boxes(frames, 640, 360, cfg).subtitles is True
    one_of_four = [subtitle] + [np.zeros((0, 4))] * 3
    assert judge_boxes(one_of_four, 640, 360, cfg).subtitles is False  # a single sighting is not enough
    assert judge_boxes([corner] * 3, 640, 360, cfg).subtitles is False
    # A wide caption line held mid-frame is an overlay; a wide line that moves is scene text.
    overlay = np.array([[100.0, 180, 500, 220]])
    assert judge_boxes([overlay, overlay + 2, np.zeros((0, 4))], 640, 360, cfg).subtitles is True
    moving = [overlay + [i * 150, 0, i * 150, 0] for i in range(3)]
    assert judge_boxes(moving, 640, 360, cfg).subtitles is False
    watermark_line = np.array([[20.0, 300, 330, 325]])  # wide but left-aligned, like a copyright line
    assert judge_boxes([watermark_line] * 3, 640, 360, cfg).subtitles is False
    # Edge text is cropped away; text reaching deeper than max_crop cannot be and stays.
    assert crop_box(np.array([[0.0, 0, 640, 60]]), 640, 360, cfg) == (0, 640, 60, 360)
    assert crop_box(np.array([[0.0, 0, 640, 100]]), 640, 360, cfg) == (0, 640, 0, 360)
    assert crop_box(corner, 640, 360, cfg) == (0, 640, 0, 330)


def test_low_resolution_toy_shots_keep_their_spans_and_subtitles_are_found(analyzer, tmp_path):
    """64x64 shots of a small shape on black: no jump cut inside a shot (the first sampled pair
    differs slightly after the encoder's scene-cut keyframe), and a two-line subtitle, whose
    detector boxes are ~11-14 px tall (over 15% of 64 px), is still a subtitle."""
    from soraplan.core.testing.toyworld import FPS, SHOT_FRAMES, random_shot

    rng = np.random.default_rng(0)
    shots = [random_shot(rng, "a red circle moving left"), random_shot(rng, "a blue square moving up"),
             random_shot(rng, "a green square moving right", subtitled=True),
             random_shot(rng, "a yellow circle moving down")]
    path = write_video(tmp_path / "toy.mp4", np.concatenate([s.frames() for s in shots]), FPS)
    span = SHOT_FRAMES / FPS
    for i, shot in enumerate(shots):
        (row,) = analyze(analyzer, path, start_s=i * span, end_s=(i + 1) * span)
        assert row["cut_times_s"] == [], (i, row["cut_times_s"])
        assert row["reject_reasons"] == (["subtitles"] if shot.subtitles else []), (i, row)
