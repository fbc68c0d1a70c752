from pathlib import Path

import numpy as np
import pytest
import torch
from soraplan.core.video import probe
from soraplan.core.train.checkpoint import atomic_write_text
from soraplan.model.dit.configs import DiTModelConfig
from soraplan.core.outputs import read_sample_index
from soraplan.core.train.checkpoint import resolve_pretrained
from soraplan.model.sample import main
from soraplan.model.testing import save_tiny_t5
from soraplan.model.vae.configs import WFVAEConfig


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    torch.manual_seed(0)
    model = DiTModelConfig(name="tiny").build()
    torch.nn.init.normal_(model.proj_out.weight, std=0.02)
    # Lay the weights out as a training run does: <out>/checkpoints/<tag>/ema + latest.
    model.save_pretrained(root / "run" / "checkpoints" / "step_00000010" / "ema")
    atomic_write_text(root / "run" / "checkpoints" / "latest", "step_00000010")
    WFVAEConfig(name="wfvae-tiny").build().save_pretrained(root / "vae")
    save_tiny_t5(root / "t5", d_model=32)
    return root


def test_a_run_resolves_to_its_latest_ema(assets, capsys):
    expected = assets / "run" / "checkpoints" / "step_00000010" / "ema"
    assert resolve_pretrained(assets / "run") == expected
    assert resolve_pretrained(assets / "run" / "checkpoints") == expected
    assert resolve_pretrained(expected) == expected
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(assets / "nothing"), "--prompt", "x", "--vae", str(assets / "vae")])
    assert exit_info.value.code == 2 and "(--checkpoint)" in capsys.readouterr().err


def test_sample_writes_a_video_of_the_requested_shape(assets, tmp_path):
    out = tmp_path / "video.mp4"
    main(["--checkpoint", str(assets / "run"), "--prompt", "a red kite", "--out", str(out),
          "--vae", str(assets / "vae"), "--text-encoder", str(assets / "t5"), "--frames", "5",
          "--height", "32", "--width", "48", "--steps", "2", "--cfg", "7.5", "--seed", "1",
          "--device", "cpu"])
    info = probe(out)
    assert (info.num_frames, info.width, info.height) == (5, 48, 32)


def test_missing_vae_fails_fast_naming_the_flag(assets, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(assets / "run"), "--prompt", "x", "--vae",
              str(tmp_path / "no-vae"), "--text-encoder", str(assets / "t5")])
    assert exit_info.value.code == 2
    assert "--vae" in capsys.readouterr().err


