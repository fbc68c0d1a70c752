import json
import subprocess
import sys

import pytest
import torch
from diffusers import AutoModel, DiffusionPipeline
from soraplan.model.dit.configs import DiTModelConfig
from soraplan.model.dit.diffusion import DiffusionConfig
from soraplan.model.dit.modeling_skiparse import SkiparseDiT
from soraplan.model.dit.text import TextEncoder
from soraplan.model.pipeline import SoraPlanPipeline
from soraplan.model.testing import save_tiny_t5
from soraplan.model.vae.configs import WFVAEConfig
from soraplan.model.vae.modeling_wfvae import WFVAEModel

SIZE = dict(num_frames=5, height=32, width=48, num_inference_steps=2)


def public(config):
    return {key: value for key, value in config.items() if not key.startswith("_")}


def seeded(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, torch_one_thread):
    """A tiny pipeline whose VAE carries per-channel latent statistics, and its saved directory."""
    root = tmp_path_factory.mktemp("pipeline")
    torch.manual_seed(0)
    dit = DiTModelConfig(name="tiny").build()
    torch.nn.init.normal_(dit.proj_out.weight, std=0.02)
    vae = WFVAEConfig(name="wfvae-tiny", overrides=dict(
        shift_factor=[0.1, -0.2, 0.3, 0.0], scaling_factor=[2.0, 0.5, 1.5, 1.0])).build()
    text = TextEncoder(str(save_tiny_t5(root / "t5", d_model=32)), 64)
    pipe = SoraPlanPipeline(text.tokenizer, text.model, dit, vae, DiffusionConfig().sample_scheduler())
    pipe.save_pretrained(root / "pipe")
    return pipe, root / "pipe"


def test_save_and_load_round_trip_gives_identical_frames(saved):
    pipe, directory = saved
    frames = pipe("a red kite", generator=seeded(1), **SIZE).frames
    assert frames.shape == (1, 5, 32, 48, 3) and 0 <= frames.min() and frames.max() <= 1
    assert frames.std() > 0.01  # a video, not a constant
    loaded = SoraPlanPipeline.from_pretrained(directory)
    assert (loaded("a red kite", generator=seeded(1), **SIZE).frames == frames).all()
    assert not (loaded("a red kite", generator=seeded(2), **SIZE).frames == frames).all()
    index = json.loads((directory / "model_index.json").read_text())
    assert index["transformer"] == ["soraplan.model.dit.modeling_skiparse", "SkiparseDiT"]


