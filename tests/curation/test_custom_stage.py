"""A stage plugged into the analyzer through its stage list: columns, reasons, timings, funnel."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pytest

from soraplan.core.config import ConfigError, PositiveFloat, UnitFloat, from_dict
from soraplan.core.inputs import InputClip
from soraplan.core.schema import write_table_atomic
from soraplan.core.testing.media import scene_texture
from soraplan.core.video import write_video
from soraplan.curation.analyze import AnalyzeConfig, ClipAnalyzer
from soraplan.curation.motion import MotionConfig
from soraplan.curation.ocr import OcrConfig
from soraplan.curation.pipeline import CurateConfig
from soraplan.curation.stages import ClipContext, PerSecond, Segment, Stage, StageConfig
from soraplan.curation.summary import summarize


# The worked example of docs/curation.md: one file...
@dataclass
class BrightnessConfig(StageConfig):
    min_mean: UnitFloat = 0.2  # reject segments darker than this mean pixel value (0-1)
    fps: PositiveFloat = 2.0  # frames sampled per second

    def stage_class(self) -> type[BrightnessStage]:
        return BrightnessStage


class BrightnessStage(Stage):
    name = "brightness"
    reasons = ("too_dark",)
    extra_columns = (pa.field("mean_brightness", pa.float64()),)

    def __init__(self, cfg: BrightnessConfig) -> None:
        self.cfg = cfg
        self.sampling = PerSecond(cfg.fps)

    def start(self, clip: ClipContext) -> None:
        self.times: list[float] = []
        self.means: list[float] = []

    def observe(self, frame: np.ndarray, time_s: float) -> None:
        self.times.append(time_s)
        self.means.append(float(frame.mean()) / 255)

    def score(self, segment: Segment) -> tuple[dict, list[str]]:
        values = [m for t, m in zip(self.times, self.means) if segment.contains(t)]
        if not values:
            return {}, []
        mean = float(np.mean(values))
        return {"mean_brightness": mean}, ["too_dark"] if mean < self.cfg.min_mean else []


# ...and one line in the stage list (here in a subclass; in the package, in AnalyzeConfig itself).
@dataclass
class AnalyzeWithBrightness(AnalyzeConfig):
    brightness: BrightnessConfig = field(default_factory=BrightnessConfig)


def quick(cls: type[AnalyzeConfig] = AnalyzeWithBrightness) -> AnalyzeConfig:
    return cls(motion=MotionConfig(flow_min=0.0), ocr=OcrConfig(enabled=False))


@pytest.fixture(scope="module")
def dark_video(tmp_path_factory):
    texture = (scene_texture(7, 180, 320) * 0.15).astype(np.uint8)
    frames = np.stack([texture[i : i + 180, 2 * i : 2 * i + 320] for i in range(72)])
    return write_video(tmp_path_factory.mktemp("dark") / "dark.mp4", frames, fps=24)


def test_a_plugged_in_stage_writes_its_column_reason_timing_and_funnel_row(media, dark_video, tmp_path):
    cfg = quick()
    assert [c.name for c in cfg.stage_classes()] == ["cuts", "motion", "camera", "brightness"]
    analyzer = ClipAnalyzer(cfg)
    # As Ray Data calls it: a batch of input clip columns in, a table in the output schema out.
    table = analyzer({"source_id": np.array(["moving", "dark"]),
                      "path": np.array([str(media["moving"]), str(dark_video)])})
    assert "mean_brightness" in table.schema.names
    moving, dark = table.to_pylist()
    assert moving["status"] == "kept" and moving["mean_brightness"] > 0.3
    assert dark["status"] == "rejected" and dark["reject_reasons"] == ["too_dark"]
    assert dark["mean_brightness"] < 0.2
    assert dict(dark["stage_seconds"])["brightness"] > 0  # an Arrow map reads back as pairs

    out = tmp_path / "out"
    write_table_atomic(table, out / "clips" / "part-0.parquet")
    summary = summarize(out, CurateConfig(analyze=cfg), inputs=2, duplicates=0, wall_s=1.0)
    assert list(summary["stages"])[-1] == "brightness"
    assert summary["stages"]["brightness"] == {"unit": "segment", "in": 2, "passed": 1,
                                               "rejected": {"too_dark": 1}, "errors": 0}
    assert summary["rejected_by_reason"] == {"too_dark": 1}


def test_the_new_section_is_a_range_checked_config_key():
    cfg = from_dict(AnalyzeWithBrightness, {"brightness": {"min_mean": 0.5}})
    assert cfg.brightness.min_mean == 0.5
    with pytest.raises(ConfigError, match=r"brightness.min_mean: 1.5 is out of range"):
        from_dict(AnalyzeWithBrightness, {"brightness": {"min_mean": 1.5}})


class FailingStage(BrightnessStage):
    name = "failing"

    def finish(self, clip: ClipContext) -> None:
        raise RuntimeError("boom")


class UndeclaredReasonStage(BrightnessStage):
    name = "undeclared"
    reasons = ()


class VerdictWritingStage(BrightnessStage):
    name = "verdict"

    def score(self, segment: Segment) -> tuple[dict, list[str]]:
        return {"status": "kept"}, []  # the analyzer's column, not a stage's


@pytest.mark.parametrize("stage_class, message", [
    (FailingStage, "RuntimeError in failing: boom"),
    (UndeclaredReasonStage, "not among the stage's reasons"),
    (VerdictWritingStage, "['status'] are analyzer columns"),
])
def test_a_failing_stage_is_named_in_the_error_row(dark_video, stage_class, message):
    @dataclass
    class FailingConfig(BrightnessConfig):
        def stage_class(self) -> type[Stage]:
            return stage_class

    @dataclass
    class AnalyzeWithFailing(AnalyzeConfig):
        failing: FailingConfig = field(default_factory=FailingConfig)

    (row,) = ClipAnalyzer(quick(AnalyzeWithFailing)).analyze(InputClip(source_id="d", path=str(dark_video)))
    assert row["status"] == "error" and row["error_stage"] == stage_class.name and message in row["error"]