def test_a_missing_text_encoder_names_the_flag_and_how_to_make_one(assets, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(assets / "run"), "--prompt", "x", "--vae", str(assets / "vae"),
              "--text-encoder", str(tmp_path / "no-t5"), "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "set --text-encoder" in err and "soraplan-dit text-encoder --out DIR" in err
    assert not (tmp_path / "x.mp4").exists()


def test_prompts_file_and_seeds_write_an_indexed_folder(assets, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red kite\n\na blue boat\n")
    out = tmp_path / "samples"
    main(["--checkpoint", str(assets / "run"), "--prompts-file", str(prompts), "--seeds", "3", "4",
          "--out", str(out), "--vae", str(assets / "vae"), "--text-encoder", str(assets / "t5"),
          "--frames", "5", "--height", "32", "--width", "32", "--steps", "2", "--device", "cpu"])
    index = read_sample_index(out)
    assert [(e["prompt"], e["seed"]) for e in index] == [
        ("a red kite", 3), ("a red kite", 4), ("a blue boat", 3), ("a blue boat", 4)]
    assert all(probe(out / e["video"]).num_frames == 5 for e in index)


@pytest.fixture
def written(monkeypatch):
    """The frames soraplan-sample writes, by file name, instead of videos."""
    frames = {}
    monkeypatch.setattr("soraplan.core.video.write_video",
                        lambda path, video, fps: frames.__setitem__(Path(path).name, video))
    return frames


ARGS = ["--prompt", "a red kite", "--frames", "5", "--height", "32", "--width", "48", "--steps", "2",
        "--seed", "7", "--device", "cpu"]


def test_sample_is_the_pipeline_and_the_sampling_it_replaced(assets, written):
    from soraplan.model.dit.codec import load_wfvae_codec
    from soraplan.model.dit.diffusion import DiffusionConfig, sample_latents
    from soraplan.model.dit.modeling_skiparse import SkiparseDiT
    from soraplan.model.dit.text import TextEncoder
    from soraplan.model.pipeline import SoraPlanPipeline

    main(["--checkpoint", str(assets / "run"), "--vae", str(assets / "vae"), "--text-encoder",
          str(assets / "t5"), "--out", "cli.mp4", *ARGS])
    text = TextEncoder(str(assets / "t5"), 512)
    model = SkiparseDiT.from_pretrained(resolve_pretrained(assets / "run"))
    codec = load_wfvae_codec(str(assets / "vae"), "vae")
    pipe = SoraPlanPipeline(text.tokenizer, text.model, model, codec.vae, DiffusionConfig().sample_scheduler())
    direct = pipe("a red kite", num_frames=5, height=32, width=48, num_inference_steps=2,
                  generator=torch.Generator().manual_seed(7)).frames[0]
    assert np.array_equal(written["cli.mp4"], np.clip((direct * 255).round(), 0, 255).astype(np.uint8))
    # soraplan-sample before the pipeline: prompt and empty prompt encoded together, then sampled.
    states, mask = text.encode(["a red kite", ""])
    latents = sample_latents(model, DiffusionConfig().sample_scheduler(), (4, 2, 4, 6), states[:1], mask[:1],
                             states[1:], mask[1:], 2, 7.5, 7)
    video = codec.decode(latents)[0].permute(1, 2, 3, 0).numpy()
    assert np.array_equal(written["cli.mp4"], np.clip(((video + 1) * 127.5).round(), 0, 255).astype(np.uint8))


def test_sample_saves_the_pipeline_and_samples_from_it(assets, tmp_path, written, capsys):
    saved = tmp_path / "pipeline"
    main(["--checkpoint", str(assets / "run"), "--vae", str(assets / "vae"), "--text-encoder",
          str(assets / "t5"), "--save-pipeline", str(saved), "--out", "assembled.mp4", *ARGS])
    assert (saved / "model_index.json").is_file() and (saved / "text_encoder").is_dir()
    main(["--pipeline", str(saved), "--out", "loaded.mp4", *ARGS])
    assert np.array_equal(written["assembled.mp4"], written["loaded.mp4"])
    capsys.readouterr()
    for argv, flag in ((["--pipeline", str(tmp_path / "nothing")], "--pipeline"),
                       (["--pipeline", str(saved), "--checkpoint", str(assets / "run")], "--pipeline")):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, *ARGS])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and flag in err and len(err.strip().splitlines()) == 1


def test_sampler_swaps_the_scheduler_keeping_its_config(assets, written, capsys):
    from diffusers import DDIMScheduler

    from soraplan.model.dit.codec import load_wfvae_codec
    from soraplan.model.dit.diffusion import DiffusionConfig, sample_latents, sampler_from_config
    from soraplan.model.dit.modeling_skiparse import SkiparseDiT
    from soraplan.model.dit.text import TextEncoder

    base = ["--checkpoint", str(assets / "run"), "--vae", str(assets / "vae"), "--text-encoder", str(assets / "t5")]
    main([*base, "--out", "ddim.mp4", "--sampler", "ddim", *ARGS])
    main([*base, "--out", "default.mp4", *ARGS])
    assert not np.array_equal(written["ddim.mp4"], written["default.mp4"])
    # The same as sampling by hand with DDIM built from the default scheduler's config.
    ddim = sampler_from_config("ddim", DiffusionConfig().sample_scheduler().config)
    assert isinstance(ddim, DDIMScheduler) and not ddim.config.clip_sample
    assert ddim.config.prediction_type == "v_prediction" and ddim.config.rescale_betas_zero_snr
    assert ddim.config.timestep_spacing == "trailing"
    text = TextEncoder(str(assets / "t5"), 512)
    states, mask = text.encode(["a red kite", ""])
    model = SkiparseDiT.from_pretrained(resolve_pretrained(assets / "run"))
    latents = sample_latents(model, ddim, (4, 2, 4, 6), states[:1], mask[:1], states[1:], mask[1:], 2, 7.5, 7)
    video = load_wfvae_codec(str(assets / "vae"), "vae").decode(latents)[0].permute(1, 2, 3, 0).numpy()
    assert np.array_equal(written["ddim.mp4"], np.clip(((video + 1) * 127.5).round(), 0, 255).astype(np.uint8))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--sampler", "heun", *ARGS])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "sampler" in err and len(err.strip().splitlines()) == 1


def test_a_learned_variance_dit_samples_only_with_ddpm():
    from types import SimpleNamespace

    from soraplan.core.config import ConfigError
    from soraplan.model.dit.diffusion import DiffusionConfig
    from soraplan.model.sample import use_sampler

    pipe = SimpleNamespace(scheduler=DiffusionConfig(kind="iddpm").sample_scheduler())
    with pytest.raises(ConfigError, match="only ddpm samples"):
        use_sampler(pipe, "ddim")
