import os
import signal

import pyarrow as pa
import pytest

from soraplan.core.config import ConfigError
from soraplan.core.outputs import (
    done_ids,
    exclusive_output,
    move_partial_files,
    prepare_output_dir,
    read_results,
    write_json_atomic,
    write_part,
)


def test_parts_resume_and_partial_files(tmp_path):
    out = prepare_output_dir(tmp_path / "out", {"a": 1})
    assert (out / "run.yaml").read_text() == "a: 1\n"
    parts = out / "parts"
    write_part(parts, [{"clip_id": "x", "v": 1}, {"clip_id": "y", "v": 2}])
    write_part(parts, pa.table({"clip_id": ["z"], "v": [3]}))
    (parts / "part-cut-off.parquet").write_bytes(b"PAR1 not a whole file")
    (parts / ".part-hidden.tmp").write_bytes(b"in flight")
    moved = move_partial_files(parts, out)
    assert [p.name for p in moved] == ["part-cut-off.parquet"] and (out / "partial").is_dir()
    assert done_ids(parts, "clip_id") == {"x", "y", "z"}
    assert sorted(read_results(parts)["v"].to_pylist()) == [1, 2, 3]
    assert done_ids(out / "nothing-yet", "clip_id") == set()
    write_json_atomic(out / "summary.json", {"rows": 3})
    assert (out / "summary.json").read_text().startswith("{")


def test_output_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        prepare_output_dir(tmp_path / "file")


def test_a_second_job_into_the_same_output_is_refused_until_the_first_dies(tmp_path, output_held_elsewhere):
    out = tmp_path / "out"
    holder = output_held_elsewhere(out)
    with pytest.raises(ConfigError, match=rf"being written by another job \(pid {holder.pid} on "):
        with exclusive_output(out):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with exclusive_output(out) as folder:  # a killed job leaves no lock behind
        assert folder == out and f"pid {os.getpid()} " in (out / ".lock").read_text()
