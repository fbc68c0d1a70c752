import json
from pathlib import Path

import numpy as np
import pytest

from soraplan.captioner.caption import CaptionJobConfig, main, run
from soraplan.captioner.frames import FrameSamplingConfig, clip_frames
from soraplan.captioner.hub import ModelSourceError
from soraplan.captioner.prompts import PromptConfig
from soraplan.captioner.vlm import VLMConfig
from soraplan.core.config import load_config
from soraplan.core.inputs import folder_video_id, span_id
from soraplan.core.schema import read_clip_table
from soraplan.core.video import VideoDecodeError

from .conftest import CAPTION_PROMPTS, REPO


def job_config(model_dir, input_dir, out_dir, **kw) -> CaptionJobConfig:
    cfg = CaptionJobConfig(input=str(input_dir), out=str(out_dir), prompt=PromptConfig(file=str(CAPTION_PROMPTS)), **kw)
    cfg.vlm = VLMConfig(model=str(model_dir), dtype="float32", device="cpu")
    cfg.vlm.generation.max_new_tokens = 8
    cfg.ray.batch_size = 2
    cfg.ray.num_cpus = 0.5
    cfg.decode_num_cpus = 0.25
    cfg.part_rows = 2
    return cfg


def test_clip_frames_applies_crop_and_span(clip_shards):
    table = read_clip_table(clip_shards).to_pylist()
    rows = {r["clip_id"]: r for r in table}
    cfg = FrameSamplingConfig(short_side=24)
    full = clip_frames(rows["c0"], cfg)
    assert full.frames.shape == (3, 24, 32, 3) and full.times_s == pytest.approx([0.125, 0.875, 1.75], abs=0.13)
    cropped = clip_frames(rows["c1"], cfg)  # crop 48 x 48 -> short side 24
    assert cropped.frames.shape == (3, 24, 24, 3)
    span = clip_frames(rows["c2"], FrameSamplingConfig(mode="uniform", num_frames=2))
    assert all(0.5 <= t < 1.5 for t in span.times_s)
    probed = clip_frames({"path": rows["c0"]["path"]}, cfg)  # a bare directory clip
    assert probed.end_s == pytest.approx(2.0) and (probed.width, probed.height) == (64, 48)
    with pytest.raises(VideoDecodeError):
        clip_frames(rows["bad"], cfg)


def test_vlm_captioner_loads_by_path_and_batches(tiny_llava_dir):
    prompt = PromptConfig(file=str(CAPTION_PROMPTS), id="video_dense").build()
    cfg = VLMConfig(model=str(tiny_llava_dir), dtype="float32", device="cpu")
    cfg.generation.max_new_tokens = 6
    captioner = cfg.build(prompt)
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 255, (n, 40, 56, 3), dtype=np.uint8) for n in (3, 2, 3)]
    batched = captioner.caption(clips)
    single = [captioner.caption([c])[0] for c in clips]
    assert [c.error for c in batched] == [None] * 3
    assert all(isinstance(c.text, str) and 1 <= c.num_tokens <= 6 for c in batched)
    # Left padding makes batched greedy decoding equal to one-at-a-time decoding.
    assert [c.text for c in batched] == [c.text for c in single]
    # Clips that cannot be captioned get errors; the others in the batch are unaffected.
    bad_channels = np.zeros((2, 40, 56, 5), np.uint8)
    mixed = captioner.caption([clips[0], np.zeros((0, 40, 56, 3), np.uint8), bad_channels, clips[2]])
    assert [m.text for m in mixed[::3]] == [batched[0].text, batched[2].text]
    assert mixed[1].text is None and mixed[1].error == "no frames to caption"
    assert mixed[2].text is None and mixed[2].error.startswith("generation failed")


@pytest.mark.parametrize("frames_as", ["images", "video"])
def test_qwen2_vl_frames_as_images_or_video(tiny_qwen2_vl_dir, frames_as):
    prompt = PromptConfig(file=str(CAPTION_PROMPTS)).build()
    cfg = VLMConfig(model=str(tiny_qwen2_vl_dir), dtype="float32", device="cpu", frames_as=frames_as)
    cfg.generation.max_new_tokens = 5
    captioner = cfg.build(prompt)
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 255, (4, 56, 84, 3), dtype=np.uint8) for _ in range(2)]
    captions = captioner.caption(clips)
    assert [c.error for c in captions] == [None, None]
    assert all(isinstance(c.text, str) and 1 <= c.num_tokens <= 5 for c in captions)
    text = captioner.processor.apply_chat_template(captioner._messages(4, prompt.clip_text("pan_left")), add_generation_prompt=True, tokenize=False)
    assert text.count("<|video_pad|>" if frames_as == "video" else "<|image_pad|>") == (1 if frames_as == "video" else 4)
    assert "The camera pans left." in text


