"""Open-Sora v1's codec (a per-frame AutoencoderKL) and temporal frame stride."""

import json

import numpy as np
import pytest
import torch
from soraplan.core.schema import empty_clip_row
from soraplan.core.video import write_video
from soraplan.model.dit.buckets import BucketConfig, plan_clip
from soraplan.model.dit.codec import WFVAECodec, load_codec
from soraplan.model.dit.data import LatentDataset, write_index
from soraplan.model.dit.encode import EncodeConfig, LatentEncoder, check_models
from soraplan.model.dit.image_codec import ImageVAECodec
from soraplan.model.dit.text import TextEncoderConfig
from soraplan.model.testing import save_tiny_autoencoder_kl, save_tiny_t5


@pytest.fixture(scope="module")
def image_vae(tmp_path_factory):
    return save_tiny_autoencoder_kl(tmp_path_factory.mktemp("sdvae") / "vae")


def test_image_vae_encodes_each_frame_alone_with_the_sd_scaling(image_vae, torch_one_thread):
    codec = load_codec(str(image_vae), "vae")
    assert isinstance(codec, ImageVAECodec)
    assert (codec.temporal_compression, codec.spatial_compression, codec.latent_channels) == (1, 8, 4)
    assert json.loads((image_vae / "config.json").read_text())["scaling_factor"] == 0.18215
    video = torch.rand(2, 3, 5, 32, 48) * 2 - 1
    latents = codec.encode(video)
    assert latents.shape == (2, 4, 5, 4, 6)  # (4, T, H/8, W/8): no temporal compression
    one_frame = codec.vae.encode(video[:, :, 3]).latent_dist.mode() * 0.18215
    torch.testing.assert_close(latents[:, :, 3], one_frame)
    chunked = ImageVAECodec(codec.vae, chunk_frames=2).encode(video)
    torch.testing.assert_close(chunked, latents)
    assert codec.decode(latents).shape == video.shape


def test_missing_image_vae_fails_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="data.vae"):
        load_codec(str(tmp_path / "nope"), "data.vae")
    with pytest.raises(FileNotFoundError, match="set vae"):
        check_models(EncodeConfig(vae=str(tmp_path / "nope")))


def test_wfvae_is_still_loaded_as_wfvae(tmp_path):
    from soraplan.model.vae.configs import WFVAEConfig

    WFVAEConfig(name="wfvae-test").build().save_pretrained(tmp_path / "wfvae")
    assert isinstance(load_codec(str(tmp_path / "wfvae"), "vae"), WFVAECodec)


def test_frame_stride_takes_every_nth_source_frame():
    # Open-Sora v1: 16 frames every 3rd; the image codec takes any T (time factor 1).
    cfg = BucketConfig(min_hxw=256 * 256, max_hxw=256 * 256, hw_stride=8, num_frames=16,
                       min_num_frames=16, frame_stride=3)
    plan = plan_clip(320, 240, num_frames=100, fps=30.0, cfg=cfg, temporal_factor=1)
    assert plan.bucket[0] == 16
    assert np.allclose(plan.times_s, [3 * i / 30 for i in range(16)])
    assert plan_clip(320, 240, 45, 30.0, cfg, temporal_factor=1) is None  # 15 frames at stride 3
    # 64 frames every 2nd; with WF-VAE's time factor 4 the same clip is cut to 1 + 4n = 61.
    long = BucketConfig(min_hxw=256 * 256, max_hxw=256 * 256, num_frames=64, min_num_frames=16,
                        frame_stride=2)
    assert plan_clip(320, 240, 200, 24.0, long, temporal_factor=1).bucket[0] == 64
    assert plan_clip(320, 240, 200, 24.0, long, temporal_factor=4).bucket[0] == 61


def test_encode_job_with_the_image_vae_and_a_stride(image_vae, tmp_path, torch_one_thread):
    t = np.arange(40)[:, None, None, None]
    frames = np.broadcast_to(t * 6 % 256, (40, 64, 64, 3)).astype(np.uint8).copy()
    path = write_video(tmp_path / "clip.mp4", frames, fps=20)
    row = empty_clip_row(clip_id="c0", source_id="c", path=str(path), start_s=0.0, end_s=2.0,
                         num_frames=40, fps=20.0, width=64, height=64, caption="a grey card",
                         status="kept")
    buckets = BucketConfig(min_hxw=64 * 64, max_hxw=64 * 64, hw_stride=32, num_frames=6,
                           min_num_frames=6, frame_stride=3)
    cfg = EncodeConfig(out=str(tmp_path / "latents"), vae=str(image_vae), buckets=buckets,
                       text_encoder=TextEncoderConfig(str(save_tiny_t5(tmp_path / "t5")), 120))
    result = LatentEncoder(cfg)([row])[0]
    assert result["error"] is None
    assert (result["latent_t"], result["latent_h"], result["latent_w"]) == (6, 8, 8)
    write_index(cfg.out, [{k: v for k, v in result.items() if k != "error"}])
    assert LatentDataset(cfg.out).batch([0], [False])["latents"].shape == (1, 4, 6, 8, 8)


def test_soraplan_sample_with_stdit_and_the_image_vae(image_vae, tmp_path, torch_one_thread):
    from soraplan.core.video import probe
    from soraplan.model.dit.configs import DiTModelConfig
    from soraplan.model.sample import main

    torch.manual_seed(0)
    model = DiTModelConfig(name="stdit-tiny", overrides={"space_scale": 0.5}).build()
    torch.nn.init.normal_(model.proj_out.weight, std=0.02)
    model.save_pretrained(tmp_path / "stdit")
    out = tmp_path / "video.mp4"
    # 6 frames: any count with the image VAE (time factor 1); IDDPM sampling from the model.
    main(["--checkpoint", str(tmp_path / "stdit"), "--prompt", "a grey card", "--out", str(out),
          "--vae", str(image_vae), "--text-encoder", str(save_tiny_t5(tmp_path / "t5")),
          "--max-text-length", "120", "--frames", "6", "--height", "32", "--width", "48",
          "--steps", "3", "--cfg", "7.0", "--device", "cpu"])
    info = probe(out)
    assert (info.num_frames, info.width, info.height) == (6, 48, 32)
