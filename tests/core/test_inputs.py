import csv as _csv
import os
from pathlib import Path

import pytest

from soraplan.core.config import ConfigError
from soraplan.core.inputs import (
    MAX_FIELD_CHARS,
    expand_inputs,
    find_media,
    parse_timestamp,
    read_inputs,
    read_panda70m_csv,
    read_video_dir,
    span_id,
)
from soraplan.core.video import VideoDecodeError, probe

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
    assert "column 'videoID' is empty" in clips[3].error and "ends before it starts" in clips[4].error


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


def _manifest(path, rows, bom=False):
    """Write a Panda-70M CSV with the csv module (it quotes the literals as Panda-70M's files do)."""
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as fh:
        writer = _csv.writer(fh)
        writer.writerow(["videoID", "url", "timestamp", "caption", "matching_score"])
        writer.writerows(rows)
    return path


SPAN = "[['0:00:01.000', '0:00:03.000']]"


@pytest.mark.parametrize("scores, message", [
    ("['abc']", "column 'matching_score' item 0 is not a number: 'abc'"),
    ("[None]", "column 'matching_score' item 0 is not a number: 'None'"),
    ("[[0.5]]", "column 'matching_score' item 0 is not a number: '[0.5]'"),
    ("[True]", "column 'matching_score' item 0 is not a number"),
])
def test_bad_scores_become_error_clips_naming_the_column(tmp_path, scores, message):
    (tmp_path / "v.mp4").write_bytes(b"x")
    clips = list(read_panda70m_csv(_manifest(tmp_path / "m.csv", [["v", "", SPAN, "['a']", scores]]), tmp_path))
    assert len(clips) == 1 and message in clips[0].error and "m.csv:2" in clips[0].error


def test_rows_that_used_to_vanish_or_abort_are_error_clips(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"x")
    deep = "[" * 100_000 + "]" * 100_000
    huge = "['" + "x" * (MAX_FIELD_CHARS + 10) + "']"
    rows = [
        ["v", "", "[]", "[]", "[]"],  # no spans at all
        ["v", "", deep, "['a']", "[0.1]"],  # a literal too deep for the parser
        ["v", "", SPAN, huge, "[0.1]"],  # a field over the size limit
        ["v", "", SPAN, "[print('hi')]", "[0.1]"],  # code, never run, never shown as an ast repr
        ["v", "", SPAN, "[\n'on two lines'\n]", "[0.5]"],  # a quoted field spanning three lines
        ["v", "", "[['0:00:04.000', '0:00:05.000']]", "[7]", "[0.5]"],
    ]
    clips = list(read_panda70m_csv(_manifest(tmp_path / "m.csv", rows), tmp_path))
    assert [bool(c.error) for c in clips] == [True, True, True, True, False, True]
    assert "m.csv:2: malformed row: column 'timestamp' is an empty list" in clips[0].error
    assert "m.csv:3" in clips[1].error and "nests 100000 levels deep" in clips[1].error
    assert "column 'caption' has" in clips[2].error and "over the limit" in clips[2].error
    assert "column 'caption' is not a Python list literal" in clips[3].error and "ast." not in clips[3].error
    assert clips[4].caption == "on two lines"
    assert "m.csv:9" in clips[5].error and "column 'caption' item 0 is not a string" in clips[5].error


def test_a_record_the_csv_module_cannot_read_is_an_error_and_reading_goes_on(tmp_path, monkeypatch):
    import soraplan.core.inputs as inputs

    monkeypatch.setattr(inputs, "_CSV_READ_LIMIT", 1000)
    (tmp_path / "v.mp4").write_bytes(b"x")
    rows = [["v", "", SPAN, "['" + "y" * 2000 + "']", "[0.1]"], ["v", "", SPAN.replace("1.000", "1.500"), "['b']", "[0.2]"]]
    clips = list(read_panda70m_csv(_manifest(tmp_path / "m.csv", rows), tmp_path))
    assert "unreadable CSV record" in clips[0].error and "m.csv:2" in clips[0].error
    assert clips[-1].error is None and clips[-1].caption == "b"


def test_byte_order_mark_and_missing_columns(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"x")
    clips = list(read_panda70m_csv(_manifest(tmp_path / "m.csv", [["v", "", SPAN, "['a']", "[0.1]"]], bom=True),
                                   tmp_path))
    assert clips[0].error is None and clips[0].caption == "a"
    (tmp_path / "bad.csv").write_text("id,time\nv,1\n")
    with pytest.raises(ConfigError, match="no column.*videoID"):
        list(read_panda70m_csv(tmp_path / "bad.csv", tmp_path))


