"""Every numeric curation setting carries its valid range; bad values stop the job at load time."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Annotated

import pytest

from soraplan.core.config import Range
from soraplan.curation.pipeline import CurateConfig

REPO = Path(__file__).resolve().parents[2]
UNBOUNDED = {"analyze.aesthetic.min_score"}  # a threshold on an open-ended score: any number


def numeric_fields(cls: type, prefix: str = ""):
    """(key, annotated type) of every int or float setting under `cls`, nested sections included."""
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls, include_extras=True)[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from numeric_fields(tp, f"{key}.")
            continue
        if typing.get_origin(tp) is tuple:
            tp = typing.get_args(tp)[0]  # tuple[X, ...]: each item is checked as X
        elif typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))  # X | None
        base = typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp
        if base in (int, float):
            yield key, tp


def test_every_numeric_setting_declares_its_range():
    fields = dict(numeric_fields(CurateConfig))
    # Plain, optional (X | None) and list (tuple[X, ...]) settings, in every section, are all seen.
    assert {"rows_per_file", "analyze.ocr.fps", "analyze.ocr.max_area_ratio", "ray.num_cpus",
            "analyze.aesthetic.positions", "analyze.cuts.detect_width"} <= set(fields)
    unranged = [key for key, tp in fields.items() if key not in UNBOUNDED and not (
        typing.get_origin(tp) is Annotated and any(isinstance(m, Range) for m in typing.get_args(tp)[1:]))]
    assert unranged == []


@pytest.mark.parametrize("override, expected", [
    ("analyze.ocr.fps=0", "analyze.ocr.fps: 0.0 is out of range (allowed: 0 < value)"),
    ("analyze.motion.frame_skip=0", "analyze.motion.frame_skip: 0 is out of range (allowed: 1 <= value)"),
    ("analyze.cuts.detect_width=0", "analyze.cuts.detect_width: 0 is out of range (allowed: 1 <= value)"),
    ("analyze.analysis_short_side=-10", "analyze.analysis_short_side: -10 is out of range (allowed: 1 <= value)"),
    ("analyze.ocr.max_frames=0", "analyze.ocr.max_frames: 0 is out of range (allowed: 1 <= value)"),
    ("ray.concurrency=-2", "ray.concurrency: -2 is out of range (allowed: 1 <= value)"),
    ("ray.batch_size=0", "ray.batch_size: 0 is out of range (allowed: 1 <= value)"),
    ("rows_per_file=0", "rows_per_file: 0 is out of range (allowed: 1 <= value)"),
    ("analyze.ocr.subtitle_band=1.5", "analyze.ocr.subtitle_band: 1.5 is out of range (allowed: 0 <= value <= 1)"),
    ("analyze.ocr.max_crop=0.5", "analyze.ocr.max_crop: 0.5 is out of range (allowed: 0 <= value < 0.5)"),
    ("analyze.aesthetic.positions=[0.5,1.2]", "analyze.aesthetic.positions[1]: 1.2 is out of range"),
    ("analyze.aesthetic.positions=[]", "analyze.aesthetic: positions is empty"),
    ("analyze.motion.flow_min=0.2", "analyze.motion: flow_min=0.2 must not exceed flow_max=0.12"),
    ("analyze.motion.lpips_max=0.0001", "analyze.motion: lpips_min=0.013 must not exceed lpips_max=0.0001"),
    ("analyze.cuts.min_content_val=300", "analyze.cuts.min_content_val: 300.0 is out of range (allowed: 0 <= value <= 255)"),
])
def test_bad_settings_fail_when_the_config_loads(override, expected, curate, capsys, tmp_path):
    code = curate("run", "--config", REPO / "pipelines/configs/curate.yaml", "--input", REPO / "examples",
                  "--out", tmp_path / "out", override)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("soraplan-curate run: ") and expected in err, err
    assert not (tmp_path / "out").exists()


def test_weights_download_checks_the_same_ranges(curate, capsys, tmp_path):
    assert curate("weights", "download", "--to", tmp_path, "analyze.motion.frame_skip=0") == 2
    assert "analyze.motion.frame_skip: 0 is out of range" in capsys.readouterr().err


def test_lpips_bounds_come_from_a_named_preset_unless_set():
    from soraplan.curation.motion import LPIPS_BOUNDS, MotionConfig

    assert MotionConfig(backend="lpips").bounds() == LPIPS_BOUNDS["devset"]
    assert MotionConfig(backend="lpips", lpips_bounds="open_sora_plan").bounds() == (0.001, 0.3)
    assert MotionConfig(backend="lpips", lpips_min=0.002).bounds() == (0.002, LPIPS_BOUNDS["devset"][1])
    assert MotionConfig().bounds() == (0.002, 0.12)  # the flow backend's own
