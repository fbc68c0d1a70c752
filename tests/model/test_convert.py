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
from safetensors.torch import save_file

from soraplan.model.dit.modeling_skiparse import SkiparseDiT
from soraplan.model.vae import WFVAEModel
from soraplan.model.vae.cli import main as vae_main
from soraplan.model.dit.cli import main as dit_main

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# Upstream's 3D Haar filters (t, h, w) in its module order, and its 2D ones (h, w).
HAAR3D = {
    "h": [[[1, 1], [1, 1]], [[1, 1], [1, 1]]],
    "g": [[[1, -1], [1, -1]], [[1, -1], [1, -1]]],
    "hh": [[[1, 1], [-1, -1]], [[1, 1], [-1, -1]]],
    "gh": [[[1, -1], [-1, 1]], [[1, -1], [-1, 1]]],
    "h_v": [[[1, 1], [1, 1]], [[-1, -1], [-1, -1]]],
    "g_v": [[[1, -1], [1, -1]], [[-1, 1], [-1, 1]]],
    "hh_v": [[[1, 1], [-1, -1]], [[-1, -1], [1, 1]]],
    "gh_v": [[[1, -1], [-1, 1]], [[-1, 1], [1, -1]]],
}
HAAR2D = {"aa": [[1, 1], [1, 1]], "ad": [[1, 1], [-1, -1]], "da": [[1, -1], [1, -1]],
          "dd": [[1, -1], [-1, 1]]}
VAE_CONFIG = dict(latent_dim=4, base_channels=8, encoder_num_resblocks=1, decoder_num_resblocks=1,
                  encoder_energy_flow_hidden_size=8, decoder_energy_flow_hidden_size=16,
                  connect_res_layer_num=1, use_attention=True, norm_type="layernorm",
                  t_interpolation="trilinear", attention_type="AttnBlock3DFix",
                  scale=[0.5, 1.0, 1.5, 2.0], shift=[0.1, -0.1, 0.2, 0.0])


