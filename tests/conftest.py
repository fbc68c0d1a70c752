"""Settings every test run shares, and synthetic media (good videos and every kind of bad input)."""

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from soraplan.core.testing.media import make_video

# Ray stays on loopback, without token auth, and its workers use this venv as it is
# (Ray's `uv run` hook would otherwise build a fresh venv for every job).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def write_vfr_video(path: Path, frame_gaps_ms: list[int], size: int = 96) -> Path:
    """A video whose frames are spaced by the given gaps (variable frame rate)."""
    texture = np.random.default_rng(0).integers(0, 255, (size, size * 3, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for i, gap in enumerate([0, *frame_gaps_ms]):
            pts += gap
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[:, i * 2 : i * 2 + size]), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_rotated_video(path: Path, degrees: int, seconds: float = 2.5) -> Path:
    """A 160x96 stored video with a display rotation; a white bar marks the stored left edge."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height = 160, 96
        stream.pix_fmt = "yuv420p"
        stream.set_display_rotation(degrees)
        rng = np.random.default_rng(1)
        texture = rng.integers(0, 255, (96, 400, 3), dtype=np.uint8)
        for i in range(round(seconds * 24)):
            image = np.ascontiguousarray(texture[:, i * 2 : i * 2 + 160])
            image[:, :10] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = (np.sin(np.arange(16000) / 10) * 0.3).astype(np.float32)[None]
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, samples.shape[1] - frame_size, frame_size):
            frame = av.AudioFrame.from_ndarray(samples[:, start : start + frame_size], format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Named synthetic videos, written once per test session."""
    root = tmp_path_factory.mktemp("media")
    videos = {
        "three_shots": make_video(root / "three_shots.mp4", shots=(2.5, 3.0, 2.5), seed=1),
        "moving": make_video(root / "moving.mp4", shots=(4.0,), seed=2),
        "static": make_video(root / "static.mp4", shots=(3.0,), speed=0.0, seed=3),
        "subtitled": make_video(root / "subtitled.mp4", shots=(4.0,), size=(640, 360), subtitles=True, seed=4),
        "short_shot": make_video(root / "short_shot.mp4", shots=(3.0, 1.0, 3.0), seed=5),
    }
    one = make_video(root / "one_frame.mp4", shots=(1 / 24,), seed=6)
    videos["one_frame"] = one
    videos["vfr"] = write_vfr_video(root / "vfr.mp4", [20] * 60 + [100] * 25)
    videos["rotated"] = write_rotated_video(root / "rotated.mp4", 90)
    return videos


@pytest.fixture(scope="session")
def bad_media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    (root / "zero.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n" * 20)
    good = make_video(root / "good_for_truncation.mp4", shots=(2.5,), seed=8).read_bytes()
    (root / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (root / "good_for_truncation.mp4").unlink()
    return {
        "zero": root / "zero.mp4",
        "text": root / "text.mp4",
        "truncated": root / "truncated.mp4",
        "audio_only": write_audio_only(root / "audio_only.mp4"),
    }




@pytest.fixture
def output_held_elsewhere():
    """`hold(out)`: another process that holds `out`'s job lock (as a running job does) until
    the test ends; returns the process."""
    holders: list[subprocess.Popen] = []

    def hold(out: Path) -> subprocess.Popen:
        code = ("import time\nfrom soraplan.core.outputs import exclusive_output\n"
                f"with exclusive_output({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(300)\n")
        holders.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True))
        assert holders[-1].stdout.readline().strip() == "held"
        return holders[-1]

    yield hold
    for holder in holders:
        holder.kill()
        holder.wait()
