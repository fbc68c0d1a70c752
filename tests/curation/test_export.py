"""Open-Sora-Plan export, read back by a harness that replays the rules of Open-Sora-Plan v1.3's
loader (tag v1.3.1, c41050a; opensora/dataset/t2v_datasets.py and transform.py): the `--data`
file's `sub_root,anno.json` lines, the path ending (.mp4 video, .jpg image, anything else raises),
`cap`, `resolution` -> sample size (maxhwresize to max_hxw, then a crop to multiples of hw_stride,
min_hxw and aspect filters), `fps` -> frame interval, `cut[0]` + `num_frames` -> frame indices,
TemporalRandomCrop and the 1 + 4n length, then frames read by index (decord), sliced by `crop`,
resized and stride-cropped, and the size assertion against the sample size. Left out: the
filter that drops shapes with fewer than 4 x total batch clips (a matter of dataset size).
Also: the relative-path refusal of cluster jobs."""

import json
import os

import av
import numpy as np
import pytest

from soraplan.core.schema import CAPTION_FIELDS, REFINED_CAPTION_FIELDS, empty_clip_row, rows_to_table, schema_with, \
    write_table_atomic
from soraplan.curation.export import export_kept

FPS = 24
MAX_HXW, MIN_HXW, HW_STRIDE, NUM_FRAMES, TRAIN_FPS = 64 * 64, 32 * 32, 16, 29, 24
# (source file, first frame, end frame, crop); sources are 128x96, 96 frames.
CLIPS = [("plain.mp4", 12, 60, None), ("subtitled.mp4", 0, 40, [0, 128, 16, 96]),
         ("other.mkv", 24, 70, None), ("turned.mp4", 0, 36, None)]


def clip_row(i, path, first, end, crop, **values):
    return empty_clip_row(**{
        "clip_id": f"v{i}:0-4/{first / FPS:.3f}-{end / FPS:.3f}", "source_id": f"v{i}:0-4", "segment_index": 0,
        "path": str(path), "start_s": first / FPS, "end_s": end / FPS, "num_frames": end - first, "fps": float(FPS),
        "width": 128, "height": 96, "codec": "h264", "caption": f"clip {i}", "motion_score": 0.01 * (i + 1),
        "motion_backend": "flow", "crop": crop, "status": "kept", "reject_reasons": [], **values})


@pytest.fixture()
def curated(tmp_path, indexed_videos):
    rows = []
    (tmp_path / "videos").mkdir()
    for i, (name, first, end, crop) in enumerate(CLIPS):
        rotation = 90 if name == "turned.mp4" else 0
        path = indexed_videos.write(tmp_path / "videos" / name, 96, size=(128, 96), rotation=rotation)
        rows.append(clip_row(i, path, first, end, crop, aesthetic_score=5.0 if i == 0 else None))
    rows.append(clip_row(9, rows[0]["path"], 60, 96, None, status="rejected", reject_reasons=["static"]))
    write_table_atomic(rows_to_table(rows), tmp_path / "out" / "clips" / "a.parquet")
    return tmp_path / "out", rows[:4]


def maxhwresize(h, w, max_hxw):
    if h * w > max_hxw:
        scale = np.sqrt(max_hxw / (h * w))
        return int(h * scale), int(w * scale)
    return h, w


def stride_size(h, w, stride):
    return h // stride * stride, w // stride * stride


def closest_1_plus_4n(n):
    return next((y for y in range(n, 28, -1) if (y - 1) % 4 == 0), -1) if n >= 29 else -1


def define_frame_index(data_file):
    """Their dataset construction: the records it keeps, each with its sample size."""
    kept = []
    with open(data_file) as fh:
        lines = [line.strip().split(",") for line in fh if line.strip()]
    for sub_root, anno in lines:  # exactly two fields per line
        assert anno.endswith(".json")
        with open(anno) as fh:
            records = json.load(fh)
        for record in records:
            path = os.path.join(sub_root, record["path"])
            if not path.endswith((".mp4", ".jpg")):
                raise NameError(f"Unknown file extention {path.split('.')[-1]}")
            if record.get("cap") is None or record.get("resolution") is None:
                continue
            height, width = record["resolution"]["height"], record["resolution"]["width"]
            sample_h, sample_w = stride_size(*maxhwresize(height, width, MAX_HXW), HW_STRIDE)
            if sample_h <= 0 or sample_w <= 0 or sample_h * sample_w < MIN_HXW or not 0.5 <= sample_h / sample_w <= 2:
                continue
            fps = record.get("fps", 24)
            interval = 1.0 if abs(fps - TRAIN_FPS) < 0.1 else fps / TRAIN_FPS
            start = record.get("cut", [0])[0]
            indices = np.arange(start, start + record["num_frames"], interval).astype(int)
            indices = indices[indices < start + record["num_frames"]]
            if len(indices) < NUM_FRAMES:  # drop_short_ratio 1.0, their default
                continue
            kept.append({**record, "path": path, "start_frame_idx": start, "indices": indices,
                         "sample": (sample_h, sample_w)})
    return kept


