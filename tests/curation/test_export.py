"""Trainer exports: the files parse back to the same kept clips; the CLI subcommand writes them."""

import csv
import json

import pytest

from soraplan.curation.export import OPENSORA_COLUMNS
from soraplan.core.schema import empty_clip_row, rows_to_table, write_table_atomic


def clip_row(i: int, status: str = "kept", **values) -> dict:
    row = empty_clip_row(
        clip_id=f"v{i}:0-10/{i}.000-{i + 3}.500", source_id=f"v{i}:0-10", segment_index=i, path=f"videos/v{i}.mp4",
        start_s=float(i), end_s=i + 3.5, num_frames=84, fps=24.0, width=640 + i, height=360, codec="h264",
        caption=f'caption {i}, with "quotes" and a comma', motion_score=0.01 * (i + 1), motion_backend="lpips",
        crop=[0, 640 + i, 10, 350], aesthetic_score=4.8 + i / 10, status=status,
        reject_reasons=[] if status == "kept" else ["static"],
    )
    row.update(values)
    return row


@pytest.fixture()
def out(tmp_path):
    rows = [clip_row(i) for i in range(4)] + [clip_row(9, status="rejected")]
    rows[3]["aesthetic_score"] = None  # unscored (stage disabled) must survive the round trip
    write_table_atomic(rows_to_table(rows[:2]), tmp_path / "out" / "clips" / "a.parquet")
    write_table_atomic(rows_to_table(rows[2:]), tmp_path / "out" / "clips" / "b.parquet")
    return tmp_path / "out", rows[:4]


def test_osp_json_round_trip(out, tmp_path, curate):
    out_dir, kept = out
    assert curate("export", out_dir, "--format", "osp", "--to", tmp_path / "anno.json") == 0
    records = json.loads((tmp_path / "anno.json").read_text())
    assert len(records) == len(kept)
    for record, row in zip(records, kept):
        assert record["path"] == row["path"] and record["cap"] == row["caption"]
        assert record["resolution"] == {"height": row["height"], "width": row["width"]}
        assert record["num_frames"] == row["num_frames"] and record["fps"] == row["fps"]
        start, end = record["cut"]
        assert (start / record["fps"], end - start) == (row["start_s"], row["num_frames"])
        assert record["crop"] == row["crop"] and record["motion"] == row["motion_score"]
        assert record["aesthetic"] == row["aesthetic_score"]


def test_opensora_csv_round_trip(out, tmp_path, curate):
    out_dir, kept = out
    assert curate("export", out_dir, "--format", "opensora", "--to", tmp_path / "clips.csv") == 0
    with open(tmp_path / "clips.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == OPENSORA_COLUMNS
        records = list(reader)
    assert [r["clip_id"] for r in records] == [r["clip_id"] for r in kept]
    for record, row in zip(records, kept):
        assert record["path"] == row["path"] and record["text"] == row["caption"]
        assert (int(record["num_frames"]), int(record["width"]), int(record["height"])) == (
            row["num_frames"], row["width"], row["height"])
        assert float(record["aspect_ratio"]) == row["height"] / row["width"]
        assert float(record["fps"]) == row["fps"] and float(record["flow"]) == row["motion_score"]
        assert (float(record["start_s"]), float(record["end_s"])) == (row["start_s"], row["end_s"])
        assert (float(record["aes"]) if record["aes"] else None) == row["aesthetic_score"]


def test_captioner_columns_win_over_the_manifest_caption(tmp_path, curate):
    from soraplan.core.schema import CAPTION_FIELDS, REFINED_CAPTION_FIELDS, schema_with

    row = clip_row(0, vlm_caption="vlm", refined_caption="refined")
    table = rows_to_table([row], schema_with(CAPTION_FIELDS, REFINED_CAPTION_FIELDS))
    write_table_atomic(table, tmp_path / "out" / "clips" / "a.parquet")
    assert curate("export", tmp_path / "out", "--format", "osp", "--to", tmp_path / "a.json") == 0
    assert json.loads((tmp_path / "a.json").read_text())[0]["cap"] == "refined"
