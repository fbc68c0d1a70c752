"""The toy world's generator and checker (the checker must be right before it judges a model)."""

import json

import numpy as np
import pytest

from soraplan.core.config import ConfigError, load_config
from soraplan.core.inputs import read_inputs
from soraplan.core.testing.toyworld import (
    COLOURS,
    DEFAULT_HOLDOUT,
    SHOT_FRAMES,
    SIZE,
    WorldConfig,
    all_captions,
    check_samples,
    judge_video,
    make_world,
    parse_caption,
    random_shot,
    write_samples,
)
from soraplan.core.testing.toyworld_cli import main
from soraplan.core.video import probe


def test_captions_parse_back():
    captions = all_captions()
    assert len(captions) == 32 == len(set(captions))
    assert parse_caption("a red circle moving left") == ("red", "circle", "left")
    assert parse_caption("a blue square standing still") == ("blue", "square", "still")
    assert parse_caption("a purple circle moving left") is None


def test_shots_stay_in_frame_and_move_two_pixels_a_frame():
    rng = np.random.default_rng(0)
    for caption in all_captions():
        frames = random_shot(rng, caption).frames()
        assert frames.shape == (SHOT_FRAMES, SIZE, SIZE, 3)
        masks = frames.max(-1) > 80
        assert masks[:, 0].sum() == masks[:, -1].sum() == masks[:, :, 0].sum() == masks[:, :, -1].sum() == 0
        centres = np.array([np.argwhere(m).mean(0) for m in masks])
        steps = np.abs(np.diff(centres, axis=0)).sum(1)
        np.testing.assert_allclose(steps, 2.0, atol=1e-6)


def test_checker_is_right_on_ground_truth_videos_and_near_chance_on_noise(tmp_path):
    rng = np.random.default_rng(1)
    truth = [(random_shot(rng, c).frames(), c, s) for c in all_captions() for s in (0, 1)]
    figures = check_samples(write_samples(tmp_path / "truth", truth), DEFAULT_HOLDOUT)
    assert figures["all"] == {"videos": 64, "colour": 1.0, "direction": 1.0, "shape": 1.0, "one_blob": 1.0}
    assert figures["held_out"]["videos"] == 8 and figures["trained"]["videos"] == 56
    noise = [(rng.integers(0, 256, (SHOT_FRAMES, SIZE, SIZE, 3), dtype=np.uint8), c, s)
             for c in all_captions() for s in (0, 1)]
    chance = check_samples(write_samples(tmp_path / "noise", noise))["all"]
    assert chance["colour"] == pytest.approx(0.25, abs=0.15)
    assert chance["direction"] == pytest.approx(0.25, abs=0.15)
    assert chance["shape"] == pytest.approx(0.5, abs=0.2)
    assert chance["one_blob"] == 0.0
    assert judge_video(np.zeros((SHOT_FRAMES, SIZE, SIZE, 3), np.uint8)).colour is None


def test_world_on_disk_reads_as_a_panda70m_manifest(tmp_path):
    summary = make_world(tmp_path, WorldConfig(videos=3, min_shots=4, max_shots=5, still_share=0.2,
                                               subtitle_share=0.2, seed=3))
    shots = json.loads((tmp_path / "world.json").read_text())["shots"]
    assert summary["shots"] == len(shots) and summary["good"] + summary["still"] + summary["subtitled"] == len(shots)
    clips = read_inputs(tmp_path / "manifest.csv")
    assert [c.error for c in clips] == [None] * len(shots)
    assert [c.caption for c in clips] == [s["caption"] for s in shots]
    assert all(c.end_s - c.start_s == pytest.approx(SHOT_FRAMES / 8) for c in clips)
    assert not {s["caption"] for s in shots} & set(DEFAULT_HOLDOUT)
    info = probe(tmp_path / "videos" / "toy0000.mp4")
    assert (info.width, info.height, info.fps) == (SIZE, SIZE, pytest.approx(8.0))
    # Colours survive H.264 (4:2:0): the checker reads each good shot of the source right.
    first = [s for s in shots if s["video"] == "toy0000" and s["kind"] == "good"][0]
    from soraplan.core.video import iter_frames

    frames = np.stack([f.image for f in iter_frames(tmp_path / "videos" / "toy0000.mp4", first["start_s"],
                                                    first["end_s"])])
    reading = judge_video(frames)
    assert parse_caption(first["caption"]) == (reading.colour, reading.shape, reading.direction)
    assert set(COLOURS) >= {reading.colour}


def test_world_config_rules():
    with pytest.raises(ConfigError, match="holdout captions not in the world"):
        load_config(WorldConfig, None, ["holdout=[a pink circle moving up]"])
    with pytest.raises(ConfigError, match="min_shots"):
        load_config(WorldConfig, None, ["min_shots=5", "max_shots=4"])


def test_cli_make_and_check(tmp_path, capsys):
    main(["make", "--out", str(tmp_path / "w"), "--videos", "1", "world.min_shots=2", "world.max_shots=2"])
    assert json.loads(capsys.readouterr().out)["shots"] == 2
    rng = np.random.default_rng(2)
    write_samples(tmp_path / "s", [(random_shot(rng, "a red square moving up").frames(), "a red square moving up", 0)])
    main(["check", "--samples", str(tmp_path / "s")])
    out = json.loads(capsys.readouterr().out)
    assert out["held_out"]["videos"] == 1 and out["all"]["colour"] == 1.0
    with pytest.raises(SystemExit) as exc:
        main(["check", "--samples", str(tmp_path / "nothing")])
    assert exc.value.code == 2


def test_report_shows_every_sample_with_its_verdicts_and_the_loss_curves(tmp_path):
    from soraplan.core.config import to_dict
    from soraplan.core.testing.toyworld_report import write_report
    from soraplan.core.testing.toyworld_run import ToyRunConfig, last_metrics

    rng = np.random.default_rng(2)
    items = [(random_shot(rng, c).frames(), c, 0) for c in all_captions()[:3]]
    items.append((random_shot(rng, all_captions()[5]).frames(), all_captions()[0], 1))  # wrong clip
    write_samples(tmp_path / "samples", items)
    (tmp_path / "dit").mkdir()
    (tmp_path / "dit" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 101)))
    training = last_metrics(tmp_path / "dit" / "metrics.jsonl")
    assert training == {"steps": 100, "loss_first": pytest.approx(0.4567, abs=1e-3),
                        "loss_last": pytest.approx(0.0102, abs=1e-3)}
    assert last_metrics(tmp_path / "absent.jsonl") == {}

    samples = check_samples(tmp_path / "samples", DEFAULT_HOLDOUT)
    summary = {"config": to_dict(ToyRunConfig()), "figures": {k: v for k, v in samples.items() if k != "videos"},
               "targets": {"colour": 0.9, "direction": 0.8, "shape": 0.7, "one_blob": 0.9},
               "curation": {"by_kind": {"good": {"rows": 3, "kept": 3}, "still": {"rows": 1, "kept": 0, "static": 1}}},
               "vae_reconstructions": {"videos": 0}, "stage_seconds": {"world": 3.0}, "total_minutes": 0.1}
    page = write_report(tmp_path, summary, samples["videos"]).read_text()
    assert page.count("<img") == 4 and page.count("data:image/gif;base64,") == 4
    assert all(c in page for c in all_captions()[:3])
    assert page.count("class='bad'") >= 1 and "static: 1" in page
    assert "DiT: step 1 to 100" in page and "WF-VAE: no metrics.jsonl" in page
