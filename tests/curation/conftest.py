import csv
from pathlib import Path

import pytest

from soraplan.core.cli import run_command
from soraplan.core.ray_session import init_ray
from soraplan.curation.cli import COMMANDS, DESCRIPTION, PROG


@pytest.fixture
def curate():
    """`soraplan-curate ARGS...` run in this process; returns its exit code."""
    return lambda *argv: run_command(PROG, DESCRIPTION, COMMANDS, [str(a) for a in argv])


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for the module's tests; returns the ray module."""
    ray = init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture
def write_manifest():
    """`write_manifest(path, rows)`: a Panda-70M CSV, one row per (video id, spans literal[, caption])."""

    def write(path: Path, rows: list[tuple[str, ...]]) -> Path:
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["videoID", "url", "timestamp", "caption", "matching_score"])
            for video_id, spans, *caption in rows:
                n = spans.count("], [") + 1
                writer.writerow([video_id, "", spans, str([caption[0] if caption else "a caption"] * n),
                                 str([0.5] * n)])
        return path

    return write
