"""WF-VAE training: data sampling from curated shards, losses, DeepSpeed trainer and exact resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from soraplan.core.schema import empty_clip_row, rows_to_table, write_table_atomic
from soraplan.core.video import write_video
from soraplan.model.vae import WFVAE_CONFIGS, WFVAEModel
from soraplan.model.vae.data import VAEDataConfig
from soraplan.model.vae.losses import PatchDiscriminator3D, VAELoss, VAELossConfig, load_lpips

pytestmark = pytest.mark.usefixtures("torch_one_thread")

REPO = Path(__file__).resolve().parents[2]
TINY = WFVAE_CONFIGS["wfvae-test"]


def two_tone_video(frames: int = 24, width: int = 96, height: int = 64) -> np.ndarray:
    """Left half red, right half blue, with a moving bright bar so frames differ."""
    video = np.zeros((frames, height, width, 3), np.uint8)
    video[:, :, : width // 2, 0] = 200
    video[:, :, width // 2 :, 2] = 200
    for t in range(frames):
        video[t, (2 * t) % height, :, 1] = 255
    return video


@pytest.fixture(scope="module")
def curated_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A curated shard dir: clips/*.parquet with kept rows on real mp4s and one rejected row."""
    root = tmp_path_factory.mktemp("curated")
    a = write_video(root / "videos" / "a.mp4", two_tone_video(), fps=12)
    b = write_video(root / "videos" / "b.mp4", two_tone_video(30), fps=24)
    rows = [
        # crop box keeps the blue right half only
        empty_clip_row(
            clip_id="a-0",
            source_id="a",
            path=str(a),
            start_s=0.0,
            end_s=2.0,
            num_frames=24,
            fps=12.0,
            width=96,
            height=64,
            crop=[48, 96, 0, 64],
            status="kept",
        ),
        empty_clip_row(
            clip_id="b-0",
            source_id="b",
            path=str(b),
            start_s=0.25,
            end_s=1.25,
            num_frames=24,
            fps=24.0,
            width=96,
            height=64,
            crop=[48, 96, 0, 64],
            status="kept",
        ),
        empty_clip_row(
            clip_id="c-0",
            source_id="c",
            path=str(root / "missing.mp4"),
            start_s=0.0,
            end_s=1.0,
            status="rejected",
            reject_reasons=["static"],
        ),
    ]
    write_table_atomic(rows_to_table(rows), root / "clips" / "part-00000.parquet")
    return root


def test_sampler_reads_kept_clips_inside_their_crop_deterministically(curated_dir: Path) -> None:
    sampler = VAEDataConfig(
        shard_dirs=[str(curated_dir)],
        num_frames=9,
        crop_size=32,
        short_side=32,
        fps=8.0,
        batch_size=2,
    ).build(seed=3)
    assert len(sampler.clips) == 2  # the rejected row is not used
    batch = sampler.batch(step=5, rank=1)
    assert batch.shape == (2, 3, 9, 32, 32)
    assert batch.min() >= -1.0 and batch.max() <= 1.0
    assert torch.equal(batch, sampler.batch(step=5, rank=1))  # data position = step
    assert not torch.equal(batch, sampler.batch(step=5, rank=0))
    # Only the blue half survives the crop box (chroma subsampling blurs the boundary a little).
    assert batch[:, 2].mean() > 0.2 and batch[:, 0].mean() < -0.4
    # Frames move in time: consecutive frames differ.
    assert (batch[:, :, 1:] - batch[:, :, :-1]).abs().amax() > 0.3


def test_sampler_mixes_images_as_single_frames(curated_dir: Path, tmp_path: Path) -> None:
    image = two_tone_video(1)[0]
    import cv2

    cv2.imwrite(str(tmp_path / "img.png"), image[:, :, ::-1])
    sampler = VAEDataConfig(
        shard_dirs=[str(curated_dir)],
        image_dirs=[str(tmp_path)],
        image_fraction=0.5,
        num_frames=5,
        crop_size=32,
        short_side=40,
    ).build()
    shapes = {tuple(sampler.batch(step).shape) for step in range(12)}
    assert shapes == {(1, 3, 1, 32, 32), (1, 3, 5, 32, 32)}
    with pytest.raises(ValueError, match="1 \\+ 4n"):
        VAEDataConfig(shard_dirs=[str(curated_dir)], num_frames=8).build()


