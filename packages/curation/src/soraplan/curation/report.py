"""report.html: one self-contained page showing what each filter of a curation run removed.

The funnel comes from summary.json; score histograms (matplotlib) draw the configured
thresholds; per reject reason, and for kept clips, a grid of sampled clips shows three frames
each, decoded with the shared decoder. Every image is inlined as base64, so the page opens
offline and can be mailed or archived as one file.

The shards are read a batch of the columns it needs at a time, twice (score ranges and samples,
then histogram counts), so its memory does not grow with the run: a Panda-70M-sized output has
tens of millions of rows. The clips shown per group are the ones whose seeded hash of the clip
id is smallest, the same whatever the order of the files.
"""

from __future__ import annotations

import base64
import heapq
import html
import io
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from soraplan.core.schema import STATUS_ERROR, STATUS_KEPT, shard_files
from soraplan.core.video import VideoDecodeError, fit_short_side, sample_frames

THUMB_SHORT_SIDE = 96
FRAME_POSITIONS = (0.1, 0.5, 0.9)
HISTOGRAM_BINS = 30
BATCH_ROWS = 65_536
# What the page reads of each row; everything else in the shards stays on disk.
COLUMNS = ("clip_id", "status", "reject_reasons", "path", "start_s", "end_s", "width", "height",
           "motion_backend", "motion_score", "ocr_area_ratio", "aesthetic_score")


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _histogram(counts: np.ndarray, edges: np.ndarray, title: str, thresholds: list[tuple[float, str]]) -> str:
    import matplotlib

    matplotlib.use("Agg")  # no display; the figure only goes to PNG bytes
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 2.8), dpi=90)
    ax.stairs(counts, edges, fill=True, color="#4c72b0")
    for value, label in thresholds:
        ax.axvline(value, color="#c44e52", linestyle="--", linewidth=1.5)
        ax.annotate(f"{label} {value:g}", (value, 1), xycoords=("data", "axes fraction"), rotation=90,
                    va="top", ha="right", fontsize=8, color="#c44e52")
    ax.set_title(f"{title} (n={int(counts.sum())})", fontsize=10)
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


def _batches(files: list[Path]) -> Iterator[pa.RecordBatch]:
    for path in files:
        parquet = pq.ParquetFile(path)
        names = [c for c in COLUMNS if c in parquet.schema_arrow.names]
        yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=names)


def _scores(batch: pa.RecordBatch) -> Iterator[tuple[tuple[str, str], np.ndarray]]:
    """(histogram key, the batch's non-null values for it): motion per backend, text area, aesthetics."""
    names = batch.schema.names
    if "motion_score" in names and "motion_backend" in names:
        backends = batch["motion_backend"]
        for backend in pc.unique(backends.drop_null()).to_pylist():
            values = pc.filter(batch["motion_score"], pc.equal(backends, backend))
            yield ("motion", backend), values.drop_null().to_numpy(zero_copy_only=False)
    for column in ("ocr_area_ratio", "aesthetic_score"):
        if column in names:
            yield (column, ""), batch[column].drop_null().to_numpy(zero_copy_only=False)


def _groups(batch: pa.RecordBatch) -> Iterator[tuple[str, np.ndarray]]:
    """(group, row indices in the batch): "kept", and each reject reason of rejected rows."""
    status = batch["status"]
    yield "kept", np.flatnonzero(pc.equal(status, STATUS_KEPT).to_numpy(zero_copy_only=False))
    rejected = pc.and_(pc.not_equal(status, STATUS_KEPT), pc.not_equal(status, STATUS_ERROR))
    reasons = batch["reject_reasons"]
    parents = pc.list_parent_indices(reasons).to_numpy()
    flat = pc.list_flatten(reasons).to_numpy(zero_copy_only=False)
    keep = rejected.to_numpy(zero_copy_only=False)[parents] if len(parents) else np.zeros(0, dtype=bool)
    for reason in np.unique(flat[keep]):
        yield str(reason), np.unique(parents[keep & (flat == reason)])


class _Samples:
    """Per group: the member count and the `size` members of smallest seeded clip-id hash."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self.counts: dict[str, int] = {}
        self.smallest: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}

    def add(self, batch: pa.RecordBatch) -> None:
        ids = batch["clip_id"].to_pylist()
        keys = None
        for group, rows in _groups(batch):
            self.counts[group] = self.counts.get(group, 0) + len(rows)
            if keys is None:
                keys = [zlib.crc32(f"{self.seed}:{i}".encode()) for i in ids]
            best = self.smallest.setdefault(group, [])
            chosen = heapq.nsmallest(self.size, ((keys[r], ids[r], int(r)) for r in rows))
            best.extend((key, clip_id, batch.slice(r, 1).to_pylist()[0]) for key, clip_id, r in chosen)
            best[:] = heapq.nsmallest(self.size, best, key=lambda item: item[:2])

    def rows(self, group: str) -> list[dict[str, Any]]:
        return [row for _, _, row in self.smallest.get(group, [])]


def _score_histograms(files: list[Path], config: dict[str, Any], samples: _Samples) -> list[str]:
    """Histograms of the scores with the configured thresholds; reads the shards twice and adds
    every batch to `samples` on the first pass."""
    ranges: dict[tuple[str, str], tuple[float, float]] = {}
    for batch in _batches(files):
        samples.add(batch)
        for key, values in _scores(batch):
            if len(values):
                low, high = ranges.get(key, (np.inf, -np.inf))
                ranges[key] = (min(low, float(values.min())), max(high, float(values.max())))
    edges = {key: np.histogram_bin_edges([], bins=HISTOGRAM_BINS, range=(low, high if high > low else low + 1))
             for key, (low, high) in ranges.items()}
    counts = {key: np.zeros(HISTOGRAM_BINS, dtype=np.int64) for key in ranges}
    for batch in _batches(files):
        for key, values in _scores(batch):
            if key in counts:
                counts[key] += np.histogram(values, bins=edges[key])[0]
    analyze = config.get("analyze", {})
    motion, ocr, aesthetic = analyze.get("motion", {}), analyze.get("ocr", {}), analyze.get("aesthetic", {})
    plots = []
    for key in sorted(counts):
        kind, backend = key
        if kind == "motion":
            bounds = [(motion[f"{backend}_min"], "static <"), (motion[f"{backend}_max"], "chaotic >")] if motion else []
            plots.append(_histogram(counts[key], edges[key], f"motion ({backend})", bounds))
    if ("ocr_area_ratio", "") in counts:
        limit = ocr.get("max_area_ratio")
        plots.append(_histogram(counts[("ocr_area_ratio", "")], edges[("ocr_area_ratio", "")], "text area ratio",
                                [(limit, "max")] if limit is not None else []))
    if ("aesthetic_score", "") in counts:
        limit = aesthetic.get("min_score")
        plots.append(_histogram(counts[("aesthetic_score", "")], edges[("aesthetic_score", "")], "aesthetic score",
                                [(limit, "keep >=")] if limit is not None else []))
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
    samples = _Samples(per_reason, seed)
    histograms = _score_histograms(shard_files(out), summary.get("config", {}), samples)
    sections = []
    for name in sorted(samples.counts, key=lambda n: (n != "kept", n)):
        if not samples.counts[name]:
            continue
        shown = samples.rows(name)
        title = "kept" if name == "kept" else f"rejected: {name}"
        sections.append(f"<h3>{html.escape(title)} ({samples.counts[name]} segments, {len(shown)} shown)</h3>"
                        + _clip_grid(shown))
    plots = "".join(f'<img src="{uri}" alt="histogram">' for uri in histograms)
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