def test_a_fresh_process_loads_the_saved_pipeline(saved):
    """diffusers loads components only from modules already imported; importing the pipeline
    class alone must be enough (as in `soraplan-sample --pipeline`)."""
    _, directory = saved
    code = ("import sys; from soraplan.model.pipeline import SoraPlanPipeline; "
            "pipe = SoraPlanPipeline.from_pretrained(sys.argv[1]); print(type(pipe.vae).__name__)")
    done = subprocess.run([sys.executable, "-c", code, str(directory)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.split()[-1] == "WFVAEModel", done.stderr[-2000:]


def test_diffusion_pipeline_loads_the_directory_with_its_module_file(saved):
    pipe, directory = saved
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(directory, custom_pipeline="pipeline")
    loaded = DiffusionPipeline.from_pretrained(directory, custom_pipeline="pipeline", trust_remote_code=True)
    assert type(loaded) is SoraPlanPipeline
    assert (loaded("a blue boat", generator=seeded(3), **SIZE).frames
            == pipe("a blue boat", generator=seeded(3), **SIZE).frames).all()


def test_automodel_loads_the_saved_dit_and_vae(saved, tmp_path):
    pipe, directory = saved
    for component, cls in (("transformer", SkiparseDiT), ("vae", WFVAEModel)):
        model, path = getattr(pipe, component), str(tmp_path / component)  # AutoModel needs a str
        model.save_pretrained(path)
        config = json.loads((tmp_path / component / "config.json").read_text())
        assert config["auto_map"] == {"AutoModel": f"{cls.__module__.rsplit('.', 1)[1]}.{cls.__name__}"}
        with pytest.raises(ValueError, match="trust_remote_code"):
            AutoModel.from_pretrained(path)
        for loaded in (AutoModel.from_pretrained(path, trust_remote_code=True),
                       AutoModel.from_pretrained(str(directory), subfolder=component)):  # via model_index.json
            assert type(loaded) is cls and "auto_map" not in loaded.config
            assert public(loaded.config) == public(model.config)
            for name, tensor in model.state_dict().items():
                assert torch.equal(loaded.state_dict()[name], tensor), name


def test_frames_decode_the_latents_with_the_vae_statistics(saved):
    pipe, _ = saved
    latents = pipe("a red kite", generator=seeded(1), output_type="latent", **SIZE).frames
    frames = pipe("a red kite", generator=seeded(1), output_type="pt", **SIZE).frames
    shift = torch.tensor(pipe.vae.config.shift_factor).reshape(1, -1, 1, 1, 1)
    scale = torch.tensor(pipe.vae.config.scaling_factor).reshape(1, -1, 1, 1, 1)
    with torch.no_grad():
        video = pipe.vae.decode(latents / scale + shift).sample.clamp(-1, 1)
    expected = ((video + 1) / 2).permute(0, 2, 1, 3, 4)  # (B, T, 3, H, W)
    torch.testing.assert_close(frames, expected)
    with torch.no_grad():
        ignored = pipe.vae.decode(latents).sample.clamp(-1, 1)
    assert not torch.allclose((ignored + 1) / 2, expected.permute(0, 2, 1, 3, 4), atol=1e-3)


def test_embeddings_replace_prompts_and_bad_sizes_are_refused(saved):
    pipe, _ = saved
    states, mask = pipe.encode_prompt(["a red kite", ""])
    by_embeds = pipe(prompt_embeds=states[:1], prompt_attention_mask=mask[:1],
                     negative_prompt_embeds=states[1:], negative_prompt_attention_mask=mask[1:],
                     generator=seeded(1), **SIZE).frames
    assert (by_embeds == pipe("a red kite", generator=seeded(1), **SIZE).frames).all()
    with pytest.raises(ValueError, match="num_frames must be 1 \\+ 4n"):
        pipe("a red kite", **{**SIZE, "num_frames": 6})
    with pytest.raises(ValueError, match="multiples of 8"):
        pipe("a red kite", **{**SIZE, "height": 36})
    with pytest.raises(ValueError, match="height/width"):
        pipe("a red kite", **{**SIZE, "height": 24})  # 3 latent rows: not a whole 2x2 patch


def test_an_stdit_with_a_per_frame_image_vae_round_trips_as_a_pipeline(tmp_path, torch_one_thread):
    from diffusers import AutoencoderKL

    from soraplan.model.dit.modeling_stdit import STDiT

    model = DiTModelConfig(name="stdit-tiny").build()
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=model.config.in_channels,
                        norm_num_groups=8, layers_per_block=1)
    pipe = SoraPlanPipeline(None, None, model, vae, DiffusionConfig.for_model(model).sample_scheduler())
    size = dict(num_frames=3, height=16, width=16, num_inference_steps=2)
    states = torch.randn(1, 4, model.config.text_dim)
    call = dict(prompt_embeds=states, negative_prompt_embeds=torch.zeros_like(states), **size)
    frames = pipe(generator=seeded(0), **call).frames
    assert frames.shape == (1, 3, 16, 16, 3)  # time factor 1: one latent frame per frame
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = SoraPlanPipeline.from_pretrained(tmp_path / "pipe")
    assert type(loaded.transformer) is STDiT and type(loaded.vae) is AutoencoderKL
    assert type(AutoModel.from_pretrained(str(tmp_path / "pipe" / "transformer"), trust_remote_code=True)) is STDiT
    assert (loaded(generator=seeded(0), **call).frames == frames).all()
