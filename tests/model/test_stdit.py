"""STDiT grown from a PixArt-alpha-layout image DiT (Open-Sora v1)."""

import re

import pytest
import torch
from einops import rearrange
from safetensors.torch import save_file
from soraplan.core.config import ConfigError
from soraplan.model.dit.configs import DIT_CONFIGS, DiTModelConfig, load_dit
from soraplan.model.dit.modeling_stdit import (
    PIXART_KEYS,
    STDiT,
    init_from_image_dit,
    sincos_position_embedding,
)

# PixArt-alpha's PixArt (diffusion/model/nets/PixArt.py), 2 blocks: every state-dict key.
PIXART_2_LAYER_KEYS = {
    "pos_embed", "x_embedder.proj.weight", "x_embedder.proj.bias",
    "t_embedder.mlp.0.weight", "t_embedder.mlp.0.bias", "t_embedder.mlp.2.weight",
    "t_embedder.mlp.2.bias", "t_block.1.weight", "t_block.1.bias", "y_embedder.y_embedding",
    "y_embedder.y_proj.fc1.weight", "y_embedder.y_proj.fc1.bias", "y_embedder.y_proj.fc2.weight",
    "y_embedder.y_proj.fc2.bias", "final_layer.scale_shift_table", "final_layer.linear.weight",
    "final_layer.linear.bias",
    *(f"blocks.{i}.{name}" for i in range(2) for name in (
        "scale_shift_table", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
        "attn.proj.bias", "cross_attn.q_linear.weight", "cross_attn.q_linear.bias",
        "cross_attn.kv_linear.weight", "cross_attn.kv_linear.bias", "cross_attn.proj.weight",
        "cross_attn.proj.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
        "mlp.fc2.bias")),
}


def to_pixart_layout(model: STDiT) -> dict[str, torch.Tensor]:
    """Our image model's weights under PixArt-alpha's names and shapes (conv patch embedding,
    the fixed buffers and the learned null caption included), as its .pth files hold them."""
    ours_to_theirs = [(re.compile("^" + re.escape(dst).replace(r"\{\}", r"(\d+)") + r"(\..+)?$"), src)
                      for src, dst in PIXART_KEYS.items()]
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("patch_embed."):
            if key.endswith("weight"):  # (out, (ph pw c)) -> Conv2d (out, c, ph, pw)
                value = rearrange(value, "o (ph pw c) -> o c ph pw", ph=2, pw=2).contiguous()
            state["x_embedder.proj." + key.rsplit(".", 1)[1]] = value
            continue
        for pattern, src in ours_to_theirs:
            match = pattern.match(key)
            if match:
                *index, suffix = match.groups()
                state[src.format(*index) + (suffix or "")] = value
                break
        else:
            raise KeyError(key)
    dim = model.config.num_heads * model.config.head_dim
    state["pos_embed"] = torch.zeros(1, 16, dim)
    state["y_embedder.y_embedding"] = torch.zeros(120, model.config.text_dim)
    return state


