import csv as _csv

import pytest

from soraplan.core.inputs import parse_timestamp, read_inputs, read_panda70m_csv, read_video_dir, span_id

HEADER = "videoID,url,timestamp,caption,matching_score,desirable_filtering,shot_boundary_detection\n"


def test_panda70m_rows_become_one_clip_per_span(tmp_path):
    (tmp_path / "abc.mp4").write_bytes(b"x")
    (tmp_path / "shard0").mkdir()
    (tmp_path / "shard0" / "def.mp4").write_bytes(b"x")
    csv = tmp_path / "meta.csv"
    with open(csv, "w", newline="") as fh:  # the csv module quotes the literals as Panda-70M's files do
        writer = _csv.writer(fh)
        writer.writerow(HEADER.strip().split(","))
        writer.writerow(["abc", "u", "[['0:00:01.000', '0:00:03.500'], ['0:00:04.000', '0:00:09.000']]",
                         "['a cat', \"a dog's toy\"]", "[0.5, 0.25]", "['desirable', 'desirable']", "[[], []]"])
        writer.writerow(["def", "u", "[['0:01:00.000', '0:01:02.500']]", "['x']", "[0.1]", "['desirable']", "[[]]"])
    clips = list(read_panda70m_csv(csv, tmp_path))
    assert [c.source_id for c in clips] == ["abc:1.000-3.500", "abc:4.000-9.000", "def:60.000-62.500"]
    assert clips[1].caption == "a dog's toy" and clips[1].matching_score == 0.25
    assert clips[0].path == str((tmp_path / "abc.mp4").resolve())
    assert clips[2].path == str((tmp_path / "shard0" / "def.mp4").resolve())  # video2dataset layout
    assert all(c.error is None for c in clips)


def test_malformed_rows_become_error_clips(tmp_path):
    csv = tmp_path / "meta.csv"
    csv.write_text(
        HEADER
        + "bad1,u,not a list,\"['a']\",[0.1],,\n"
        + "bad2,u,\"[['0:00:01', '0:00:02']]\",\"['a', 'b']\",[0.1],,\n"
        + "bad3,u,\"__import__('os').system('echo pwned')\",\"['a']\",[0.1],,\n"
        + ",u,\"[['0:00:01', '0:00:02']]\",\"['a']\",[0.1],,\n"
        + "bad4,u,\"[['0:00:05.000', '0:00:02.000']]\",\"['a']\",[0.1],,\n"
    )
    clips = list(read_panda70m_csv(csv, tmp_path))
    assert len(clips) == 5 and all(c.error for c in clips)
    assert "malformed row" in clips[0].error and "1/2/1 items" in clips[1].error
    assert "malformed row" in clips[2].error  # literal_eval refuses code
    assert "empty videoID" in clips[3].error and "ends before it starts" in clips[4].error


def test_paths_escaping_the_video_root_are_refused(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    (tmp_path / "secret.mp4").write_bytes(b"x")
    csv = tmp_path / "meta.csv"
    csv.write_text(HEADER + "../secret,u,\"[['0:00:01', '0:00:02']]\",\"['a']\",[0.1],,\n"
                   + "/etc/passwd,u,\"[['0:00:01', '0:00:02']]\",\"['a']\",[0.1],,\n")
    clips = list(read_panda70m_csv(csv, root))
    assert len(clips) == 2
    assert all("escapes the video root" in c.error for c in clips)


def test_video_dir_ids_are_stable_and_unique(tmp_path):
    for rel in ["a/clip.mp4", "b/clip.mp4", "c.MKV", "notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    first = [c.source_id for c in read_video_dir(tmp_path)]
    assert len(first) == 3 and len(set(first)) == 3
    assert first == [c.source_id for c in read_inputs(tmp_path)]


def test_timestamps_and_ids():
    assert parse_timestamp("0:01:02.500") == 62.5
    assert span_id("v", 1, None) == "v:1.000-end"
    with pytest.raises(ValueError):
        parse_timestamp("62.5")
