"""The caption job on a folder of videos with paths that cannot be read: every path named like a
video is a row, the unreadable ones are error rows that say why, and rows out equal rows in."""

import os
import shutil
from pathlib import Path

import pytest

from soraplan.captioner.caption import run
from soraplan.captioner.shards import load_inputs
from soraplan.core.schema import read_clip_table

from .test_caption_job import job_config

# Name in the folder -> what its error row says.
UNREADABLE = {
    "pipe.mp4": "is a FIFO (named pipe), not a regular file",
    "folder.mp4": "is a directory, not a video file",
    "broken.mp4": "broken symlink",
    "outside.mp4": "resolves outside",
}


@pytest.fixture
def mixed_folder(clip_shards: Path, tmp_path: Path) -> Path:
    """One video, one file of random bytes named .mp4, the UNREADABLE paths, and a note."""
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(clip_shards / "videos" / "clip0.mp4", folder / "good.mp4")
    shutil.copy(clip_shards / "videos" / "corrupt.mp4", folder / "not_video.mp4")
    os.mkfifo(folder / "pipe.mp4")  # opening it would block until a writer comes
    (folder / "folder.mp4").mkdir()
    (folder / "broken.mp4").symlink_to(tmp_path / "gone.mp4")
    (folder / "outside.mp4").symlink_to(clip_shards / "videos" / "clip1.mp4")
    (folder / "notes.txt").write_text("not named like a video: not an input")
    return folder


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in rows}


def test_every_video_path_of_a_folder_is_a_row(mixed_folder):
    (table,) = load_inputs(mixed_folder).values()
    rows = by_name(table.to_pylist())
    assert sorted(rows) == sorted(["good.mp4", "not_video.mp4", *UNREADABLE])
    # Only opening a file tells a video from other bytes: the decode task does that.
    assert rows["good.mp4"]["status"] == rows["not_video.mp4"]["status"] == "kept"
    for name, why in UNREADABLE.items():
        row = rows[name]
        assert row["status"] == "error" and row["error_stage"] == "inputs", name
        assert row["error"].startswith(f"{mixed_folder / name}: ") and why in row["error"], row["error"]


def test_caption_job_on_a_folder_with_unreadable_paths(ray_session, tiny_llava_dir, mixed_folder,
                                                      tmp_path):
    out = tmp_path / "captioned"
    summary = run(job_config(tiny_llava_dir, mixed_folder, out))
    assert summary["rows_in"] == summary["rows_out"] == 6
    assert summary["kept"] == 2 and summary["input_errors"] == 4
    assert summary["captioned"] == 1 and summary["errors"] == 1 and summary["missing"] == 0
    rows = by_name(read_clip_table(out).to_pylist())
    assert rows["good.mp4"]["vlm_caption"] and rows["good.mp4"]["caption_error"] is None
    error = rows["not_video.mp4"]["caption_error"]
    assert error.startswith("decode failed: VideoDecodeError: not a readable media file"), error
    for name, why in UNREADABLE.items():  # passed through as they came in, never captioned
        assert why in rows[name]["error"] and rows[name]["vlm_caption"] is None
        assert rows[name]["caption_error"] is None
    # A rerun retries the caption error, never the inputs that cannot be read.
    again = run(job_config(tiny_llava_dir, mixed_folder, out))
    assert again["processed_this_run"] == 1 and again["rows_out"] == 6