def test_llava_next_video_takes_frames_as_one_video(tiny_llava_next_video_dir, tiny_llava_dir, monkeypatch):
    """frames_as=auto: one video of N frames for LLaVA-NeXT-Video, N images for LLaVA (no video processor)."""
    prompt = PromptConfig(file=str(CAPTION_PROMPTS)).build()
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 255, (3, 40, 56, 3), dtype=np.uint8) for _ in range(2)]
    seen, processors = {}, {}
    for name, model_dir in [("video", tiny_llava_next_video_dir), ("images", tiny_llava_dir)]:
        cfg = VLMConfig(model=str(model_dir), dtype="float32", device="cpu")
        cfg.generation.max_new_tokens = 5
        captioner = cfg.build(prompt)
        processors[name] = captioner.processor
        generate = captioner.model.generate

        def spy(**inputs):
            seen[name] = inputs
            return generate(**inputs)

        monkeypatch.setattr(captioner.model, "generate", spy)
        captions = captioner.caption(clips)
        assert captioner.frames_as == name and [c.error for c in captions] == [None, None]
        assert all(isinstance(c.text, str) and 1 <= c.num_tokens <= 5 for c in captions)
    # 2 clips -> 2 videos of 3 frames at the processor's 32 px; each frame is 16 patches pooled to 4 tokens.
    assert "pixel_values" not in seen["video"] and tuple(seen["video"]["pixel_values_videos"].shape) == (2, 3, 3, 32, 32)
    assert (seen["video"]["input_ids"] == processors["video"].video_token_id).sum(dim=1).tolist() == [3 * 4, 3 * 4]
    assert "pixel_values_videos" not in seen["images"] and tuple(seen["images"]["pixel_values"].shape) == (6, 3, 32, 32)
    with pytest.raises(ValueError, match="vlm.frames_as=images"):
        VLMConfig(model=str(tiny_llava_dir), dtype="float32", device="cpu", frames_as="video").build(prompt)


def test_videos_of_different_lengths_are_batched_by_length(tiny_llava_next_video_dir, monkeypatch):
    cfg = VLMConfig(model=str(tiny_llava_next_video_dir), dtype="float32", device="cpu")
    cfg.generation.max_new_tokens = 5
    captioner = cfg.build(PromptConfig(file=str(CAPTION_PROMPTS)).build())
    rng = np.random.default_rng(1)
    clips = [rng.integers(0, 255, (n, 40, 56, 3), dtype=np.uint8) for n in (3, 5, 3)]  # `fps` sampling
    single = [captioner.caption([c])[0] for c in clips]
    generate, frames_per_call = captioner.model.generate, []

    def spy(**inputs):
        frames_per_call.append(tuple(inputs["pixel_values_videos"].shape[:2]))
        return generate(**inputs)

    monkeypatch.setattr(captioner.model, "generate", spy)
    assert captioner.caption(clips) == single
    assert sorted(frames_per_call) == [(1, 5), (2, 3)]  # no failed mixed batch, no clip-by-clip retry


def test_missing_model_fails_before_reading_data(tmp_path):
    cfg = job_config(tmp_path / "no_such_model", tmp_path / "no_such_input", tmp_path / "out")
    with pytest.raises(ModelSourceError, match="vlm.model"):
        run(cfg)
    cfg.vlm.model = ""
    with pytest.raises(ModelSourceError, match="vlm.model"):
        run(cfg)
    assert not (tmp_path / "out").exists()