def read_windows(record):
    """Every window get_video can read (each begin TemporalRandomCrop may draw): the frames by
    index, sliced by `crop` as their loader does, then resized and stride-cropped."""
    with av.open(record["path"]) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]  # decord: all frames by index
    indices = record["indices"]
    for begin in range(max(0, len(indices) - NUM_FRAMES - 1) + 1):
        window = indices[begin : begin + NUM_FRAMES]
        window = window[: closest_1_plus_4n(len(window))]
        assert max(window) < len(frames), "index past the end of the file"
        video = np.stack([frames[i] for i in window])
        if "crop" in record:
            x0, x1, y0, y1 = record["crop"]
            video = video[:, y0:y1, x0:x1]
        size = stride_size(*maxhwresize(*video.shape[1:3], MAX_HXW), HW_STRIDE)
        assert size == record["sample"], f"their size assertion: sample {record['sample']}, video {size}"
        yield video


def test_open_sora_plan_reads_every_kept_clip_in_its_span(curated, tmp_path, indexed_videos):
    out, rows = curated
    result = export_kept(out, "osp", tmp_path / "anno.json", tmp_path / "converted")
    assert result["exported"] == 4 and result["skipped"] == 0 and sum(result["cut"].values()) == 2
    assert result["data"] == str(tmp_path / "anno.txt")
    records = {r["cap"]: r for r in define_frame_index(tmp_path / "anno.txt")}
    assert sorted(records) == sorted(r["caption"] for r in rows)  # none filtered, none raised
    for row in rows:
        record = records[row["caption"]]
        first, end = round(row["start_s"] * FPS), round(row["end_s"] * FPS)
        assert record["num_frames"] == end - first
        for video in read_windows(record):
            if not row["path"].endswith("turned.mp4"):  # bands of the turned video run the other way
                assert all(first <= indexed_videos.index(f) < end for f in video)
    assert records["clip 1"]["resolution"] == {"height": 80, "width": 128}  # the crop's size
    assert records["clip 2"]["path"].endswith(".mp4") and records["clip 2"]["cut"] == [0, 46]
    assert records["clip 3"]["resolution"] == {"height": 128, "width": 96}  # converted upright
    assert "crop" not in records["clip 0"] and records["clip 0"]["aesthetic"] == 5.0
    assert "aesthetic" not in records["clip 1"]


def test_without_a_cut_folder_unreadable_clips_are_skipped_and_reported(curated, tmp_path, curate, capsys):
    out, _ = curated
    assert curate("export", out, "--format", "osp", "--to", tmp_path / "anno.json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["exported"] == 2 and result["skipped_by_reason"] == {"needs_cut_to": 2}
    assert {c["clip_id"][:2] for c in result["skipped_clips"]} == {"v2", "v3"}
    assert len(define_frame_index(tmp_path / "anno.txt")) == 2


def test_captioner_columns_win_over_the_manifest_caption(curated, tmp_path, curate):
    out, rows = curated
    row = {**rows[0], "vlm_caption": "vlm", "refined_caption": "refined"}
    table = rows_to_table([row], schema_with(CAPTION_FIELDS, REFINED_CAPTION_FIELDS))
    write_table_atomic(table, tmp_path / "captioned" / "clips" / "a.parquet")
    assert curate("export", tmp_path / "captioned", "--format", "osp", "--to", tmp_path / "a.json") == 0
    assert json.loads((tmp_path / "a.json").read_text())[0]["cap"] == "refined"


@pytest.mark.parametrize("address, env", [("auto", None), (None, "http://10.0.0.1:6379")])
def test_a_cluster_job_refuses_relative_paths(tmp_path, curate, capsys, monkeypatch, address, env):
    if env:
        monkeypatch.setenv("RAY_ADDRESS", env)  # what `ray job submit` sets for its job
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    args = ["run", "--config", "pipelines/configs/curate.yaml", "--input", "examples/panda70m_demo.csv",
            "--out", tmp_path / "out"] + (["--address", address] if address else [])
    assert curate(*args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--input examples/panda70m_demo.csv is a relative path" in err
    assert not (tmp_path / "out").exists()
