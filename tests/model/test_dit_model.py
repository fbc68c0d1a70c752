import pytest
import torch
from soraplan.model.dit.diffusion import DiffusionConfig, diffusion_loss, sample_latents
from soraplan.model.dit.configs import DIT_CONFIGS, DiTModelConfig
from soraplan.model.dit.modeling_skiparse import SkiparseDiT
from soraplan.model.dit.text import TextEmbeddingCache, TextEncoderConfig
from soraplan.model.testing import save_tiny_t5


def tiny(**overrides) -> SkiparseDiT:
    torch.manual_seed(0)
    return DiTModelConfig(name="tiny", overrides=overrides).build()


def randomize_outputs(model: SkiparseDiT) -> None:
    # The output projection starts at zero; make it random so outputs depend on the inputs.
    torch.nn.init.normal_(model.proj_out.weight, std=0.1)


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    return save_tiny_t5(tmp_path_factory.mktemp("t5"), d_model=32)


def test_named_configs_match_issue():
    big = DIT_CONFIGS["skiparse-2.7b"]
    assert (big["num_layers"], big["num_heads"], big["head_dim"], big["text_dim"],
            big["sparse_k"]) == (32, 24, 96, 4096, 4)
    with torch.device("meta"):
        model = DiTModelConfig(name="skiparse-2.7b").build()
    params = sum(p.numel() for p in model.parameters())
    assert 2.6e9 < params < 2.9e9
    kinds = [b.attn.kind for b in model.blocks]
    assert kinds[:2] == ["full", "full"] and kinds[-2:] == ["full", "full"]
    assert kinds[2:6] == ["single_skip", "group_skip", "single_skip", "group_skip"]


def test_open_sora_plan_config_differs_only_in_its_layer_options():
    with torch.device("meta"):
        ours = DiTModelConfig(name="skiparse-2.7b").build()
        osp = DiTModelConfig(name="skiparse-osp-v1.3").build()
    # The same weights but the cross-attention norm's affine (off: raw hidden states).
    names = {n for n, _ in ours.named_parameters()} - {n for n, _ in osp.named_parameters()}
    assert names == {f"blocks.{i}.norm_cross.{w}" for i in range(32) for w in ("weight", "bias")}
    assert osp.blocks[5].attn.rope_pairing == "halves"


@pytest.mark.parametrize("mode", ["full", "spatial_temporal", "skip_window", "skiparse"])
def test_forward_shape_and_save_load_roundtrip(mode, tmp_path):
    model = tiny(attention_mode=mode).eval()
    randomize_outputs(model)
    latents = torch.randn(2, 4, 3, 8, 6)
    text, mask = torch.randn(2, 5, 32), torch.tensor([[1] * 5, [1, 1, 0, 0, 0]]).bool()
    out = model(latents, torch.tensor([10, 500]), text, mask)
    assert out.shape == latents.shape
    model.save_pretrained(tmp_path / "dit")
    assert (tmp_path / "dit" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = SkiparseDiT.from_pretrained(tmp_path / "dit").eval()
    assert loaded.config.attention_mode == mode
    torch.testing.assert_close(loaded(latents, torch.tensor([10, 500]), text, mask), out)


def test_padded_latents_and_text_do_not_leak():
    model = tiny().eval()
    randomize_outputs(model)
    latents = torch.randn(1, 4, 3, 8, 8)
    latent_mask = torch.ones(1, 3, 8, 8, dtype=torch.bool)
    latent_mask[:, 2] = False  # last latent frame is padding
    text, text_mask = torch.randn(1, 6, 32), torch.tensor([[1, 1, 1, 0, 0, 0]]).bool()
    t = torch.tensor([300])
    out_a = model(latents, t, text, text_mask, latent_mask)
    latents_b, text_b = latents.clone(), text.clone()
    latents_b[:, :, 2] = 100 * torch.randn(1, 4, 8, 8)
    text_b[:, 3:] = 100 * torch.randn(1, 3, 32)
    out_b = model(latents_b, t, text_b, text_mask, latent_mask)
    torch.testing.assert_close(out_a[:, :, :2], out_b[:, :, :2], rtol=1e-5, atol=1e-5)


def test_text_encoder_by_path_and_cache(tiny_t5, tmp_path):
    encoder = TextEncoderConfig(path=str(tiny_t5), max_length=32).build()
    prompts = ["a red car drives", ""]
    states, mask = encoder.encode(prompts)
    assert states.shape[-1] == 32 and mask[1].sum() == 1  # the empty prompt is just </s>
    cache = TextEmbeddingCache(tmp_path / "cache")
    assert cache.missing(prompts) == sorted(prompts)
    cache.fill(encoder, prompts)
    cached, cached_mask = cache.get(prompts)
    torch.testing.assert_close(cached, states[:, : cached.shape[1]])
    assert torch.equal(cached_mask, mask[:, : cached.shape[1]])
    model = tiny().eval()
    out = model(torch.randn(2, 4, 1, 4, 4), torch.tensor([1, 2]), cached, cached_mask)
    assert out.isfinite().all()


def test_missing_text_encoder_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="text_encoder.path"):
        TextEncoderConfig(path=str(tmp_path / "nope")).build()


