"""Converting released upstream checkpoints: state dicts with upstream's key names and shapes,
written here from the upstream layer structure (PKU-YuanGroup/WF-VAE `WFVAEModel`,
Open-Sora-Plan v1.3 `OpenSoraT2V_v1_3`), go through `soraplan-vae convert` /
`soraplan-dit convert` into our models. Output equality with the upstream code itself is
`bench/upstream_parity.py` (needs their checkout)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from soraplan.model.dit.modeling_skiparse import SkiparseDiT
from soraplan.model.vae import WFVAEModel
from soraplan.model.vae.cli import main as vae_main
from soraplan.model.dit.cli import main as dit_main
from soraplan.model.testing import (HAAR2D, HAAR3D, UPSTREAM_DIT_CONFIG, UPSTREAM_VAE_CONFIG, upstream_dit,
                                     upstream_vae, write_upstream)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_vae_convert_maps_every_upstream_tensor(tmp_path: Path) -> None:
    state = upstream_vae(8, 4, 8, 16)
    src = write_upstream(tmp_path / "up", UPSTREAM_VAE_CONFIG, state)
    vae_main(["convert", str(src), str(tmp_path / "ours")])
    model = WFVAEModel.from_pretrained(tmp_path / "ours").eval()
    cfg = model.config
    assert (cfg.latent_channels, cfg.base_channels, cfg.decoder_upsample) == (4, 8, "trilinear")
    assert cfg.encoder_energy_flow_channels == 8 and cfg.decoder_energy_flow_channels == 16
    assert cfg.haar3d_tap == torch.tensor(0.3536).item()  # the float32 stored in the filters
    assert cfg.scaling_factor == [0.5, 1.0, 1.5, 2.0] and cfg.shift_factor == [0.1, -0.1, 0.2, 0.0]
    ours = model.state_dict()
    qkv = ours["encoder.mid.1.to_qkv.weight"]
    for i, p in enumerate("qkv"):
        assert torch.equal(qkv[32 * i : 32 * (i + 1)], state[f"encoder.mid.1.{p}.conv.weight"][..., 0, 0, 0])
    assert torch.equal(ours["decoder.up0.1.norm2.weight"], state["decoder.layer.1.norm2.norm.weight"])
    assert torch.equal(ours["encoder.mid.0.shortcut.weight"],
                       state["encoder.mid.0.nin_shortcut.conv.weight"][:, :, 0])

    # Level-1 coefficients: upstream's 2D Haar + its connect_l1 == ours + converted weights.
    x = torch.randn(2, 3, 8, 8)
    up_coeffs = torch.cat([F.conv2d(x.reshape(6, 1, 8, 8), state[f"encoder.wavelet_transform_l1.{n}"],
                                    stride=2).reshape(2, 3, 4, 4) for n in HAAR2D], dim=1)
    up_out = F.conv2d(up_coeffs, state["encoder.connect_l1.weight"], state["encoder.connect_l1.bias"],
                      padding=1)
    with torch.no_grad():
        ours_out = model.encoder.connect_l1(model.encoder.wavelet_l1(x[:, :, None]))[:, :, 0]
        # ... and the decoder's predicted coefficients come out in our subband order.
        features = torch.randn(2, 16, 1, 4, 4)
        up_pred = F.conv2d(features[:, :, 0], state["decoder.connect_l1.1.weight"],
                           state["decoder.connect_l1.1.bias"], padding=1)
        ours_pred = model.decoder.connect_l1[1](features)[:, :, 0]
    torch.testing.assert_close(ours_out, up_out)
    torch.testing.assert_close(model.decoder.inverse_wavelet_l1(ours_pred[:, :, None])[:, :, 0],
                               sum(F.conv_transpose2d(up_pred[:, 3 * i : 3 * i + 3].reshape(6, 1, 4, 4),
                                                      state[f"encoder.wavelet_transform_l1.{n}"], stride=2)
                                   for i, n in enumerate(HAAR2D)).reshape(2, 3, 8, 8))

    # 3D Haar with the stored tap equals upstream's filters (causal: frame 0 paired with itself).
    video = torch.randn(1, 1, 5, 4, 4)
    padded = torch.cat([video[:, :, :1], video], dim=2)
    expected = torch.cat([F.conv3d(padded, state[f"encoder.wavelet_transform_in.{n}_conv.conv.weight"],
                                   stride=2) for n in HAAR3D], dim=1)
    torch.testing.assert_close(model.encoder.wavelet_in(video), expected)


def test_vae_convert_reads_a_torch_file_of_tensors_and_refuses_pickles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = upstream_vae(8, 4, 8, 16)
    (tmp_path / "config.json").write_text(json.dumps(UPSTREAM_VAE_CONFIG))
    torch.save({"ema_state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ckpt.pt")
    vae_main(["convert", str(tmp_path / "ckpt.pt"), str(tmp_path / "ours"),
              "--config", str(tmp_path / "config.json")])
    assert (tmp_path / "ours" / "diffusion_pytorch_model.safetensors").is_file()

    torch.save({"state_dict": state, "note": Path("x")}, tmp_path / "pickle.pt")
    with pytest.raises(SystemExit) as exc:
        vae_main(["convert", str(tmp_path / "pickle.pt"), str(tmp_path / "bad"),
                  "--config", str(tmp_path / "config.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "not unpickled" in err and len(err.splitlines()) == 1

    with pytest.raises(SystemExit):  # a weights file without its config
        vae_main(["convert", str(tmp_path / "ckpt.pt"), str(tmp_path / "bad")])
    assert "--config" in capsys.readouterr().err
    src = write_upstream(tmp_path / "nearest", {**UPSTREAM_VAE_CONFIG, "t_interpolation": "nearest"}, state)
    with pytest.raises(SystemExit):
        vae_main(["convert", str(src), str(tmp_path / "bad")])
    assert "t_interpolation='nearest' is not supported" in capsys.readouterr().err


def test_dit_convert_maps_every_upstream_tensor(tmp_path: Path) -> None:
    state = upstream_dit(UPSTREAM_DIT_CONFIG)
    src = write_upstream(tmp_path / "up", UPSTREAM_DIT_CONFIG, state)
    dit_main(["convert", str(src), str(tmp_path / "ours")])
    model = SkiparseDiT.from_pretrained(tmp_path / "ours").eval()
    assert (model.config.cross_attn_norm, model.config.rope_pairing) == (False, "halves")
    # Upstream: blocks 2..29 sparse, odd ones group-skip.
    assert [b.attn.kind for b in model.blocks] == ["full", "full", "single_skip", "group_skip",
                                                   "single_skip"]
    ours = model.state_dict()
    for part, name in enumerate(("to_q", "to_k", "to_v")):
        assert torch.equal(ours["blocks.3.attn.to_qkv.bias"][24 * part : 24 * (part + 1)],
                           state[f"transformer_blocks.3.attn1.{name}.bias"])
    assert torch.equal(ours["blocks.3.cross_attn.to_kv.weight"][24:], state["transformer_blocks.3.attn2.to_v.weight"])
    assert torch.equal(ours["out_scale_shift_table"], state["scale_shift_table"])
    # Patch embedding: upstream's conv over each frame == our linear layer on flattened patches.
    latents = torch.randn(1, 4, 2, 4, 6)
    up = F.conv2d(latents.transpose(1, 2).flatten(0, 1), state["pos_embed.proj.weight"],
                  state["pos_embed.proj.bias"], stride=2).flatten(2).transpose(1, 2).reshape(1, 12, 24)
    patches = latents.reshape(1, 4, 2, 2, 2, 3, 2).permute(0, 2, 3, 5, 4, 6, 1).reshape(1, 12, 16)
    torch.testing.assert_close(model.patch_embed(patches), up)


def test_dit_convert_rejects_what_it_cannot_represent(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    state = upstream_dit(UPSTREAM_DIT_CONFIG)
    src = write_upstream(tmp_path / "scaled", {**UPSTREAM_DIT_CONFIG, "interpolation_scale_h": 2.0}, state)
    with pytest.raises(SystemExit) as exc:
        dit_main(["convert", str(src), str(tmp_path / "ours")])
    assert exc.value.code == 2 and "interpolation_scale_h=2.0" in capsys.readouterr().err
    del state["transformer_blocks.4.ff.net.2.bias"]
    src = write_upstream(tmp_path / "cut", UPSTREAM_DIT_CONFIG, state)
    with pytest.raises(SystemExit):
        dit_main(["convert", str(src), str(tmp_path / "ours")])
    assert "missing [blocks.4.mlp.2.bias]" in capsys.readouterr().err
