"""WF-VAE model: exact wavelets, lossless chunked encode/decode, bounded memory, save/load."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from soraplan.core.config import ConfigError
from soraplan.model.vae import WFVAE_CONFIGS, WFVAEConfig, WFVAEModel
from soraplan.model.vae.modules import (
    HaarWavelet2D,
    HaarWavelet3D,
    InverseHaarWavelet2D,
    InverseHaarWavelet3D,
    SpatioTemporalUpsample,
    causal_stream,
    mark_last_chunk,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY = WFVAE_CONFIGS["wfvae-test"]


def tiny_model(**overrides: object) -> WFVAEModel:
    torch.manual_seed(0)
    model = WFVAEModel(**{**TINY, **overrides}).double().eval()
    # Random init leaves the decoder near zero; larger weights make any chunking error visible.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def video(t: int, size: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, t, size, size, generator=g, dtype=torch.float64) * 2 - 1


def test_haar_transforms_are_exact_inverses_and_causal() -> None:
    x = video(9, 8)
    assert (InverseHaarWavelet2D()(HaarWavelet2D()(x)) - x).abs().max() < 1e-12
    coeffs = HaarWavelet3D()(x)
    assert coeffs.shape == (1, 24, 5, 4, 4)
    assert (InverseHaarWavelet3D()(coeffs) - x).abs().max() < 1e-12
    # The first coefficient frame sees frame 0 only (paired with a copy of itself).
    only_first = HaarWavelet3D()(x[:, :, :1])
    assert torch.equal(only_first[:, :, 0], coeffs[:, :, 0])
    # Low band first: the LLL coefficients are the scaled mean of each 2x2x2 block.
    block = x[:, :, 1:3, :2, :2].mean(dim=(2, 3, 4))
    assert torch.allclose(coeffs[:, :3, 1, 0, 0], block * 8 * 2**-1.5)


def test_shapes_and_compression() -> None:
    model = tiny_model()
    x = video(17)
    with torch.no_grad():
        out = model(x, sample_posterior=False)
        z = model.encode(x).latent_dist.mode()
    assert z.shape == (1, 4, 5, 2, 2)
    assert out.sample.shape == x.shape
    for enc, dec in zip(out.encoder_coeffs, out.decoder_coeffs):
        assert enc.shape == dec.shape
    with pytest.raises(ValueError, match="1\\+4n"):
        model.encode(video(16))


@pytest.mark.parametrize("upsample", ["nearest", "trilinear"])
@pytest.mark.parametrize(
    ("frames", "frame_chunks", "latent_chunks"),
    [
        (17, (1, 8), (1, 2)),
        (29, (4, 7), (2, 3)),
        (33, (8, 16), (1, 4)),
        (49, (5, 12), (2, 5)),
        (61, (3, 16), (3, 4)),
        (93, (8, 32), (2, 7)),
    ],
)
def test_chunked_encode_and_decode_equal_full_pass(
    frames: int, frame_chunks: tuple[int, int], latent_chunks: tuple[int, int], upsample: str
) -> None:
    model = tiny_model(decoder_upsample=upsample)
    x = video(frames)
    with torch.no_grad():
        full = model.encode(x).latent_dist
        z = full.mode()
        decoded = model.decode(z).sample
        for chunk in frame_chunks:  # multiples of 4 and not
            moments = model.encode(x, chunk_frames=chunk).latent_dist
            assert (moments.mean - full.mean).abs().max() < 1e-10, chunk
            assert (moments.logvar - full.logvar).abs().max() < 1e-10, chunk
        for chunk in latent_chunks:  # odd and even latent chunk lengths
            assert (model.decode(z, chunk_latents=chunk).sample - decoded).abs().max() < 1e-10, (
                chunk
            )


def test_trilinear_upsampling_is_upstream_interpolation() -> None:
    # Frame 0 alone, frames 1.. interpolated linearly in time (clamped ends), bilinear in space:
    # what upstream's Spatial2xTime2x3DUpsample does before its conv.
    x = video(6, 4)
    layer = SpatioTemporalUpsample(3, "trilinear")
    head = F.interpolate(x[:, :, :1], scale_factor=(1, 2, 2), mode="trilinear")
    rest = F.interpolate(x[:, :, 1:], scale_factor=(2, 1, 1), mode="trilinear")
    rest = F.interpolate(rest, scale_factor=(1, 2, 2), mode="trilinear")
    expected = torch.cat([head, rest], dim=2)
    got = layer.space(layer.time(x))
    assert got.shape == (1, 3, 11, 8, 8)
    assert (got - expected).abs().max() < 1e-12
    # In a stream the frame that needs the next one waits for it; the last chunk flushes it.
    with causal_stream(layer):
        parts = [layer.time(x[:, :, :2]), layer.time(x[:, :, 2:5])]
        mark_last_chunk(layer)
        parts.append(layer.time(x[:, :, 5:]))
    assert [p.shape[2] for p in parts] == [2, 6, 3]
    assert (layer.space(torch.cat(parts, dim=2)) - expected).abs().max() < 1e-12


def test_groupnorm_variant_is_not_lossless() -> None:
    # GroupNorm statistics span all frames of a chunk, so chunking changes them (and frames
    # depend on later frames): why the model uses channel LayerNorm.
    model = tiny_model(norm_type="groupnorm")
    x = video(33)
    with torch.no_grad():
        full = model.encode(x).latent_dist.mean
        chunked = model.encode(x, chunk_frames=8).latent_dist.mean
        z = full
        decoded = model.decode(z).sample
        decoded_chunked = model.decode(z, chunk_latents=2).sample
    assert (chunked - full).abs().max() > 1e-4
    assert (decoded_chunked - decoded).abs().max() > 1e-4


def test_output_is_causal() -> None:
    model = tiny_model()
    x = video(17)
    changed = x.clone()
    changed[:, :, 9:] = 0.0
    with torch.no_grad():
        a = model.encode(x).latent_dist.mean
        b = model.encode(changed).latent_dist.mean
    # Frames 0..8 map to latents 0..2 (latent i covers frames 4i-3..4i); those must not change.
    assert (a[:, :, :3] - b[:, :, :3]).abs().max() < 1e-12
    assert (a[:, :, 3:] - b[:, :, 3:]).abs().max() > 1e-6


def test_named_configs_build_and_save_load_round_trip(tmp_path: Path) -> None:
    assert {"wfvae-s", "wfvae-m", "wfvae-l"} <= set(WFVAE_CONFIGS)
    assert WFVAE_CONFIGS["wfvae-m"] == dict(base_channels=160, latent_channels=4)
    model = WFVAEConfig(name="wfvae-tiny", overrides=dict(base_channels=8)).build().eval()
    assert model.config.base_channels == 8
    model.save_pretrained(tmp_path / "vae")
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = WFVAEConfig(pretrained=str(tmp_path / "vae")).build().eval()
    from_file = WFVAEConfig(config_file=str(tmp_path / "vae" / "config.json")).build()
    assert from_file.config.base_channels == 8
    x = video(9).float()
    with torch.no_grad():
        assert torch.equal(
            model(x, sample_posterior=False).sample, loaded(x, sample_posterior=False).sample
        )
    with pytest.raises(FileNotFoundError, match="model.pretrained"):
        WFVAEConfig(pretrained=str(tmp_path / "missing")).build()
    with pytest.raises(ConfigError, match="wfvae-s"):
        WFVAEConfig(name="nope").build()


PEAK_SCRIPT = textwrap.dedent(
    """
    import json, torch
    from soraplan.model.vae import WFVAE_CONFIGS, WFVAEModel
    torch.manual_seed(0)
    model = WFVAEModel(**WFVAE_CONFIGS["wfvae-test"]).eval()
    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    peaks = {}
    for frames, chunk in [(33, 8), (65, 8), (65, None)]:
        x = torch.rand(1, 3, frames, 128, 128) * 2 - 1
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set size to the current one
        before = hwm()
        with torch.no_grad():
            model.encode(x, chunk_frames=chunk)
        peaks[f"{frames}/{chunk}"] = hwm() - before
        del x
    print(json.dumps(peaks))
    """
)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak RSS")
def test_chunked_encoding_peak_memory_is_bounded_by_the_chunk() -> None:
    # A fresh process with mmap for every large block, so freed memory leaves the resident
    # set at once and the peak counts live tensors only.
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT], capture_output=True, text=True, env=env, check=True
    )
    peaks = json.loads(out.stdout.strip().splitlines()[-1])
    # Twice the frames in chunks costs about the same; one full pass costs several times more.
    assert peaks["65/8"] < 1.5 * peaks["33/8"], peaks
    assert peaks["65/None"] > 3 * peaks["65/8"], peaks
