"""summary.json: the funnel per stage, retention, thresholds, timings and versions."""

from __future__ import annotations

import importlib.metadata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from soraplan.core.config import to_dict
from soraplan.core.schema import STATUS_ERROR, STATUS_KEPT, STATUS_REJECTED, read_clip_table
from soraplan.curation.analyze import CLIP_PHASES, AnalyzeConfig

_PACKAGES = ("soraplan-curation", "ray", "av", "scenedetect", "opencv-python-headless", "rapidocr",
             "onnxruntime", "pyarrow", "numpy", "torch", "lpips", "open-clip-torch")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def funnel_stages(cfg: AnalyzeConfig) -> tuple[list[str], dict[str, str]]:
    """The funnel's rows in the order they run (the analyzer's per-clip phases, then every
    stage, enabled or not) and the stage each reject reason belongs to, from the stage classes."""
    classes = cfg.stage_classes(enabled_only=False)
    return [*CLIP_PHASES, *(c.name for c in classes)], {r: c.name for c in classes for r in c.reasons}


def summarize(out: Path, cfg: Any, inputs: int, duplicates: int, wall_s: float) -> dict[str, Any]:
    """The summary of the curation output in `out`; `cfg` is the job's CurateConfig."""
    stages, stage_of_reason = funnel_stages(cfg.analyze)
    table = read_clip_table(out, columns=["source_id", "status", "reject_reasons", "error_stage",
                                          "stage_seconds", "motion_backend", "end_s", "start_s"])
    rows = table.to_pylist()
    status = Counter(r["status"] for r in rows)
    # The analyzer's phases count input clips; the stages count segments. A segment enters a
    # stage unless an earlier stage rejected it (with score_all it is still scored).
    split = len(CLIP_PHASES)
    funnel: dict[str, dict[str, Any]] = {
        s: {"unit": "clip" if i < split else "segment", "in": 0, "passed": 0,
            "rejected": defaultdict(int), "errors": 0}
        for i, s in enumerate(stages)
    }
    sources_at: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        if r["status"] == STATUS_ERROR:
            failed = r["error_stage"] if r["error_stage"] in stages else stages[-1]
            last = stages.index(failed)
            funnel[failed]["errors"] += 1
        else:
            last = min((stages.index(stage_of_reason[x]) for x in r["reject_reasons"]), default=len(stages) - 1)
        for i, s in enumerate(stages[: last + 1]):
            if i < split:
                sources_at[s].add(r["source_id"])
                continue
            funnel[s]["in"] += 1
            reasons = [x for x in r["reject_reasons"] if stage_of_reason[x] == s]
            for x in reasons:
                funnel[s]["rejected"][x] += 1
            if not reasons and r["status"] != STATUS_ERROR:
                funnel[s]["passed"] += 1
    for s in stages[:split]:
        funnel[s]["in"] = len(sources_at[s])
        funnel[s]["passed"] = funnel[s]["in"] - funnel[s]["errors"]
    stage_seconds: dict[str, float] = defaultdict(float)
    for r in rows:
        for name, seconds in (r["stage_seconds"] or []):
            stage_seconds[name] += seconds
    kept_seconds = sum(r["end_s"] - r["start_s"] for r in rows if r["status"] == STATUS_KEPT)
    segments = [r for r in rows if r["status"] != STATUS_ERROR]
    return {
        "inputs": inputs,
        "duplicate_inputs": duplicates,
        "source_clips": len({r["source_id"] for r in rows}),
        "rows": len(rows),
        "kept": status[STATUS_KEPT],
        "rejected": status[STATUS_REJECTED],
        "errors": status[STATUS_ERROR],
        "rejected_by_reason": dict(Counter(x for r in rows for x in r["reject_reasons"])),
        "retention": status[STATUS_KEPT] / len(segments) if segments else 0.0,
        "kept_video_seconds": kept_seconds,
        "stages": {s: {**v, "rejected": dict(v["rejected"])} for s, v in funnel.items()},
        "stage_wall_seconds": dict(stage_seconds),
        "motion_backends": sorted({r["motion_backend"] for r in rows if r["motion_backend"]}),
        "config": to_dict(cfg),
        "job_wall_seconds": wall_s,
        "versions": package_versions(),
    }
