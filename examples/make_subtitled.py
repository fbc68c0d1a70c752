"""Regenerate examples/subtitled.mp4: a synthetic two-shot clip with burned-in subtitles."""

from pathlib import Path

from soraplan.core.testing.media import make_video

if __name__ == "__main__":
    make_video(Path(__file__).with_name("subtitled.mp4"), shots=(3.0, 3.0), size=(640, 360), subtitles=True, seed=7)
