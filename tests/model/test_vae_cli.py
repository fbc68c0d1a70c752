"""soraplan-vae reconstruct and the reconstruction metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from soraplan.core.video import probe, write_video
from soraplan.model.vae import WFVAE_CONFIGS, WFVAEModel
from soraplan.model.vae.cli import load_video, main
from soraplan.model.vae.metrics import psnr_uint8, ssim_uint8

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_metrics() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    assert ssim_uint8(a, a) == pytest.approx(1.0)
    assert psnr_uint8(a, a) > 100
    noisy = np.clip(a.astype(int) + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
    assert 25 < psnr_uint8(a, noisy) < 40
    assert ssim_uint8(a, noisy) < ssim_uint8(a, a)
    assert ssim_uint8(a, 255 - a) < 0.1


def test_reconstruct_cli_writes_video_and_prints_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = np.zeros((11, 40, 56, 3), np.uint8)
    frames[..., 1] = np.linspace(0, 255, 56, dtype=np.uint8)
    write_video(tmp_path / "in.mp4", frames, fps=10)
    loaded, fps = load_video(tmp_path / "in.mp4", short_side=None, max_frames=None)
    assert loaded.shape == (9, 40, 56, 3) and fps == pytest.approx(
        10
    )  # 1 + 4n frames, 8-aligned size

    WFVAEModel(**WFVAE_CONFIGS["wfvae-test"]).save_pretrained(tmp_path / "vae")
    main(
        [
            "reconstruct",
            str(tmp_path / "in.mp4"),
            str(tmp_path / "out.mp4"),
            "--model.pretrained",
            str(tmp_path / "vae"),
            "chunk_frames=4",
            "chunk_latents=1",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == 9 and np.isfinite(report["psnr"]) and -1 <= report["ssim"] <= 1
    info = probe(tmp_path / "out.mp4")
    assert (info.num_frames, info.width, info.height) == (9, 56, 40)


def test_reconstruct_fails_fast_on_missing_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The input does not exist either: the weights are checked first, before any data is read.
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "reconstruct",
                str(tmp_path / "absent.mp4"),
                str(tmp_path / "out.mp4"),
                "--model.pretrained",
                str(tmp_path / "no-weights"),
            ]
        )
    assert exit_info.value.code == 2
    assert "model.pretrained" in capsys.readouterr().err


def test_latent_stats_normalise_the_latents_per_channel(tmp_path: Path, capsys, media) -> None:
    """The statistics written into the config make the codec's latents of the same sample zero
    mean and unit variance per channel, as the DiT expects."""
    import torch

    from soraplan.model.dit.codec import load_wfvae_codec
    from soraplan.model.vae.cli import LatentStatsConfig
    from soraplan.model.vae.data import VAEDataConfig

    torch.manual_seed(0)
    WFVAEModel(**WFVAE_CONFIGS["wfvae-test"]).save_pretrained(tmp_path / "vae")
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("moving", "three_shots"):
        (videos / f"{name}.mp4").write_bytes(media[name].read_bytes())
    main(["latent-stats", "--vae", str(tmp_path / "vae"), "--videos", str(videos), "--out",
          str(tmp_path / "normalised"), "batches=3", "data.num_frames=9", "data.crop_size=32",
          "data.short_side=48", "data.batch_size=2"])
    printed = json.loads(capsys.readouterr().out)
    assert len(printed["mean"]) == len(printed["std"]) == 4
    codec = load_wfvae_codec(str(tmp_path / "normalised"), "--vae")
    assert len(codec.vae.config.shift_factor) == 4
    cfg = LatentStatsConfig(data=VAEDataConfig(video_dirs=[str(videos)], num_frames=9, crop_size=32,
                                               short_side=48, batch_size=2))
    sampler = cfg.data.build(cfg.seed)
    latents = torch.cat([codec.encode(sampler.batch(step)) for step in range(3)]).double()
    per_channel = latents.transpose(0, 1).flatten(1)
    assert per_channel.mean(1).abs().max() < 1e-4
    assert (per_channel.std(1, unbiased=False) - 1).abs().max() < 1e-3
    decoded = codec.decode(latents[:1].float())
    assert decoded.shape == (1, 3, 9, 32, 32)


def test_reconstruct_shards_writes_an_indexed_folder_of_kept_clips(tmp_path: Path, capsys) -> None:
    """--shards reconstructs kept clips inside their crop box, indexed like sampled videos with
    the clip's caption as prompt; a clip whose file is gone is an error entry, not a crash."""
    from soraplan.core.outputs import read_sample_index
    from soraplan.core.schema import empty_clip_row, rows_to_table, write_table_atomic

    video = np.zeros((24, 64, 96, 3), np.uint8)
    video[:, :, 48:, 2] = 200  # the crop box keeps this blue half
    write_video(tmp_path / "a.mp4", video, fps=12)
    common = dict(source_id="a", start_s=0.5, end_s=2.0, num_frames=18, fps=12.0, width=96, height=64,
                  crop=[48, 96, 0, 64], status="kept")
    rows = [empty_clip_row(clip_id="a-0", path=str(tmp_path / "a.mp4"), caption="a blue wall", **common),
            empty_clip_row(clip_id="b-0", path=str(tmp_path / "gone.mp4"), caption="lost", **common),
            empty_clip_row(clip_id="c-0", source_id="c", path=str(tmp_path / "a.mp4"), status="rejected")]
    write_table_atomic(rows_to_table(rows), tmp_path / "curated" / "clips" / "part-00000.parquet")
    WFVAEModel(**WFVAE_CONFIGS["wfvae-test"]).save_pretrained(tmp_path / "vae")

    main(["reconstruct", "--shards", str(tmp_path / "curated"), "--clips", "5", str(tmp_path / "recon"),
          "--model.pretrained", str(tmp_path / "vae"), "max_frames=9"])
    report = json.loads(capsys.readouterr().out)
    assert report["clips"] == 2 and report["errors"] == 1 and np.isfinite(report["psnr"])
    good, lost = read_sample_index(tmp_path / "recon")
    assert good["prompt"] == "a blue wall" and good["start_s"] == 0.5 and "psnr" in good
    assert lost["prompt"] == "lost" and "gone.mp4" in lost["error"]
    info = probe(tmp_path / "recon" / good["video"])
    assert (info.width, info.height) == (48, 64)  # the crop box, not the whole frame
    frames, _ = load_video(tmp_path / "a.mp4", None, 9, crop=(48, 96, 0, 64))
    assert frames.shape == (9, 64, 48, 3) and frames[..., 2].min() > 150
