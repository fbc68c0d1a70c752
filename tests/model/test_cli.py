"""Bad invocations of soraplan-vae, soraplan-dit and soraplan-sample: one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from soraplan.model.dit.cli import main as dit_main
from soraplan.model.sample import main as sample_main
from soraplan.model.vae.cli import main as vae_main

pytestmark = pytest.mark.usefixtures("torch_one_thread")

REPO = Path(__file__).resolve().parents[2]


def fails(main, argv: list[str], prefix: str, capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line the command printed (after exiting 2)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = [line for line in err.splitlines() if line.startswith(prefix)]
    return line


def test_reconstruct_bad_inputs(tmp_path: Path, bad_media: dict[str, Path], capsys) -> None:
    prefix = "soraplan-vae reconstruct:"
    out = str(tmp_path / "out.mp4")
    random = ["--model.name", "wfvae-test"]
    assert "IN OUT" in fails(vae_main, ["reconstruct", *random], prefix, capsys)
    line = fails(vae_main, ["reconstruct", str(tmp_path / "absent.mp4"), out, *random], prefix,
                 capsys)
    assert "input video not found" in line and "absent.mp4" in line
    line = fails(vae_main, ["reconstruct", str(bad_media["text"]), out, *random], prefix, capsys)
    assert "not a readable media file" in line
    (tmp_path / "notes.txt").write_text("not a video\n" * 500)  # FFmpeg's tty demuxer takes it
    line = fails(vae_main, ["reconstruct", str(tmp_path / "notes.txt"), out, *random], prefix,
                 capsys)
    assert "a text file, not a video" in line
    line = fails(vae_main, ["reconstruct", str(bad_media["audio_only"]), out, *random], prefix,
                 capsys)
    assert "no video stream" in line
    line = fails(vae_main, ["reconstruct", str(bad_media["text"]), out, "--model.pretrained",
                            str(tmp_path / "no-weights")], prefix, capsys)
    assert "model.pretrained" in line
    line = fails(vae_main, ["reconstruct", str(bad_media["text"]), out, "--model.name", "nope"],
                 prefix, capsys)
    assert "unknown WF-VAE config 'nope'" in line
    line = fails(vae_main, ["reconstruct", str(bad_media["text"]), out, "chunk_frame=4"], prefix,
                 capsys)
    assert "unknown config key(s) ['chunk_frame']" in line
    assert not Path(out).exists()


@pytest.mark.parametrize("main, argv, prefix, message", [
    (vae_main, ["train", "colour=red"], "soraplan-vae train:", "unknown config key(s) ['colour']"),
    (vae_main, ["train", "data.num_frames=8"], "soraplan-vae train:", "1 + 4n"),
    (dit_main, ["train", "optimizer.lr=0"], "soraplan-dit train:",
     "optimizer.lr: 0.0 is out of range"),
    (dit_main, ["train", "model.name=huge"], "soraplan-dit train:", "unknown DiT config 'huge'"),
    (dit_main, ["encode"], "soraplan-dit encode:", "set shards and vae"),
    (dit_main, ["encode", "ray.concurrency=0"], "soraplan-dit encode:", "ray.concurrency"),
    (sample_main, ["--prompt", "a kite"], "soraplan-sample:", "set --checkpoint, --vae"),
    (sample_main, ["--checkpoint", "nowhere", "--prompt", "a kite", "--vae", "v"],
     "soraplan-sample:", "no DiT weights under 'nowhere'"),
    (sample_main, ["--checkpoint", "c", "colour=red"], "soraplan-sample:", "unknown config key"),
    (sample_main, ["--checkpoint", "c", "--frames", "0"], "soraplan-sample:", "frames: 0 is out"),
])
def test_bad_settings_print_one_line_and_exit_2(main, argv, prefix, message, capsys) -> None:
    assert message in fails(main, argv, prefix, capsys)
