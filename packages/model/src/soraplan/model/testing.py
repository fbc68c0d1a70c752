"""Test kits: stand-ins for a trained text encoder and for encoded latents, so tests, smoke runs
and benches need neither a model hub nor a trained VAE."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from soraplan.model.dit.data import write_index, write_latent, write_null_text


def write_synthetic_latents(root: str | os.PathLike[str], shapes: list[tuple[int, int, int]],
                            per_shape: int, channels: int, text_dim: int, seed: int = 0) -> Path:
    """Random latents and text states in the latent-shard layout (`soraplan.model.dit.data`)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for shape_index, (t, h, w) in enumerate(shapes):
        for i in range(per_shape):
            length = int(torch.randint(2, 9, (1,), generator=generator))
            rows.append(write_latent(
                root, f"synthetic-{shape_index}-{i:04d}", f"synthetic sample {i}",
                torch.randn(channels, t, h, w, generator=generator),
                torch.randn(length, text_dim, generator=generator)))
    write_index(root, rows)
    write_null_text(root, torch.zeros(1, text_dim))
    return Path(root)


def save_tiny_t5(path: str | os.PathLike[str], d_model: int = 32, seed: int = 0,
                 vocabulary: list[str] | None = None, num_layers: int = 2, num_heads: int = 4) -> Path:
    """A randomly initialised T5 encoder and its tokenizer, saved at `path` and loaded back through
    `soraplan.model.dit.text.TextEncoder`: a stand-in for mT5 in tests, smoke runs and trials.

    The tokenizer is word-level over `vocabulary` (lower-case words; anything else is `<unk>`),
    or character-level over printable ASCII when `vocabulary` is None. A random encoder still
    gives every prompt distinct, fixed states, which is all a DiT needs to learn its conditioning.
    """
    import string

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    specials = ["<pad>", "</s>", "<unk>"]
    tokens = sorted(set(vocabulary)) if vocabulary is not None else list(string.printable[:95])
    vocab = {tok: i for i, tok in enumerate(specials + [t for t in tokens if t not in specials])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    if vocabulary is None:
        tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    else:
        tokenizer.normalizer = normalizers.Lowercase()
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>",
                                   eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(vocab), d_model=d_model, d_kv=d_model // num_heads,
                      d_ff=2 * d_model, num_layers=num_layers, num_heads=num_heads, pad_token_id=0,
                      eos_token_id=1, decoder_start_token_id=0)
    path = Path(path)
    T5EncoderModel(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


# --- Stand-ins for released checkpoints -----------------------------------------------------------
# State dicts named and shaped the way upstream's modules name and shape their tensors
# (PKU-YuanGroup/WF-VAE `WFVAEModel`, Open-Sora-Plan v1.3 `OpenSoraT2V_v1_3`), for the converters'
# tests and for trying `soraplan-vae convert` / `soraplan-dit convert` without the real weights.

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
UPSTREAM_VAE_CONFIG = dict(latent_dim=4, base_channels=8, encoder_num_resblocks=1, decoder_num_resblocks=1,
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
        # At the scale of trained weights, so converted models also sample and fine-tune sanely.
        return 0.02 * torch.randn(*shape, generator=self.g)

    def linear(self, name: str, i: int, o: int) -> None:
        self[f"{name}.weight"], self[f"{name}.bias"] = self.rand(o, i), self.rand(o)

    def conv2d(self, name: str, i: int, o: int, k: int = 3) -> None:
        self[f"{name}.weight"], self[f"{name}.bias"] = self.rand(o, i, k, k), self.rand(o)

    def conv3d(self, name: str, i: int, o: int, k: int = 3) -> None:  # CausalConv3d
        self[f"{name}.conv.weight"], self[f"{name}.conv.bias"] = self.rand(o, i, k, k, k), self.rand(o)

    def norm(self, name: str, ch: int) -> None:  # LayerNorm wrapper
        self[f"{name}.norm.weight"], self[f"{name}.norm.bias"] = 1 + self.rand(ch), self.rand(ch)

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


UPSTREAM_DIT_CONFIG = dict(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
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




def save_tiny_autoencoder_kl(path: str | os.PathLike[str]) -> Path:
    """A randomly initialised AutoencoderKL of the sd-vae-ft-ema class (4 levels: 8x, 4 latent
    channels, scaling factor 0.18215), small enough for tests."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=4,
                        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215)
    vae.save_pretrained(path)
    return Path(path)