def test_generator_surrogate_has_the_gradient_of_the_full_loss() -> None:
    torch.manual_seed(0)
    model = WFVAEModel(**TINY)
    cfg = VAELossConfig(lpips_weight=0.0, l2_weight=0.5, disc_start_step=10)
    loss_fn = VAELoss(cfg)
    disc = PatchDiscriminator3D(8, 2)
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1

    out = model(x, generator=torch.Generator().manual_seed(1))
    surrogate, stats = loss_fn.generator_loss(x, out, 0, disc, model.decoder)
    surrogate.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    out = model(x, generator=torch.Generator().manual_seed(1))
    wavelet = sum((e - d).abs().sum() for e, d in zip(out.encoder_coeffs, out.decoder_coeffs))
    direct = (
        (x - out.sample).abs().sum()
        + 0.5 * (x - out.sample).square().sum()
        + cfg.kl_weight * out.latent_dist.kl().mean()
        + cfg.wavelet_weight * wavelet
    )
    direct.backward()
    assert stats["loss"] == pytest.approx(direct.item(), rel=1e-5)
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6)

    # After disc_start_step the adversarial term joins, weighted by taming's rule: the ratio of
    # the gradient norms at the decoder's last-layer weight, here taken straight from the model.
    out = model(x, generator=torch.Generator().manual_seed(1))
    _, stats = loss_fn.generator_loss(x, out, 10, disc, model.decoder)
    last = model.decoder.conv_out.weight
    nll = (x - out.sample).abs().sum() + 0.5 * (x - out.sample).square().sum()
    nll_w = torch.autograd.grad(nll, last, retain_graph=True)[0]
    g_w = torch.autograd.grad(-disc(out.sample).mean(), last)[0]
    expected = (nll_w.norm() / (g_w.norm() + 1e-4)).clamp(0, cfg.adaptive_weight_max).item()
    assert stats["d_weight"] == pytest.approx(expected * cfg.disc_weight, rel=1e-5)
    assert 0 < stats["d_weight"] <= cfg.adaptive_weight_max * cfg.disc_weight
    d_loss, _ = loss_fn.discriminator_loss(x, out.sample, disc)
    d_loss.backward()
    assert all(p.grad is not None for p in disc.parameters())
    assert disc(torch.zeros(1, 3, 1, 32, 32)).shape[2] == 1  # images (T = 1) work too


def test_lpips_falls_back_with_warning_and_loads_a_backbone_from_a_path(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="loss.lpips_backbone_weights"):
        assert load_lpips("alex", str(tmp_path / "missing.pth")) is None
    pytest.importorskip("lpips", reason="the lpips extra of soraplan-model")
    import torchvision

    state = torchvision.models.alexnet(weights=None).state_dict()
    torch.save(state, tmp_path / "alexnet.pth")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lpips_net = load_lpips("alex", str(tmp_path / "alexnet.pth"))
    assert lpips_net is not None
    assert not [w for w in caught if "LPIPS is off" in str(w.message)]
    assert torch.equal(lpips_net.net.slice1[0].weight, state["features.0.weight"])
    assert torch.equal(
        dict(lpips_net.net.named_parameters())["slice5.10.weight"], state["features.10.weight"]
    )
    a = torch.rand(2, 3, 64, 64) * 2 - 1
    assert lpips_net(a, a).abs().max() < 1e-6
    assert (lpips_net(a, -a) > 0).all()


def train_config(out: Path, curated: Path, steps: int) -> list[str]:
    return [
        f"output_dir={out}",
        f"steps={steps}",
        "model.name=wfvae-tiny",
        f"model.overrides={json.dumps(TINY)}",
        f"data.shard_dirs=[{curated}]",
        "data.num_frames=5",
        "data.crop_size=32",
        "data.short_side=32",
        "loss.lpips_weight=0.0",
        "loss.disc_start_step=1",
        "loss.disc_channels=8",
        "loss.disc_layers=2",
        "log_every=1",
        "video_every=2",
        "checkpoint.every=2",
        "ema.decay=0.5",
        "cpu_threads=1",
    ]


