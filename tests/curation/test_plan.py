"""Input planning inside Ray: several manifests, duplicates across them, resume, plan-only counts."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from soraplan.core.config import load_config
from soraplan.core.inputs import InputClip, expand_inputs
from soraplan.core.schema import read_clip_table
from soraplan.curation.pipeline import CurateConfig, run
from soraplan.curation.plan import (
    CLIP_SCHEMA,
    MAX_WORK_UNITS,
    TODO_ROW_GROUP,
    InputPlan,
    plan_inputs,
    read_work_unit,
)

REPO = Path(__file__).resolve().parents[2]
SPANS = "[['0:00:00.000', '0:00:02.000'], ['0:00:02.000', '0:00:04.000']]"


def two_manifests(root: Path, media: dict[str, Path], write_manifest) -> Path:
    """Two manifests in `root/manifests` over the `moving` video: 7 input clips, of which one
    span repeats across the files, one row is malformed and one has no videoID."""
    shutil.copy(media["moving"], root / "moving.mp4")
    (root / "manifests").mkdir()
    write_manifest(root / "manifests/a.csv", [("moving", SPANS, "first copy"),
                                              ("moving", "[['0:00:00.000']"),  # malformed
                                              ("moving", "[['0:00:01.000', '0:00:03.000']]")])
    write_manifest(root / "manifests/b.csv", [("moving", "[['0:00:02.000', '0:00:04.000']]", "second copy"),
                                              ("", SPANS),  # no videoID: one error for the row
                                              ("moving", "[['0:00:00.500', '0:00:01.500']]")])
    return root / "manifests"


def test_plan_schema_is_the_input_clip():
    assert CLIP_SCHEMA.names == [f.name for f in dataclasses.fields(InputClip)]


def test_duplicates_across_files_and_resume_over_partitions(local_ray, tmp_path, media, write_manifest):
    manifests = two_manifests(tmp_path, media, write_manifest)
    results = tmp_path / "out/clips"
    results.mkdir(parents=True)
    pq.write_table(pa.table({"source_id": ["moving:1.000-3.000", "moving:1.000-3.000"]}), results / "done.parquet")
    (results / "cut_off.parquet").write_bytes(b"PAR1 half a file")
    scratch = tmp_path / "out/plan/x"
    # Three partitions for six ids: the two copies of a span must still meet in one.
    plan = plan_inputs(local_ray, expand_inputs(str(manifests / "*.csv")), results, scratch,
                       video_root=str(tmp_path), partitions=3)
    assert (plan.inputs, plan.duplicates, plan.already_done, plan.todo) == (7, 1, 1, 5)
    assert plan.inputs == plan.duplicates + plan.already_done + plan.todo  # every input accounted for
    assert plan.input_errors == {"bad_video_id": 1, "malformed_row": 1}
    assert plan.unreadable_result_files == 1
    todo = pa.concat_tables(pq.read_table(f) for f in plan.todo_files).to_pylist()
    assert len({r["source_id"] for r in todo}) == len(todo) == 5
    assert {r["caption"] for r in todo if r["source_id"] == "moving:2.000-4.000"} == {"first copy"}
    assert "moving:1.000-3.000" not in {r["source_id"] for r in todo}
    assert sorted(p.name for p in scratch.iterdir()) == [p.name for p in plan.todo_files]  # buckets removed


def test_plan_only_prints_counts_and_writes_nothing(local_ray, tmp_path, media, write_manifest, curate, capsys):
    manifests = two_manifests(tmp_path, media, write_manifest)
    out = tmp_path / "out"
    code = curate("run", "--config", REPO / "pipelines/configs/curate.yaml", "--input", manifests / "*.csv",
                  "--out", out, f"video_root={tmp_path}", "--plan-only")
    assert code == 0
    counts = json.loads(capsys.readouterr().out)
    assert {k: counts[k] for k in ("sources", "inputs", "duplicates", "already_done", "todo")} == {
        "sources": 2, "inputs": 7, "duplicates": 1, "already_done": 0, "todo": 6}
    assert counts["input_errors"] == {"bad_video_id": 1, "malformed_row": 1}
    assert list(out.iterdir()) == []  # the scratch is gone


def test_bad_inputs_exit_2_in_one_line(local_ray, tmp_path, curate, capsys):
    config = REPO / "pipelines/configs/curate.yaml"
    assert curate("run", "--config", config, "--input", tmp_path / "none*.csv", "--out", tmp_path / "o",
                  "--plan-only") == 2
    assert curate("run", "--config", config, "input=[]", "--out", tmp_path / "o") == 2
    (tmp_path / "notes.csv").write_text("name,size\na,1\n")
    assert curate("run", "--config", config, "--input", tmp_path / "*.csv", "--out", tmp_path / "o",
                  "--plan-only") == 2  # found by a planning task, reported by the driver
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 3 and "matches no file" in errors[0] and "list of manifests is empty" in errors[1]
    assert "cannot read input" in errors[2] and "not a Panda-70M manifest" in errors[2]


def test_work_units_cover_the_todo_files_exactly(tmp_path):
    files = {}
    for name, rows in (("todo-00000.parquet", 2500), ("todo-00001.parquet", 3)):
        table = pa.table({"source_id": [f"{name}:{i}" for i in range(rows)]})
        pq.write_table(table, tmp_path / name, row_group_size=TODO_ROW_GROUP)
        files[tmp_path / name] = rows
    plan = InputPlan(todo=2503, todo_files=files)
    units = plan.work_units(700)
    assert [u["rows"] for u in units] == [700, 700, 700, 400, 3]
    read = [i for u in units for i in read_work_unit(u["file"], u["start"], u["rows"])["source_id"].to_pylist()]
    assert read == [f"{name}:{i}" for name, rows in (("todo-00000.parquet", 2500), ("todo-00001.parquet", 3))
                    for i in range(rows)]
    # However many clips there are, the driver lists a bounded number of units.
    assert len(InputPlan(todo=10**9, todo_files={Path("t"): 10**9}).work_units(1)) == MAX_WORK_UNITS


def test_every_input_comes_back_once_across_manifests_and_reruns(local_ray, tmp_path, media, write_manifest):
    manifests = two_manifests(tmp_path, media, write_manifest)
    out = tmp_path / "out"

    def curate(input_: str) -> dict:
        return run(load_config(CurateConfig, REPO / "pipelines/configs/curate.yaml",
                               [f"input={input_}", f"out={out}", f"video_root={tmp_path}"]))

    curate(str(manifests / "a.csv"))
    first = {r["source_id"] for r in read_clip_table(out).to_pylist()}
    assert len(first) == 4  # three spans and the malformed row
    summary = curate(str(manifests / "*.csv"))
    rows = read_clip_table(out).to_pylist()
    sources = {r["source_id"] for r in rows}
    assert first < sources and len(sources) == summary["inputs"] - summary["duplicate_inputs"] == 7 - 1
    assert len({r["clip_id"] for r in rows}) == len(rows)
    errors = sorted(r["source_id"] for r in rows if r["status"] == "error")
    assert errors == ["b.csv:line3", "moving:a.csv:line3"]
    assert summary["kept"] + summary["rejected"] + summary["errors"] == summary["rows"] == len(rows)
