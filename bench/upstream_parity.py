"""Our WF-VAE and Skiparse DiT against the upstream code, on the same weights. Prints JSON.

    uv run python bench/upstream_parity.py UPSTREAM_SRC

UPSTREAM_SRC holds checkouts of PKU-YuanGroup/WF-VAE and PKU-YuanGroup/Open-Sora-Plan (as
`WF-VAE/` and `Open-Sora-Plan/`; `--wfvae` / `--osp` point elsewhere). Their models are built
from those checkouts (not vendored, not a dependency) on small random configs in float64,
saved with their own save_pretrained, converted with `soraplan-vae convert` /
`soraplan-dit convert` and loaded into ours; the figures are the max abs differences of encode
(posterior mean and log-variance), decode (full and in chunks) and the DiT forward pass.

Only upstream modules the two models need are imported: Open-Sora-Plan's package
`__init__`s (which import its data, VAE wrappers and training utilities) are bypassed by
registering the packages by path, and `opensora.utils.utils` (wandb, accelerate, ...) is
replaced by the one helper the DiT imports from it. Its attention wraps SDPA in
`torch.backends.cuda.sdp_kernel(enable_math=False, ...)`, a CUDA kernel choice that on CPU
leaves no kernel at all; the bench makes that context a no-op (the math is the same).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch

from soraplan.model.dit.convert import convert_dit
from soraplan.model.dit.modeling_skiparse import SkiparseDiT
from soraplan.model.vae import WFVAEModel
from soraplan.model.vae.convert import convert_vae

VAE_CONFIG = dict(latent_dim=4, base_channels=8, encoder_num_resblocks=1, decoder_num_resblocks=1,
                  encoder_energy_flow_hidden_size=8, decoder_energy_flow_hidden_size=16,
                  connect_res_layer_num=1, use_attention=True, norm_type="layernorm",
                  t_interpolation="trilinear", scale=[0.5, 1.0, 1.5, 2.0], shift=[0.1, -0.1, 0.2, 0.0])
# 5 layers: upstream's rule (blocks 2..29 sparse) makes 2, 3, 4 sparse; 45 tokens pad to 48 for
# k = 4 (upstream builds masks for k = 4 only).
DIT_CONFIG = dict(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                  num_layers=5, cross_attention_dim=24, caption_channels=16, patch_size=2,
                  patch_size_t=1, activation_fn="gelu-approximate", attention_bias=True,
                  norm_elementwise_affine=False, norm_eps=1e-6, sparse1d=True, sparse_n=4,
                  sample_size_h=6, sample_size_w=10, sample_size_t=3)


def commit(path: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Trainable weights random and O(0.1-1) so every path shows in the outputs; fixed ones
    (upstream's Haar filters) kept."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.3 if p.ndim > 1 else 0.1))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def vae_parity(src: Path, work: Path) -> dict[str, object]:
    sys.path.insert(0, str(src))
    from causalvideovae.model.vae.modeling_wfvae import WFVAEModel as UpstreamWFVAE

    upstream = UpstreamWFVAE(**VAE_CONFIG)
    randomize(upstream, 0)
    upstream = upstream.double().eval()
    upstream.save_pretrained(work / "upstream_vae")
    convert_vae(work / "upstream_vae", work / "vae")
    ours = WFVAEModel.from_pretrained(work / "vae", torch_dtype=torch.float64).eval()
    x = torch.rand(1, 3, 17, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        up_post = upstream.encode(x).latent_dist
        our_post = ours.encode(x).latent_dist
        z = up_post.mode()
        up_video = upstream.decode(z).sample
        our_video = ours.decode(z).sample
        chunked = ours.decode(z, chunk_latents=2).sample
    return {"input": list(x.shape), "latents": list(z.shape),
            "encode_mean": max_diff(our_post.mean, up_post.mean),
            "encode_logvar": max_diff(our_post.logvar, up_post.logvar),
            "decode": max_diff(our_video, up_video),
            "decode_ours_chunked_2_latents": max_diff(chunked, up_video),
            "decoded_abs_max": up_video.abs().max().item()}


def import_open_sora_plan(src: Path) -> type:
    for name in ("opensora", "opensora.models", "opensora.models.diffusion", "opensora.utils"):
        package = types.ModuleType(name)
        package.__path__ = [str(src / name.replace(".", "/"))]
        sys.modules[name] = package
    helpers = types.ModuleType("opensora.utils.utils")
    helpers.to_2tuple = lambda x: x if isinstance(x, (tuple, list)) else (x, x)
    sys.modules["opensora.utils.utils"] = helpers
    from opensora.models.diffusion.opensora_v1_3.modeling_opensora import OpenSoraT2V_v1_3

    torch.backends.cuda.sdp_kernel = lambda **kwargs: contextlib.nullcontext()

    return OpenSoraT2V_v1_3


def dit_parity(src: Path, work: Path) -> dict[str, object]:
    upstream_class = import_open_sora_plan(src)
    upstream = upstream_class(**DIT_CONFIG)
    randomize(upstream, 2)
    upstream = upstream.double().eval()
    upstream.save_pretrained(work / "upstream_dit")
    convert_dit(work / "upstream_dit", work / "dit")
    ours = SkiparseDiT.from_pretrained(work / "dit", torch_dtype=torch.float64).eval()
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(2, 4, 3, 6, 10, generator=g, dtype=torch.float64)
    text = torch.randn(2, 7, 16, generator=g, dtype=torch.float64)
    text_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    timestep = torch.tensor([10, 700])
    with torch.no_grad():
        up_out = upstream(latents, timestep, text[:, None], torch.ones(2, 3, 6, 10), text_mask[:, None]).sample
        our_out = ours(latents, timestep, text, text_mask.bool())
    return {"latents": list(latents.shape), "tokens": 3 * 3 * 5, "text_tokens": 7,
            "layer_kinds": [b.attn.kind for b in ours.blocks],
            "forward": max_diff(our_out, up_out), "output_abs_max": up_out.abs().max().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("upstream_src", type=Path, help="folder with WF-VAE/ and Open-Sora-Plan/")
    parser.add_argument("--wfvae", type=Path, help="WF-VAE checkout (default UPSTREAM_SRC/WF-VAE)")
    parser.add_argument("--osp", type=Path, help="Open-Sora-Plan checkout (default UPSTREAM_SRC/Open-Sora-Plan)")
    args = parser.parse_args()
    wfvae = args.wfvae or args.upstream_src / "WF-VAE"
    osp = args.osp or args.upstream_src / "Open-Sora-Plan"
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        result = {"dtype": "float64",
                  "upstream_commits": {"PKU-YuanGroup/WF-VAE": commit(wfvae),
                                       "PKU-YuanGroup/Open-Sora-Plan": commit(osp)},
                  "wfvae": vae_parity(wfvae, Path(tmp)),
                  "skiparse_dit": dit_parity(osp, Path(tmp))}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