def test_video_ids_are_looked_up_by_exact_name_never_globbed(tmp_path):
    (tmp_path / "w.mp4").write_bytes(b"x")
    (tmp_path / "shard").mkdir()
    (tmp_path / "shard" / "q[1].mkv").write_bytes(b"x")
    rows = [[vid, "", SPAN, "['a']", "[0.1]"] for vid in ("w*", "w?", "[w]", "q[1]", "w")]
    clips = list(read_panda70m_csv(_manifest(tmp_path / "m.csv", rows), tmp_path))
    assert [Path(c.path).name for c in clips] == ["w*.mp4", "w?.mp4", "[w].mp4", "q[1].mkv", "w.mp4"]
    assert not Path(clips[0].path).exists()  # missing: the decoder will say "file not found"


def test_sub_millisecond_spans_keep_distinct_ids():
    assert span_id("v", 1.0, 2.5) == "v:1.000-2.500"
    assert span_id("v", 1.0001, 2.0) != span_id("v", 1.0002, 2.0)


def test_directory_mode_applies_the_manifest_containment_rule(tmp_path):
    root, outside = tmp_path / "in", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.mp4").write_bytes(b"x")
    (root / "ok.mp4").write_bytes(b"x")
    (root / "link.mp4").symlink_to(outside / "secret.mp4")
    (root / "inner.mp4").symlink_to(root / "ok.mp4")
    by_name = {Path(c.path).name: c for c in read_video_dir(root)}
    assert by_name["ok.mp4"].error is None and by_name["inner.mp4"].error is None
    assert "resolves outside" in by_name["link.mp4"].error and "allow_outside_root" in by_name["link.mp4"].error
    assert {Path(c.path).name: c.error for c in read_video_dir(root, allow_outside_root=True)}["link.mp4"] is None
    # The manifest reader refuses the same link.
    clips = list(read_panda70m_csv(_manifest(tmp_path / "m.csv", [["link", "", SPAN, "['a']", "[0.1]"]]), root))
    assert "resolves outside the video root" in clips[0].error


def test_every_path_that_looks_like_a_video_is_a_row_and_nothing_blocks(tmp_path):
    os.mkfifo(tmp_path / "pipe.mp4")
    (tmp_path / "folder.mp4").mkdir()
    (tmp_path / "device.mp4").symlink_to("/dev/zero")
    (tmp_path / "broken.mp4").symlink_to(tmp_path / "gone.mp4")
    (tmp_path / "good.mp4").write_bytes(b"x")
    errors = {Path(c.path).name: c.error for c in read_video_dir(tmp_path)}
    assert errors["good.mp4"] is None
    assert "FIFO" in errors["pipe.mp4"] and "is a directory" in errors["folder.mp4"]
    assert "resolves outside" in errors["device.mp4"] and "broken symlink" in errors["broken.mp4"]
    assert "device" in {Path(c.path).name: c.error for c in read_video_dir(tmp_path, True)}["device.mp4"]
    assert [p.name for p in find_media(tmp_path)] == ["good.mp4"]
    with pytest.raises(VideoDecodeError, match="not a regular file"):
        probe(tmp_path / "pipe.mp4")  # returns at once: the FIFO is never opened


def test_inputs_from_a_glob_or_a_list_of_manifests(tmp_path):
    for name in ("b.csv", "a.csv", "sub/c.csv"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        _manifest(tmp_path / name, [["v", "", SPAN, "['x']", "[0.1]"], ["", "", SPAN, "['x']", "[0.1]"]])
    assert [s.name for s in expand_inputs(str(tmp_path / "*.csv"))] == ["a.csv", "b.csv"]  # matches sorted
    listed = expand_inputs([tmp_path / "sub/c.csv", str(tmp_path / "*.csv"), tmp_path / "a.csv"])
    assert [s.name for s in listed] == ["sub/c.csv", "a.csv", "b.csv"]  # each file once, named from the common folder
    assert [s.name for s in expand_inputs(str(tmp_path / "**/*.csv"))] == ["a.csv", "b.csv", "sub/c.csv"]
    clips = read_inputs([tmp_path / "a.csv", tmp_path / "sub/c.csv"], tmp_path)
    # Error clips name their manifest, so equal line numbers in two files stay distinct inputs.
    assert [c.source_id for c in clips if c.error] == ["a.csv:line3", "sub/c.csv:line3"]
    assert {c.error_kind for c in clips if c.error} == {"bad_video_id"}


@pytest.mark.parametrize("entries, message", [
    ([], "list of manifests is empty"),
    (["nothing*.csv"], "matches no file"),
    (["gone.csv"], "does not exist"),
    (["notes.txt"], "neither a directory of videos nor a .csv manifest"),
    (["videos", "a.csv"], "is an input on its own"),
])
def test_bad_inputs_are_config_errors(tmp_path, entries, message):
    (tmp_path / "videos").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    _manifest(tmp_path / "a.csv", [])
    with pytest.raises(ConfigError, match=message):
        expand_inputs([str(tmp_path / e) for e in entries])
