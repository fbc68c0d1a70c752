import numpy as np
import pytest
import torch
from soraplan.core.schema import empty_clip_row, rows_to_table, write_table_atomic
from soraplan.core.video import write_video
from soraplan.model.dit.buckets import BucketConfig, latent_shape
from soraplan.model.dit.data import LatentDataset, write_index
from soraplan.model.dit.encode import ClipDataset, EncodeConfig, LatentEncoder, clip_frames
from soraplan.model.dit.text import TextEmbeddingCache, TextEncoderConfig
from soraplan.model.testing import save_tiny_t5
from soraplan.model.vae.configs import WFVAEConfig

BUCKETS = BucketConfig(min_hxw=64 * 64, max_hxw=96 * 128, hw_stride=32, train_fps=8,
                       num_frames=9, min_num_frames=5)


@pytest.fixture(scope="module")
def clip_row(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    t = np.arange(24)[:, None, None, None]
    frames = np.broadcast_to((t * 10 % 256), (24, 72, 128, 3)).astype(np.uint8).copy()
    frames[:, :8] = 255  # a bar the crop removes
    path = write_video(root / "clip.mp4", frames, fps=24)
    return empty_clip_row(clip_id="clip-0", source_id="clip", path=str(path), start_s=0.0,
                          end_s=1.0, num_frames=24, fps=24.0, width=128, height=72,
                          crop=[0, 128, 8, 72], caption="a fading grey card", status="kept")


def test_clip_frames_follow_the_bucket_plan(clip_row):
    plan, frames = clip_frames(clip_row, BUCKETS)
    # 1 s at 8 fps -> 8 frames -> T = 5; 128x64 after the crop is within the area limits.
    assert plan.bucket == (5, 64, 128) and frames.shape == (5, 64, 128, 3)
    assert frames.max() < 255  # the cropped bar is gone
    assert np.all(np.diff(frames[:, 32, 64, 0].astype(int)) > 0)  # frames step 1/8 s forward


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    WFVAEConfig(name="wfvae-tiny").build().save_pretrained(root / "vae")
    return root / "vae", save_tiny_t5(root / "t5", d_model=32)


def test_latent_encoder_writes_a_trainable_shard(clip_row, models, tmp_path):
    vae_dir, t5_dir = models
    cfg = EncodeConfig(out=str(tmp_path / "latents"), vae=str(vae_dir),
                       text_encoder=TextEncoderConfig(path=str(t5_dir), max_length=32),
                       buckets=BUCKETS)
    encoder = LatentEncoder(cfg)
    missing = dict(clip_row, clip_id="clip-missing", path=str(tmp_path / "nope.mp4"))
    rows = encoder([clip_row, missing])
    assert rows[1]["error"] and "not found" in rows[1]["error"]
    assert rows[0]["error"] is None
    assert (rows[0]["latent_t"], rows[0]["latent_h"], rows[0]["latent_w"]) == latent_shape(
        (5, 64, 128), 4, 8)
    write_index(cfg.out, [{k: v for k, v in rows[0].items() if k != "error"}])
    dataset = LatentDataset(cfg.out)
    batch = dataset.batch([0], [False])
    assert batch["latents"].shape == (1, 4, 2, 8, 16)
    assert batch["text_mask"].sum() == len("a fading grey card") + 1  # chars + </s>

    # On-the-fly encoding from the curated shard gives the same sample.
    write_table_atomic(rows_to_table([clip_row]), tmp_path / "curated" / "clips" / "part.parquet")
    cache = TextEmbeddingCache(tmp_path / "text_cache")
    with pytest.raises(KeyError, match="text cache"):
        ClipDataset(str(tmp_path / "curated"), BUCKETS, encoder.codec, cache)
    cache.fill(encoder.text_encoder, [clip_row["caption"], ""])
    on_the_fly = ClipDataset(str(tmp_path / "curated"), BUCKETS, encoder.codec, cache)
    assert on_the_fly.bucket_of == dataset.bucket_of
    fly = on_the_fly.batch([0], [False])
    torch.testing.assert_close(fly["latents"], batch["latents"])
    torch.testing.assert_close(fly["text_states"], batch["text_states"])
    assert on_the_fly.batch([0], [True])["text_mask"].sum() == 1


def test_missing_vae_fails_before_touching_data(tmp_path):
    cfg = EncodeConfig(out=str(tmp_path / "latents"), vae=str(tmp_path / "no-vae"))
    with pytest.raises(FileNotFoundError, match="vae"):
        LatentEncoder(cfg)
    assert not (tmp_path / "latents").exists()


def test_rerun_with_every_clip_encoded_skips_them_without_starting_ray(clip_row, models, tmp_path,
                                                                       monkeypatch):
    from soraplan.core.ray_session import RayConfig
    from soraplan.model.dit.encode import run_encode

    vae_dir, t5_dir = models
    write_table_atomic(rows_to_table([clip_row]), tmp_path / "curated" / "clips" / "part.parquet")
    out = tmp_path / "latents"
    write_index(out, [dict(clip_id="clip-0", file="latents/clip-0.safetensors", caption="c",
                           latent_t=2, latent_h=8, latent_w=16)])
    monkeypatch.setattr(RayConfig, "init", lambda self: pytest.fail("Ray started"))
    cfg = EncodeConfig(shards=str(tmp_path / "curated"), out=str(out), vae=str(vae_dir),
                       text_encoder=TextEncoderConfig(path=str(t5_dir)), buckets=BUCKETS)
    summary = run_encode(cfg)
    assert summary["already_encoded"] == 1 and summary["encoded"] == 0
    assert (out / "run.yaml").is_file() and (out / "summary.json").is_file()


@pytest.mark.parametrize("missing", ["vae", "text_encoder.path"])
def test_encode_job_checks_its_models_before_starting_ray(missing, clip_row, models, tmp_path,
                                                          capsys):
    from soraplan.model.dit.cli import main

    vae_dir, t5_dir = models
    write_table_atomic(rows_to_table([clip_row]), tmp_path / "curated" / "clips" / "part.parquet")
    paths = {"vae": vae_dir, "text_encoder.path": t5_dir, missing: tmp_path / "absent"}
    with pytest.raises(SystemExit) as exit_info:
        main(["encode", "--shards", str(tmp_path / "curated"), "--out", str(tmp_path / "latents"),
              *(f"{key}={path}" for key, path in paths.items())])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("soraplan-dit encode:")]
    assert f"set {missing}" in line
    assert not (tmp_path / "latents").exists()


