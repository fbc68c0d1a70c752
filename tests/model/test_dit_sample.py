import pytest
import torch
from soraplan.core.video import probe
from soraplan.core.train.checkpoint import atomic_write_text
from soraplan.model.dit.configs import DiTModelConfig
from soraplan.model.sample import main, resolve_model_dir
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


def test_resolve_model_dir_finds_latest_ema(assets):
    expected = assets / "run" / "checkpoints" / "step_00000010" / "ema"
    assert resolve_model_dir(assets / "run") == expected
    assert resolve_model_dir(expected) == expected
    with pytest.raises(FileNotFoundError, match="--checkpoint"):
        resolve_model_dir(assets / "nothing")


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
