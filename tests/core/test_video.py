import numpy as np
import pytest

from soraplan.core.video import VideoDecodeError, iter_frames, probe, sample_frames, write_video


def test_probe_reports_size_fps_and_frames(media):
    info = probe(media["three_shots"])
    assert (info.width, info.height) == (320, 180)
    assert info.fps == pytest.approx(24.0, rel=1e-3)
    assert info.num_frames == 192
    assert info.duration_s == pytest.approx(8.0, abs=0.05)
    assert info.codec == "h264"


def test_rotation_is_applied(media):
    info = probe(media["rotated"])
    assert (info.width, info.height, info.rotation) == (96, 160, 90)
    frame = next(iter_frames(media["rotated"])).image
    assert frame.shape == (160, 96, 3)
    # The stored left edge (white bar) ends up at the bottom after a 90 degree CCW turn.
    assert frame[-8:].mean() > 200 and frame[:8].mean() < 200


def test_variable_frame_rate_uses_timestamps(media):
    times = [f.time_s for f in iter_frames(media["vfr"])]
    gaps = np.diff(times)
    assert len(times) == 86
    assert np.allclose(gaps[:60], 0.02, atol=1e-3) and np.allclose(gaps[60:], 0.1, atol=1e-3)
    info = probe(media["vfr"])
    assert info.num_frames == 86
    # A span is cut by time, not by frame count at an assumed rate.
    span = list(iter_frames(media["vfr"], start_s=1.5, end_s=2.0))
    assert [round(f.time_s, 2) for f in span] == [1.5, 1.6, 1.7, 1.8, 1.9]


def test_seek_and_sample(media):
    frames = list(iter_frames(media["moving"], start_s=1.0, end_s=2.0, size=(160, 90)))
    assert len(frames) == 24 and frames[0].index == 24
    assert frames[0].image.shape == (90, 160, 3)
    images, times = sample_frames(media["moving"], [3.0, 0.5, 1.0])
    assert images.shape == (3, 180, 320, 3)
    assert times == pytest.approx([3.0, 0.5, 1.0], abs=1 / 24 + 1e-6)
    # Same times give the same pixels whether sampled or iterated.
    direct = [f.image for f in iter_frames(media["moving"]) if abs(f.time_s - times[1]) < 1e-6]
    assert np.array_equal(direct[0], images[1])


@pytest.mark.parametrize("name, message", [
    ("zero", "empty"), ("text", "not a readable media file"), ("truncated", "not a readable media file"),
    ("audio_only", "no video stream"),
])
def test_bad_files_raise_clear_errors(bad_media, name, message):
    with pytest.raises(VideoDecodeError, match=message):
        probe(bad_media[name])


def test_missing_file(tmp_path):
    with pytest.raises(VideoDecodeError, match="file not found"):
        probe(tmp_path / "nope.mp4")


def test_write_video_round_trip(tmp_path):
    frames = np.zeros((5, 32, 48, 3), np.uint8)
    frames[:, :, :24] = 200
    write_video(tmp_path / "x.mp4", frames, fps=10)
    back = np.stack([f.image for f in iter_frames(tmp_path / "x.mp4")])
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 4


def test_gif_bytes_is_an_animated_gif():
    import io

    from PIL import Image

    from soraplan.core.video import gif_bytes

    frames = np.zeros((5, 16, 24, 3), np.uint8)
    for i in range(5):
        frames[i, :, i * 4 : i * 4 + 4] = (255, 0, 0)
    image = Image.open(io.BytesIO(gif_bytes(frames, 8.0)))
    assert image.format == "GIF" and image.size == (24, 16) and image.n_frames == 5


def test_text_files_are_not_video(tmp_path):
    # FFmpeg's tty demuxer would decode a .txt file as ANSI-art video frames.
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video\n" * 500)
    with pytest.raises(VideoDecodeError, match="a text file, not a video"):
        probe(notes)