@pytest.mark.heavy
def test_encode_latents_ray_job(clip_row, models, tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from soraplan.core.outputs import read_results

    vae_dir, t5_dir = models
    bad = dict(clip_row, clip_id="clip-bad", path=str(tmp_path / "missing.mp4"))
    rejected = dict(clip_row, clip_id="clip-rejected", status="rejected")
    write_table_atomic(rows_to_table([clip_row, bad, rejected]),
                       tmp_path / "curated" / "clips" / "part.parquet")
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "latents"
    cmd = [sys.executable, str(root / "pipelines" / "encode_latents.py"),
           "--config", str(root / "pipelines" / "configs" / "dit_encode.yaml"),
           f"shards={tmp_path / 'curated'}", f"out={out}", f"vae={vae_dir}",
           f"text_encoder.path={t5_dir}", "buckets.min_hxw=4096", "buckets.max_hxw=12288",
           "buckets.train_fps=8", "buckets.num_frames=9", "buckets.min_num_frames=5",
           "ray.local_num_cpus=2"]

    def run() -> dict:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                                env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
        assert result.returncode == 0, result.stderr[-2000:]
        summary = json.loads((out / "summary.json").read_text())
        assert json.dumps(summary, indent=2) in result.stdout
        return summary

    assert run() == {"kept_clips": 2, "already_encoded": 0, "encoded": 1, "errors": 1,
                     "encoded_total": 1, "out": str(out)}
    errors = read_results(out / "errors").to_pylist()
    assert [e["clip_id"] for e in errors] == ["clip-bad"] and "not found" in errors[0]["error"]
    assert LatentDataset(out).bucket_of == [latent_shape((5, 64, 128), 4, 8)]
    # A rerun skips the encoded clip and retries the failed one.
    latent_file = out / "latents" / "clip-0.safetensors"
    written = latent_file.stat().st_mtime_ns
    assert run() == {"kept_clips": 2, "already_encoded": 1, "encoded": 0, "errors": 1,
                     "encoded_total": 1, "out": str(out)}
    assert latent_file.stat().st_mtime_ns == written
    assert len(LatentDataset(out)) == 1