class Upstream(dict):
    """A state dict filled the way upstream's modules name and shape their tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.g = torch.Generator().manual_seed(0)

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g)

    def linear(self, name: str, i: int, o: int) -> None:
        self[f"{name}.weight"], self[f"{name}.bias"] = self.rand(o, i), self.rand(o)

    def conv2d(self, name: str, i: int, o: int, k: int = 3) -> None:
        self[f"{name}.weight"], self[f"{name}.bias"] = self.rand(o, i, k, k), self.rand(o)

    def conv3d(self, name: str, i: int, o: int, k: int = 3) -> None:  # CausalConv3d
        self[f"{name}.conv.weight"], self[f"{name}.conv.bias"] = self.rand(o, i, k, k, k), self.rand(o)

    def norm(self, name: str, ch: int) -> None:  # LayerNorm wrapper
        self[f"{name}.norm.weight"], self[f"{name}.norm.bias"] = self.rand(ch), self.rand(ch)

    def resnet(self, name: str, i: int, o: int, temporal: bool) -> None:
        conv = self.conv3d if temporal else self.conv2d
        self.norm(f"{name}.norm1", i)
        conv(f"{name}.conv1", i, o)
        self.norm(f"{name}.norm2", o)
        conv(f"{name}.conv2", o, o)
        if i != o:
            conv(f"{name}.nin_shortcut", i, o, 1)

    def attention(self, name: str, ch: int) -> None:  # AttnBlock3DFix
        self.norm(f"{name}.norm", ch)
        for p in ("q", "k", "v", "proj_out"):
            self.conv3d(f"{name}.{p}", ch, ch, 1)

    def haar(self, name: str, tap: float, inverse: bool) -> None:
        for n, taps in HAAR3D.items():
            f = torch.tensor(taps).view(1, 1, 2, 2, 2) * tap
            self[f"{name}.{n}" if inverse else f"{name}.{n}_conv.conv.weight"] = f

    def haar2d(self, name: str) -> None:
        for n, taps in HAAR2D.items():
            self[f"{name}.{n}"] = torch.tensor(taps).view(1, 1, 2, 2) / 2


def upstream_vae(c: int, latent: int, e_enc: int, e_dec: int, tap: float = 0.3536) -> Upstream:
    """WF-VAE with one res block per stage and one per connection."""
    s = Upstream()
    s.conv2d("encoder.down1.0", 24, c)
    s.resnet("encoder.down1.1", c, c, temporal=False)
    s.conv2d("encoder.down1.2.conv", c, c)
    s.conv2d("encoder.down2.0", c + e_enc, 2 * c)
    s.resnet("encoder.down2.1", 2 * c, 2 * c, temporal=True)
    s.conv3d("encoder.down2.2.conv", 2 * c, 2 * c)
    s.conv2d("encoder.connect_l1", 12, e_enc)
    s.conv2d("encoder.connect_l2", 24, e_enc)
    s.resnet("encoder.mid.0", 2 * c + e_enc, 4 * c, temporal=True)
    s.attention("encoder.mid.1", 4 * c)
    s.resnet("encoder.mid.2", 4 * c, 4 * c, temporal=True)
    s.norm("encoder.norm_out", 4 * c)
    s.conv3d("encoder.conv_out", 4 * c, 2 * latent)
    s.haar("encoder.wavelet_transform_in", tap, inverse=False)
    s.haar("encoder.wavelet_transform_l2", tap, inverse=False)
    s.haar2d("encoder.wavelet_transform_l1")
    s.conv3d("decoder.conv_in", latent, 4 * c)
    s.resnet("decoder.mid.0", 4 * c, 4 * c, temporal=True)
    s.attention("decoder.mid.1", 4 * c)
    s.resnet("decoder.mid.2", 4 * c, 4 * c + e_dec, temporal=True)
    s.resnet("decoder.up2.0", 4 * c, 4 * c, temporal=True)
    s.conv3d("decoder.up2.1.conv", 4 * c, 4 * c)
    s.resnet("decoder.up2.2", 4 * c, 4 * c + e_dec, temporal=True)
    s.resnet("decoder.up1.0", 4 * c, 2 * c, temporal=True)
    s.conv2d("decoder.up1.1.conv", 2 * c, 2 * c)
    s.resnet("decoder.up1.2", 2 * c, 2 * c, temporal=True)
    s.resnet("decoder.layer.0", 2 * c, c, temporal=True)
    s.resnet("decoder.layer.1", c, c, temporal=True)
    for level, channels in (("l1", 12), ("l2", 24)):
        s.resnet(f"decoder.connect_{level}.0", e_dec, e_dec, temporal=True)
        s.conv2d(f"decoder.connect_{level}.1", e_dec, channels)
    s.norm("decoder.norm_out", c)
    s.conv2d("decoder.conv_out", c, 24)
    s.haar("decoder.inverse_wavelet_transform_out", tap, inverse=True)
    s.haar("decoder.inverse_wavelet_transform_l2", tap, inverse=True)
    s.haar2d("decoder.inverse_wavelet_transform_l1")
    return s


def write_upstream(folder: Path, config: dict, state: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(state, folder / "diffusion_pytorch_model.safetensors")
    return folder


def test_vae_convert_maps_every_upstream_tensor(tmp_path: Path) -> None:
    state = upstream_vae(8, 4, 8, 16)
    src = write_upstream(tmp_path / "up", VAE_CONFIG, state)
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
    (tmp_path / "config.json").write_text(json.dumps(VAE_CONFIG))
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
    src = write_upstream(tmp_path / "nearest", {**VAE_CONFIG, "t_interpolation": "nearest"}, state)
    with pytest.raises(SystemExit):
        vae_main(["convert", str(src), str(tmp_path / "bad")])
    assert "t_interpolation='nearest' is not supported" in capsys.readouterr().err


DIT_CONFIG = dict(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                  num_layers=5, cross_attention_dim=24, caption_channels=16, patch_size=2,
                  patch_size_t=1, activation_fn="gelu-approximate", attention_bias=True,
                  norm_elementwise_affine=False, norm_eps=1e-6, sparse1d=True, sparse_n=2,
                  interpolation_scale_t=1.0, interpolation_scale_h=1.0, interpolation_scale_w=1.0)


def upstream_dit(cfg: dict) -> Upstream:
    dim, c, p = cfg["num_attention_heads"] * cfg["attention_head_dim"], cfg["in_channels"], cfg["patch_size"]
    s = Upstream()
    s.conv2d("pos_embed.proj", c, dim, p)
    s.linear("adaln_single.emb.timestep_embedder.linear_1", 256, dim)
    s.linear("adaln_single.emb.timestep_embedder.linear_2", dim, dim)
    s.linear("adaln_single.linear", dim, 6 * dim)
    s.linear("caption_projection.linear_1", cfg["caption_channels"], dim)
    s.linear("caption_projection.linear_2", dim, dim)
    for i in range(cfg["num_layers"]):
        b = f"transformer_blocks.{i}"
        for attn in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                s.linear(f"{b}.{attn}.{proj}", dim, dim)
        s.linear(f"{b}.ff.net.0.proj", dim, 4 * dim)
        s.linear(f"{b}.ff.net.2", 4 * dim, dim)
        s[f"{b}.scale_shift_table"] = s.rand(6, dim)
    s["scale_shift_table"] = s.rand(2, dim)
    s.linear("proj_out", dim, p * p * c)
    return s


def test_dit_convert_maps_every_upstream_tensor(tmp_path: Path) -> None:
    state = upstream_dit(DIT_CONFIG)
    src = write_upstream(tmp_path / "up", DIT_CONFIG, state)
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
    state = upstream_dit(DIT_CONFIG)
    src = write_upstream(tmp_path / "scaled", {**DIT_CONFIG, "interpolation_scale_h": 2.0}, state)
    with pytest.raises(SystemExit) as exc:
        dit_main(["convert", str(src), str(tmp_path / "ours")])
    assert exc.value.code == 2 and "interpolation_scale_h=2.0" in capsys.readouterr().err
    del state["transformer_blocks.4.ff.net.2.bias"]
    src = write_upstream(tmp_path / "cut", DIT_CONFIG, state)
    with pytest.raises(SystemExit):
        dit_main(["convert", str(src), str(tmp_path / "ours")])
    assert "missing [blocks.4.mlp.2.bias]" in capsys.readouterr().err
