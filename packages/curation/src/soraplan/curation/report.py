"""report.html: one self-contained page showing what each filter of a curation run removed.

The funnel comes from summary.json; score histograms (matplotlib) draw the configured
thresholds; per reject reason, and for kept clips, a grid of sampled clips shows three frames
each, decoded with the shared decoder. Every image is inlined as base64, so the page opens
offline and can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np

from soraplan.core.schema import STATUS_ERROR, STATUS_KEPT, read_clip_table
from soraplan.core.video import VideoDecodeError, fit_short_side, sample_frames

THUMB_SHORT_SIDE = 96
FRAME_POSITIONS = (0.1, 0.5, 0.9)


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _histogram(values: list[float], title: str, thresholds: list[tuple[float, str]]) -> str:
    import matplotlib

    matplotlib.use("Agg")  # no display; the figure only goes to PNG bytes
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 2.8), dpi=90)
    ax.hist(values, bins=30, color="#4c72b0")
    for value, label in thresholds:
        ax.axvline(value, color="#c44e52", linestyle="--", linewidth=1.5)
        ax.annotate(f"{label} {value:g}", (value, 1), xycoords=("data", "axes fraction"), rotation=90,
                    va="top", ha="right", fontsize=8, color="#c44e52")
    ax.set_title(f"{title} (n={len(values)})", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return _png_data_uri(buffer.getvalue())


def _thumbnail_strip(row: dict[str, Any]) -> str:
    """Three frames of the segment side by side, as a PNG data URI."""
    from PIL import Image

    span = row["end_s"] - row["start_s"]
    times = [row["start_s"] + p * span for p in FRAME_POSITIONS]
    frames, _ = sample_frames(row["path"], times, size=fit_short_side(row["width"], row["height"], THUMB_SHORT_SIDE))
    strip = np.concatenate(list(frames), axis=1)
    buffer = io.BytesIO()
    Image.fromarray(strip).save(buffer, format="PNG", optimize=True)
    return _png_data_uri(buffer.getvalue())


def _score_histograms(rows: list[dict[str, Any]], config: dict[str, Any]) -> list[str]:
    analyze = config.get("analyze", {})
    motion, ocr, aesthetic = analyze.get("motion", {}), analyze.get("ocr", {}), analyze.get("aesthetic", {})
    plots = []
    for backend in sorted({r["motion_backend"] for r in rows if r["motion_backend"]}):
        values = [r["motion_score"] for r in rows if r["motion_backend"] == backend]
        bounds = [(motion[f"{backend}_min"], "static <"), (motion[f"{backend}_max"], "chaotic >")] if motion else []
        plots.append(_histogram(values, f"motion ({backend})", bounds))
    values = [r["ocr_area_ratio"] for r in rows if r["ocr_area_ratio"] is not None]
    if values:
        limit = ocr.get("max_area_ratio")
        plots.append(_histogram(values, "text area ratio", [(limit, "max")] if limit is not None else []))
    values = [r["aesthetic_score"] for r in rows if r["aesthetic_score"] is not None]
    if values:
        limit = aesthetic.get("min_score")
        plots.append(_histogram(values, "aesthetic score", [(limit, "keep >=")] if limit is not None else []))
    return plots


def _funnel_table(summary: dict[str, Any]) -> str:
    cells = ["<tr><th>stage</th><th>unit</th><th>in</th><th>passed</th><th>rejected</th><th>errors</th>"
             "<th>retention</th></tr>"]
    for stage, s in summary["stages"].items():  # in the order the stages run
        rejected = ", ".join(f"{k}: {v}" for k, v in s["rejected"].items()) or "0"
        retention = f"{s['passed'] / s['in']:.0%}" if s["in"] else "-"
        cells.append(f"<tr><td>{stage}</td><td>{s['unit']}</td><td>{s['in']}</td><td>{s['passed']}</td>"
                     f"<td>{html.escape(rejected)}</td><td>{s['errors']}</td><td>{retention}</td></tr>")
    return "<table>" + "".join(cells) + "</table>"


def _clip_grid(rows: list[dict[str, Any]]) -> str:
    cards = []
    for row in rows:
        scores = ", ".join(f"{name} {row[col]:.3g}" for name, col in
                           (("motion", "motion_score"), ("text", "ocr_area_ratio"), ("aes", "aesthetic_score"))
                           if row[col] is not None)
        caption = html.escape(f"{row['clip_id']} · {scores}")
        try:
            image = f'<img src="{_thumbnail_strip(row)}" alt="{caption}">'
        except (VideoDecodeError, OSError, ValueError) as exc:
            image = f'<div class="missing">cannot decode: {html.escape(str(exc))}</div>'
        cards.append(f'<figure>{image}<figcaption>{caption}</figcaption></figure>')
    return '<div class="grid">' + "".join(cards) + "</div>"


STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.plots img { margin: 4px; border: 1px solid #eee; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; max-width: 420px; } figcaption { font-size: 11px; word-break: break-all; }
.missing { color: #c44e52; font-size: 12px; }
"""


def write_report(out: str | os.PathLike[str], to: str | os.PathLike[str] | None = None,
                 per_reason: int = 6, seed: int = 0) -> Path:
    """Write `<out>/report.html` (or `to`) for the curation output in `out`; returns its path."""
    out = Path(out)
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path} is missing: is {out} the --out folder of a curation run?")
    summary = json.loads(summary_path.read_text())
    rows = read_clip_table(out).to_pylist()
    rng = random.Random(seed)  # the same clips are shown each time the report is rebuilt
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: r["clip_id"]):
        if row["status"] == STATUS_KEPT:
            groups.setdefault("kept", []).append(row)
        elif row["status"] != STATUS_ERROR:
            for reason in row["reject_reasons"]:
                groups.setdefault(reason, []).append(row)
    sections = []
    for name in sorted(groups, key=lambda n: (n != "kept", n)):
        members = groups[name]
        shown = rng.sample(members, min(per_reason, len(members)))
        title = "kept" if name == "kept" else f"rejected: {name}"
        sections.append(f"<h3>{html.escape(title)} ({len(members)} segments, {len(shown)} shown)</h3>"
                        + _clip_grid(shown))
    plots = "".join(f'<img src="{uri}" alt="histogram">' for uri in _score_histograms(rows, summary.get("config", {})))
    headline = (f"{summary['rows']} segments from {summary['source_clips']} input clips: {summary['kept']} kept, "
                f"{summary['rejected']} rejected, {summary['errors']} errors; retention {summary['retention']:.1%}, "
                f"{summary['kept_video_seconds']:.1f} s of video kept.")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>curation report: {html.escape(out.name)}</title>"
            f"<style>{STYLE}</style></head><body><h1>Curation report: {html.escape(str(out))}</h1>"
            f"<p>{html.escape(headline)}</p><h2>Funnel</h2>{_funnel_table(summary)}"
            f"<h2>Scores</h2><div class='plots'>{plots}</div>"
            f"<h2>Clips per filter</h2><p>Frames at 10%, 50% and 90% of each segment.</p>{''.join(sections)}"
            "</body></html>")
    path = Path(to) if to else out / "report.html"
    path.write_text(page)
    return path