def test_tiny_dit_overfits_a_handful_of_latents():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: threads only add overhead on a shared CPU
    try:
        torch.manual_seed(0)
        model = tiny()
        scheduler = DiffusionConfig().train_scheduler()
        # Four latents, each a random colour per channel, so memorising them does not depend on
        # absolute positions (the model has only relative RoPE positions).
        latents = torch.randn(4, 4, 1, 1, 1).expand(4, 4, 2, 4, 4).contiguous()
        text = torch.randn(4, 3, 32)
        mask = torch.ones(4, 3, dtype=torch.bool)

        def eval_loss() -> float:
            with torch.no_grad():
                return sum(diffusion_loss(model, scheduler, latents, text, mask,
                                          [1000 + 10 * t + j for j in range(4)],
                                          timesteps=torch.full((4,), t)).mean().item()
                           for t in range(50, 1000, 50)) / 19

        before = eval_loss()
        steps = 500
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
        decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / steps)
        for step in range(steps):
            loss = diffusion_loss(model, scheduler, latents, text, mask,
                                  [4 * step + j for j in range(4)]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            decay.step()
        after = eval_loss()
    finally:
        torch.set_num_threads(threads)
    assert after < before / 10, (before, after)


def test_sampling_runs_with_cfg_and_is_seeded():
    model = tiny().eval()
    randomize_outputs(model)
    diffusion = DiffusionConfig(sample_steps=4)
    text, mask = torch.randn(1, 3, 32), torch.ones(1, 3, dtype=torch.bool)
    null, null_mask = torch.zeros(1, 1, 32), torch.ones(1, 1, dtype=torch.bool)  # shorter: padded
    kwargs = dict(latent_shape=(4, 2, 4, 4), text_states=text, text_mask=mask, null_states=null,
                  null_mask=null_mask, steps=4, guidance_scale=7.5)
    a = sample_latents(model, diffusion.sample_scheduler(), seed=3, **kwargs)
    b = sample_latents(model, diffusion.sample_scheduler(), seed=3, **kwargs)
    c = sample_latents(model, diffusion.sample_scheduler(), seed=4, **kwargs)
    assert a.shape == (1, 4, 2, 4, 4) and a.isfinite().all()
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    sched = diffusion.sample_scheduler()
    sched.set_timesteps(4)
    assert sched.timesteps[0] == 999  # trailing spacing starts at the zero-SNR step


@pytest.mark.parametrize("sampler", ["euler_ancestral", "euler", "ddim", "dpm_solver", "ddpm"])
def test_every_sampler_lands_on_what_an_exact_denoiser_predicts(sampler):
    """A model that returns the exact v towards one latent x0 (values well outside [-1, 1], as
    normalised latents have) must be sampled to x0 by every sampler the CLI offers."""
    from soraplan.model.dit.diffusion import sampler_from_config

    train = DiffusionConfig().train_scheduler()
    alphas = train.alphas_cumprod.double()
    x0 = torch.linspace(-3.0, 3.0, 2 * 2 * 3 * 3).reshape(1, 2, 2, 3, 3).double()

    def exact_v(x_t, t, states, mask):
        a = alphas[t.round().long()].sqrt().view(-1, 1, 1, 1, 1)
        s = (1 - alphas[t.round().long()]).sqrt().view(-1, 1, 1, 1, 1)
        eps = (x_t.double() - a * x0) / s.clamp(min=1e-12)
        return (a * eps - s * x0).to(x_t.dtype)

    scheduler = sampler_from_config(sampler, DiffusionConfig().sample_scheduler().config)
    states, mask = torch.zeros(1, 1, 4), torch.ones(1, 1, dtype=torch.bool)
    out = sample_latents(exact_v, scheduler, (2, 2, 3, 3), states, mask, states, mask, 20, 1.0, 0)
    assert torch.allclose(out.double(), x0, atol=1e-2), (out - x0).abs().max()