def random_image_model() -> STDiT:
    torch.manual_seed(0)
    model = DiTModelConfig(name="pixart-tiny").build().double()
    with torch.no_grad():  # every weight random: zero-initialised outputs would hide mistakes
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def inputs(t: int = 3, h: int = 8, w: int = 8):
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, t, h, w, generator=g, dtype=torch.float64)
    text = torch.randn(2, 5, 32, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    return latents, torch.tensor([10, 700]), text, mask


def test_named_configs_select_the_stdit_layout():
    assert isinstance(DiTModelConfig(name="stdit-tiny").build(), STDiT)
    with torch.device("meta"):
        xl = DiTModelConfig(name="stdit-xl-2").build()
    assert (xl.config.num_layers, xl.config.num_heads * xl.config.head_dim) == (28, 1152)
    assert (xl.config.patch_size_t, xl.config.patch_size, xl.config.in_channels) == (1, 2, 4)
    assert DIT_CONFIGS["pixart-xl-2"]["temporal"] is False


def test_pixart_key_map_covers_the_upstream_layout():
    state = to_pixart_layout(random_image_model())
    assert set(state) == PIXART_2_LAYER_KEYS


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "save_pretrained"])
def test_video_model_after_init_equals_the_image_model_per_frame(fmt, tmp_path, torch_one_thread):
    image = random_image_model()
    if fmt == "pth":  # PixArt's own release format: {"state_dict": ...}, read with weights_only
        path = tmp_path / "PixArt-tiny.pth"
        torch.save({"state_dict": to_pixart_layout(image)}, path)
    elif fmt == "safetensors":
        path = tmp_path / "pixart.safetensors"
        save_file(to_pixart_layout(image), str(path))
    else:
        path = tmp_path / "image_dit"
        image.save_pretrained(path)
    video = DiTModelConfig(name="stdit-tiny").build().double()
    left = init_from_image_dit(video, path)
    assert left and all(".attn_temp." in name for name in left)

    latents, timesteps, text, mask = inputs(t=3)
    out = video(latents, timesteps, text, mask)
    per_frame = torch.stack([image(latents[:, :, i : i + 1], timesteps, text, mask)[:, :, 0]
                             for i in range(3)], dim=2)
    assert out.shape == (2, 8, 3, 8, 8)  # noise and variance channels
    assert (out - per_frame).abs().max().item() < 1e-12
    assert per_frame.abs().mean() > 0.1

    # The first step's gradient reaches the temporal layers (their zero output projection).
    video.float()
    loss = video(latents.float(), timesteps, text.float(), mask).square().mean()
    loss.backward()
    for block in video.blocks:
        assert block.attn_temp.to_out.weight.grad.abs().sum() > 0


def test_a_model_that_does_not_fit_is_refused(tmp_path):
    image = random_image_model()
    image.save_pretrained(tmp_path / "image_dit")
    narrower = STDiT(in_channels=4, num_layers=2, num_heads=2, head_dim=8, text_dim=32)
    with pytest.raises(ValueError, match="do not fit"):
        init_from_image_dit(narrower, tmp_path / "image_dit")
    with pytest.raises(ConfigError, match="model.init_from"):
        DiTModelConfig(name="stdit-tiny", overrides={"head_dim": 8},
                       init_from=str(tmp_path / "image_dit")).build()
    with pytest.raises(FileNotFoundError, match="model.init_from"):
        DiTModelConfig(name="stdit-tiny", init_from=str(tmp_path / "nope")).build()


def test_space_scale_maps_a_small_grid_onto_a_large_one():
    # At space_scale 0.5 (Open-Sora v1 at 256 px) a 8x8 grid sits on the even positions of a
    # 16x16 grid at scale 1 (512 px), so weights from the larger size see familiar positions.
    small, _ = sincos_position_embedding((1, 8, 8), 64, 0.5, 1.0)
    large, _ = sincos_position_embedding((1, 16, 16), 64, 1.0, 1.0)
    even = large.reshape(16, 16, 64)[::2, ::2].reshape(64, 64)
    torch.testing.assert_close(small, even)
    _, temporal = sincos_position_embedding((4, 2, 2), 64, 1.0, 2.0)
    _, unscaled = sincos_position_embedding((4, 2, 2), 64, 1.0, 1.0)
    torch.testing.assert_close(temporal[2], unscaled[1])  # time_scale 2: frame 2 sits at t = 1


def test_trained_at_one_size_samples_at_another(tmp_path, torch_one_thread):
    from soraplan.model.dit.diffusion import DiffusionConfig, sample_latents

    diffusion = DiffusionConfig(kind="iddpm")
    model = DiTModelConfig(name="stdit-tiny", overrides={"space_scale": 0.5}).build()
    scheduler = diffusion.train_scheduler()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    latents, _, text, mask = inputs(t=2, h=8, w=8)
    for step in range(3):  # trained on 2 x 8 x 8 latents
        loss = diffusion.loss(model, scheduler, latents.float(), text.float(), mask,
                              [4 * (step * 2 + i) for i in range(2)]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(tmp_path / "stdit")
    loaded = load_dit(tmp_path / "stdit").eval()
    assert isinstance(loaded, STDiT) and loaded.config.space_scale == 0.5
    sample = sample_latents(loaded, diffusion.sample_scheduler(), (4, 3, 12, 16),
                            text[:1].float(), mask[:1], torch.zeros(1, 1, 32), mask[:1, :1],
                            steps=4, guidance_scale=7.0, seed=0)
    assert sample.shape == (1, 4, 3, 12, 16) and torch.isfinite(sample).all()
