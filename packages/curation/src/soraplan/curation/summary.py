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


SUMMARY_COLUMNS = ["source_id", "status", "reject_reasons", "error_stage", "stage_seconds", "motion_backend",
                   "end_s", "start_s"]


def count_rows(rows: list[dict[str, Any]], cfg: AnalyzeConfig) -> dict[str, Any]:
    """The summary's counts over `rows` (SUMMARY_COLUMNS), which hold every row of their sources:
    counts of disjoint sets of sources add up with `add_counts`."""
    stages, stage_of_reason = funnel_stages(cfg)
    # The analyzer's phases count input clips; the stages count segments. A segment enters a
    # stage unless an earlier stage rejected it (with score_all it is still scored).
    split = len(CLIP_PHASES)
    funnel: dict[str, dict[str, Any]] = {s: {"in": 0, "passed": 0, "rejected": Counter(), "errors": 0}
                                         for s in stages}
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
            funnel[s]["rejected"].update(reasons)
            if not reasons and r["status"] != STATUS_ERROR:
                funnel[s]["passed"] += 1
    for s in stages[:split]:
        funnel[s]["in"] = len(sources_at[s])
    stage_seconds: Counter[str] = Counter()
    for r in rows:
        for name, seconds in (r["stage_seconds"] or []):
            stage_seconds[name] += seconds
    return {
        "rows": len(rows),
        "sources": len({r["source_id"] for r in rows}),
        "status": dict(Counter(r["status"] for r in rows)),
        "rejected_by_reason": dict(Counter(x for r in rows for x in r["reject_reasons"])),
        "kept_video_seconds": sum(r["end_s"] - r["start_s"] for r in rows if r["status"] == STATUS_KEPT),
        "funnel": {s: {**v, "rejected": dict(v["rejected"])} for s, v in funnel.items()},
        "stage_wall_seconds": dict(stage_seconds),
        "motion_backends": sorted({r["motion_backend"] for r in rows if r["motion_backend"]}),
    }


def add_counts(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two `count_rows` results as one: numbers add, lists unite, dicts merge key by key."""
    merged = dict(a)
    for key, value in b.items():
        if key not in merged:
            merged[key] = value
        elif isinstance(value, dict):
            merged[key] = add_counts(merged[key], value)
        elif isinstance(value, list):
            merged[key] = sorted(set(merged[key]) | set(value))
        else:
            merged[key] = merged[key] + value
    return merged


def summary_from_counts(counts: dict[str, Any], cfg: Any, inputs: int, duplicates: int,
                        wall_s: float) -> dict[str, Any]:
    """summary.json from the counts of the whole output; `cfg` is the job's CurateConfig."""
    funnel = counts["funnel"]
    stages, _ = funnel_stages(cfg.analyze)
    for i, s in enumerate(stages):
        funnel[s]["unit"] = "clip" if i < len(CLIP_PHASES) else "segment"
        if i < len(CLIP_PHASES):
            funnel[s]["passed"] = funnel[s]["in"] - funnel[s]["errors"]
    status = Counter(counts["status"])
    segments = status[STATUS_KEPT] + status[STATUS_REJECTED]
    return {
        "inputs": inputs,
        "duplicate_inputs": duplicates,
        "source_clips": counts["sources"],
        "rows": counts["rows"],
        "kept": status[STATUS_KEPT],
        "rejected": status[STATUS_REJECTED],
        "errors": status[STATUS_ERROR],
        "rejected_by_reason": counts["rejected_by_reason"],
        "retention": status[STATUS_KEPT] / segments if segments else 0.0,
        "kept_video_seconds": counts["kept_video_seconds"],
        "stages": {s: {k: funnel[s][k] for k in ("unit", "in", "passed", "rejected", "errors")} for s in stages},
        "stage_wall_seconds": counts["stage_wall_seconds"],
        "motion_backends": counts["motion_backends"],
        "config": to_dict(cfg),
        "job_wall_seconds": wall_s,
        "versions": package_versions(),
    }


def summarize(out: Path, cfg: Any, inputs: int, duplicates: int, wall_s: float) -> dict[str, Any]:
    """The summary of the curation output in `out`, counted in this process (the job counts in
    Ray: `finalize.finalize_output`)."""
    rows = read_clip_table(out, columns=SUMMARY_COLUMNS).to_pylist()
    return summary_from_counts(count_rows(rows, cfg.analyze), cfg, inputs, duplicates, wall_s)
