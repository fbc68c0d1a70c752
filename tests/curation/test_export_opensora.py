"""Open-Sora exports, read back by a harness that replays hpcaitech/Open-Sora v1.3's own rules
(tag v1.3, b096aa3): opensora/datasets/{utils,read_video,bucket,datasets}.py read the CSV with
pandas and every frame of `path` (up to the header's frame count), give a clip the largest bucket
length T with num_frames > T * frame_interval, and sample T frames from a random window of
T * frame_interval anywhere in the file; tools/scene_cut/cut.py reads `timestamp` as a list of
('HH:MM:SS.mmm', ...) pairs (FrameTimecode at 1000 fps) and has ffmpeg keep the frames from start
for end - start seconds."""

import ast
import csv
import json

import av
import numpy as np
import pandas as pd
import pytest

from soraplan.core.schema import empty_clip_row, rows_to_table, write_table_atomic
from soraplan.curation.cutting import frame_times
from soraplan.curation.export import export_kept

FPS = 24
# (source, first frame, end frame, status, crop): keyframes every 12 frames, so 0 and 24 start on one.
SPANS = [("a", 0, 30, "kept", None), ("a", 30, 50, "rejected", None), ("a", 50, 96, "kept", None),
         ("b", 24, 72, "kept", None), ("b", 72, 110, "kept", [0, 128, 0, 48])]
BUCKET_LENGTHS = (8, 16, 24)  # a bucket config's T keys (1 = images, left out)


@pytest.fixture()
def curated(tmp_path, indexed_videos):
    sources = {name: indexed_videos.write(tmp_path / f"{name}.mp4", 120) for name in "ab"}
    rows = []
    for i, (name, a, b, status, crop) in enumerate(SPANS):
        rows.append(empty_clip_row(
            clip_id=f"{name}:0-5/{a / FPS:.3f}-{b / FPS:.3f}", source_id=f"{name}:0-5", segment_index=i,
            path=str(sources[name]), start_s=a / FPS, end_s=b / FPS, num_frames=b - a, fps=float(FPS),
            width=128, height=64, codec="h264", caption=f"clip {i}", motion_score=0.01, motion_backend="flow",
            crop=crop, status=status, reject_reasons=[] if status == "kept" else ["static"]))
    write_table_atomic(rows_to_table(rows), tmp_path / "out" / "clips" / "a.parquet")
    return tmp_path / "out", {r["clip_id"]: (r["path"], round(r["start_s"] * FPS), round(r["end_s"] * FPS))
                              for r in rows if r["status"] == "kept"}


def read_like_opensora(path):
    """read_video_av: frames from the start, at most the stream header's count."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        total, frames = stream.frames or 2500, []
        for frame in container.decode(stream):
            frames.append(frame.to_rgb().to_ndarray())
            if len(frames) >= total:
                break
    return frames


def bucket_length(num_frames, frame_interval):
    return next((t for t in sorted(BUCKET_LENGTHS, reverse=True) if num_frames > t * frame_interval), None)


def windows(total, t, frame_interval):
    """Every window temporal_random_crop can pick: begin in [0, max(0, total - size - 1)]."""
    size = t * frame_interval
    for begin in range(max(0, total - size - 1) + 1):
        end = min(begin + size, total)
        assert end - begin >= t, "their assertion: not enough frames to sample"
        yield np.linspace(begin, end - 1, t, dtype=int)


def test_every_window_open_sora_samples_lies_in_its_kept_span(curated, tmp_path, indexed_videos):
    out, kept = curated
    result = export_kept(out, "opensora", tmp_path / "clips.csv", tmp_path / "cut")
    assert result["exported"] == len(kept) and result["skipped"] == 0
    assert result["cut"].get("copy", 0) >= 1 and result["cut"].get("encode", 0) >= 1  # both paths taken
    data = pd.read_csv(tmp_path / "clips.csv")
    assert "aes" not in data.columns  # aesthetics were off: no column rather than NaN
    data["id"] = np.arange(len(data))
    sampled = 0
    for _, row in data.iterrows():
        source, first, end = kept[row["clip_id"]]
        frames = read_like_opensora(row["path"])
        assert len(frames) == row["num_frames"] == end - first
        assert frames[0].shape[:2] == (row["height"], row["width"])
        assert row["aspect_ratio"] == row["height"] / row["width"]
        shown = [indexed_videos.index(f) for f in frames]
        assert shown == list(range(first, end))  # the file is exactly the span, in order
        for frame_interval in (1, 2):
            t = bucket_length(row["num_frames"], frame_interval)
            if t is None:
                continue
            for window in windows(len(frames), t, frame_interval):
                assert all(first <= shown[i] < end for i in window)
                sampled += 1
    assert sampled > 100
    cropped = data[data["clip_id"].str.startswith("b:0-5/3.000")].iloc[0]
    assert (cropped["width"], cropped["height"]) == (128, 48)  # the crop box is applied


def test_opensora_export_needs_a_cut_folder(curated, tmp_path, curate, capsys):
    out, _ = curated
    assert curate("export", out, "--format", "opensora", "--to", tmp_path / "clips.csv") == 2
    err = capsys.readouterr().err.strip()
    assert "--cut-to" in err and len(err.splitlines()) == 1
    assert curate("export", out, "--format", "opensora", "--to", tmp_path / "clips.txt", "--cut-to", tmp_path) == 2


def test_cut_export_reruns_keep_the_files_and_report_missing_sources(curated, tmp_path):
    out, kept = curated
    export_kept(out, "opensora", tmp_path / "clips.csv", tmp_path / "cut")
    again = export_kept(out, "opensora", tmp_path / "clips.csv", tmp_path / "cut")
    assert again["cut"] == {"existing": len(kept)}
    (tmp_path / "b.mp4").unlink()
    (tmp_path / "cut").rename(tmp_path / "old")
    partial = export_kept(out, "opensora", tmp_path / "clips.csv", tmp_path / "cut")
    assert partial["exported"] == 2 and partial["skipped_by_reason"] == {"cut_failed": 2}
    assert "file not found" in partial["skipped_clips"][0]["detail"]


def ms(timecode):
    """FrameTimecode(timecode, fps=1000) as integer milliseconds."""
    h, m, s = timecode.split(":")
    return round((int(h) * 3600 + int(m) * 60 + float(s)) * 1000)


def test_scene_timestamps_make_their_cutter_keep_exactly_the_kept_frames(curated, tmp_path):
    out, kept = curated
    result = export_kept(out, "opensora-scenes", tmp_path / "scenes.csv")
    assert result["exported"] == len(kept) and result["sources"] == 2
    with open(tmp_path / "scenes.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        assert row["timestamp"].startswith("[") and row["timestamp"].endswith("]")
        scenes = ast.literal_eval(row["timestamp"])
        times_ms = [t * 1000 for t in frame_times(row["path"])]
        clip_ids = json.loads(row["clip_ids"])
        assert len(scenes) == len(clip_ids)
        for (start, end), clip_id in zip(scenes, clip_ids):  # clip i of the row -> <stem>_scene-<i>.mp4
            source, first, last = kept[clip_id]
            assert source == row["path"]
            taken = [i for i, t in enumerate(times_ms) if ms(start) <= t < ms(start) + (ms(end) - ms(start))]
            assert taken == list(range(first, last))