def test_caption_job_end_to_end_with_resume(ray_session, tiny_llava_dir, clip_shards, tmp_path):
    out = tmp_path / "captioned"
    cfg = job_config(tiny_llava_dir, clip_shards, out, limit=3)  # an interrupted run: c0, c1, bad
    first = run(cfg)
    assert first["processed_this_run"] == 3 and first["rows_out"] == first["rows_in"] == 5
    assert first["captioned"] == 2 and first["errors"] == 1 and first["missing"] == 1
    captions_before = {r["clip_id"]: r["vlm_caption"] for r in read_clip_table(out).to_pylist()}
    (out / "parts" / "part-99999999999999999999-cutoff.parquet").write_bytes(b"PAR1 cut off mid-write")

    cfg.limit = None
    second = run(cfg)  # resumes: c2 is new, the corrupt clip is retried, c0 and c1 are kept
    assert second["processed_this_run"] == 2 and second["resumed_from_previous_runs"] == 2
    assert [p.name for p in (out / "partial").iterdir()] == ["part-99999999999999999999-cutoff.parquet"]
    assert second["kept"] == 4 and second["captioned"] == 3 and second["errors"] == 1 and second["missing"] == 0
    assert second["generated_tokens"] > 0 and second["tokens_per_s"] > 0
    assert json.loads((out / "summary.json").read_text()) == second

    table = read_clip_table(out)
    assert sorted(table["clip_id"].to_pylist()) == ["bad", "c0", "c1", "c2", "rej"]
    rows = {r["clip_id"]: r for r in table.to_pylist()}
    assert {c: rows[c]["vlm_caption"] for c in ["c0", "c1"]} == {c: captions_before[c] for c in ["c0", "c1"]}
    for cid in ["c0", "c1", "c2"]:
        assert isinstance(rows[cid]["vlm_caption"], str) and rows[cid]["caption_error"] is None
        assert rows[cid]["caption_model"] == str(tiny_llava_dir) and rows[cid]["caption_prompt"] == "video_describe"
    assert rows["bad"]["vlm_caption"] is None and rows["bad"]["caption_error"].startswith("decode failed")
    assert rows["rej"]["vlm_caption"] is None and rows["rej"]["reject_reasons"] == ["static"]
    assert rows["c1"]["crop"] == [8, 56, 0, 48]  # input columns pass through unchanged

    # Greedy captions do not depend on batching or on Ray: the job equals captioning in process,
    # each clip asked with the camera move curation measured on it.
    from soraplan.captioner.frames import clip_frames

    prompt = cfg.prompt.build()
    prompts = [prompt.clip_text(rows[c]["camera_motion"]) for c in ["c0", "c1", "c2"]]
    assert "The camera pans left. Describe only" in prompts[0] and "The camera zooms in." in prompts[2]
    assert prompts[1] == prompt.clip_text() and "{camera_motion}" not in prompts[1] and "  " not in prompts[1]
    captioner = cfg.vlm.build(prompt)
    direct = captioner.caption([clip_frames(rows[c], cfg.frames).frames for c in ["c0", "c1", "c2"]], prompts)
    assert [d.text for d in direct] == [rows[c]["vlm_caption"] for c in ["c0", "c1", "c2"]]


def test_caption_job_with_llava_next_video(ray_session, tiny_llava_next_video_dir, clip_shards, tmp_path):
    cfg = job_config(tiny_llava_next_video_dir, clip_shards, tmp_path / "captioned")
    cfg.frames.short_side = 48
    summary = run(cfg)
    assert summary["kept"] == 4 and summary["captioned"] == 3 and summary["errors"] == 1 and summary["rows_out"] == 5
    rows = {r["clip_id"]: r for r in read_clip_table(tmp_path / "captioned").to_pylist()}
    for cid in ["c0", "c1", "c2"]:
        assert isinstance(rows[cid]["vlm_caption"], str) and rows[cid]["vlm_caption"].strip()
        assert rows[cid]["caption_error"] is None and rows[cid]["caption_model"] == str(tiny_llava_next_video_dir)
    assert rows["bad"]["caption_error"].startswith("decode failed") and rows["bad"]["caption_model"] == str(tiny_llava_next_video_dir)


def test_cli_on_directory_of_clips(ray_session, tiny_llava_dir, clip_shards, tmp_path):
    out = tmp_path / "dir_out"
    config = REPO / "pipelines" / "configs" / "caption_tiny.yaml"
    main([
        "--config", str(config), "--input", str(clip_shards / "videos"), "--out", str(out),
        f"vlm.model={tiny_llava_dir}", f"prompt.file={CAPTION_PROMPTS}",
    ])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_out"] == 4 and summary["captioned"] == 3 and summary["errors"] == 1
    # Clip ids are core's folder ids (file stem + hash of the relative path, whole-file span).
    rows = {Path(r["path"]).stem: r for r in read_clip_table(out).to_pylist()}
    assert rows["clip0"]["clip_id"] == span_id(folder_video_id(clip_shards / "videos", rows["clip0"]["path"]), 0.0, None)
    assert rows["clip0"]["end_s"] == pytest.approx(2.0) and rows["clip0"]["width"] == 64
    assert rows["corrupt"]["caption_error"].startswith("decode failed")
    assert (out / "run.yaml").is_file()
    cfg = load_config(CaptionJobConfig, config)
    assert cfg.ray.num_cpus < 1  # the shipped CPU config must not deadlock a 2-CPU node


@pytest.mark.parametrize("argv, message", [
    ([], "soraplan-caption: set both --input (or input=) and --out (or out=)"),
    (["--input", "x", "--out", "y", "ray.batch_size=0"], "ray.batch_size: 0 is out of range"),
    (["--input", "x", "--out", "y", "actors.batch_size=4"], "unknown config key(s) ['actors']"),
    (["--input", "x", "--out", "y", "frames.positions=[0.5, 1.5]"], "frames.positions[1]: 1.5 is out of range"),
    (["--input", "x", "--out", "y", "ray.num_cpus=0.5", "decode_num_cpus=0.5"], "give them different values"),
    (["--input", "x", "--out", "y", "vlm.model=/no/such/model"], "model path does not exist: /no/such/model; set vlm.model"),
    (["--input", "x", "--out", "y", "ray.address=auto"], "--input x is a relative path, and this job joins the Ray cluster"),
])
def test_cli_user_errors_are_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "y").exists()