def run_trainer(
    overrides: list[str],
) -> tuple[list[dict[str, float]], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    from soraplan.core.config import load_config
    from soraplan.model.vae.train import TrainVAEConfig, VAETrainer

    trainer = VAETrainer(load_config(TrainVAEConfig, None, overrides))
    history = trainer.fit()
    return (
        history,
        {k: v.clone() for k, v in trainer.vae.state_dict().items()},
        {k: v.clone() for k, v in trainer.ema.shadow.items()},
    )


@pytest.fixture()
def single_process_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in dict(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1"
    ).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_PORT", os.environ.get("MASTER_PORT", "29531"))


def test_resumed_training_equals_uninterrupted(
    curated_dir: Path, tmp_path: Path, single_process_env: None
) -> None:
    # N = 2 steps with the discriminator active from step 1: 4 straight == 2, new process state, 2 more.
    straight, weights, ema = run_trainer(train_config(tmp_path / "straight", curated_dir, 4))
    first, _, _ = run_trainer(train_config(tmp_path / "resumed", curated_dir, 2))
    second, weights_resumed, ema_resumed = run_trainer(
        train_config(tmp_path / "resumed", curated_dir, 4)
    )
    assert [s["step"] for s in first + second] == [1, 2, 3, 4]
    assert "d_loss" in straight[-1]
    for a, b in zip(straight, first + second):
        assert a.keys() == b.keys()
        for key in ("loss", "d_loss", "d_weight"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
    for k in weights:
        assert torch.equal(weights[k], weights_resumed[k]), k
    for k in ema:
        assert torch.equal(ema[k], ema_resumed[k]), k
    # Training moved the weights, and the run left its artefacts behind.
    run = tmp_path / "resumed"
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_00000004"
    assert not list(ckpts.glob(".staging-*"))
    last = ckpts / "step_00000004"
    assert (last / "model").is_dir() and (last / "discriminator").is_dir()
    assert WFVAEModel.from_pretrained(last / "ema").config.base_channels == 8
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "samples" / "step_00000004.mp4").is_file()
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()


def test_training_without_data_fails_at_start_naming_the_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], single_process_env: None
) -> None:
    from soraplan.model.vae.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(REPO / "pipelines/configs/vae_tiny.yaml"),
              f"output_dir={tmp_path / 'run'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("soraplan-vae train:")]
    assert "data.shard_dirs" in line and "data.video_dirs" in line and "data.image_dirs" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.heavy
@pytest.mark.timeout(2700)  # three 2-process launches; each start takes 4-9 min on loaded cores
def test_two_process_deepspeed_resume_equals_uninterrupted(
    curated_dir: Path, tmp_path: Path
) -> None:
    """2 CPU processes (gloo) under the deepspeed launcher: 4 steps == 2 + resume + 2."""

    def launch(out: Path, steps: int) -> None:
        cmd = [
            sys.executable,
            "-m",
            "deepspeed.launcher.runner",
            "--num_accelerators",
            "2",
            "--master_port",
            "29533",
            str(REPO / "pipelines/train_vae.py"),
            *train_config(out, curated_dir, steps),
        ]
        subprocess.run(
            cmd, check=True, cwd=REPO, env={**os.environ, "DS_ACCELERATOR": "cpu"}, timeout=900
        )

    launch(tmp_path / "straight", 4)
    launch(tmp_path / "resumed", 2)
    launch(tmp_path / "resumed", 4)
    from safetensors.torch import load_file

    ema = "checkpoints/step_00000004/ema/diffusion_pytorch_model.safetensors"
    a = load_file(tmp_path / "straight" / ema)
    b = load_file(tmp_path / "resumed" / ema)
    for k in a:
        assert torch.equal(a[k], b[k]), k
