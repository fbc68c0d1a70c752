"""`<out>/report.html` of a toy-world run: one self-contained page (no external files) with the
checker's figures, every sampled video (an animated GIF) beside its prompt and verdicts, what
curation removed, the loss curves and the time of each stage."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from soraplan.core.testing.toyworld import parse_caption
from soraplan.core.video import gif_bytes, iter_frames

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; }
figure { margin: 0; font-size: 11px; } figure img { image-rendering: pixelated; width: 128px; height: 128px; }
.ok { color: #2a7a2a; } .bad { color: #c0392b; } .held { outline: 2px dashed #8e44ad; }
"""


def _gif(path: Path, scale: int = 2) -> str:
    frames = np.stack([f.image for f in iter_frames(path)])
    frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    return "data:image/gif;base64," + base64.b64encode(gif_bytes(frames, 8.0)).decode("ascii")


def _figures_table(figures: dict[str, Any], targets: dict[str, float]) -> str:
    keys = ["colour", "direction", "shape", "one_blob"]
    head = "<tr><th>videos</th><th>n</th>" + "".join(f"<th>{k} (target {targets[k]})</th>" for k in keys) + "</tr>"
    rows = []
    for name in ("all", "trained", "held_out"):
        f = figures.get(name, {})
        cells = "".join(f"<td>{f[k]:.2f}</td>" if k in f else "<td>-</td>" for k in keys)
        rows.append(f"<tr><td>{name}</td><td>{f.get('videos', 0)}</td>{cells}</tr>")
    return "<table>" + head + "".join(rows) + "</table>"


def _sample_grid(folder: Path, videos: list[dict[str, Any]], holdout: set[str]) -> str:
    """`videos`: the checker's reading of each sample (check_samples(...)["videos"])."""
    cards = []
    for video in videos:
        expected = parse_caption(video["prompt"]) or (None, None, None)
        marks = []
        for key, want in zip(("colour", "shape", "direction"), expected):
            got = video[key]
            marks.append(f"<span class='{'ok' if got == want else 'bad'}'>{key}: {got}</span>")
        marks.append(f"<span class='{'ok' if video['one_blob'] else 'bad'}'>one blob</span>")
        held = " class='held'" if video["prompt"] in holdout else ""
        cards.append(f"<figure><img{held} src='{_gif(folder / video['video'])}' alt='{html.escape(video['prompt'])}'>"
                     f"<figcaption><b>{html.escape(video['prompt'])}</b> (seed {video['seed']})<br>"
                     f"{'<br>'.join(marks)}</figcaption></figure>")
    return "<div class='grid'>" + "".join(cards) + "</div>"


def _loss_svg(metrics: Path, title: str, width: int = 520, height: int = 200) -> str:
    """The loss curve (a running mean over 1% of the run), log scale, as inline SVG."""
    if not metrics.is_file():
        return f"<p>{html.escape(title)}: no metrics.jsonl</p>"
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps = np.array([r["step"] for r in rows], dtype=float)
    loss = np.array([r["loss"] for r in rows], dtype=float)
    if len(loss) < 2:
        return f"<p>{html.escape(title)}: too few steps</p>"
    window = max(1, len(loss) // 100)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    steps = steps[window - 1:]
    y = np.log10(np.clip(smooth, 1e-8, None))
    lo, hi = float(y.min()), float(y.max()) if y.max() > y.min() else float(y.min()) + 1
    xs = 40 + (steps - steps[0]) / max(1.0, steps[-1] - steps[0]) * (width - 50)
    ys = 10 + (hi - y) / (hi - lo) * (height - 40)
    points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(xs, ys))
    return (f"<svg width='{width}' height='{height}' xmlns='http://www.w3.org/2000/svg'>"
            f"<text x='40' y='{height - 8}' font-size='11'>{html.escape(title)}: step {int(steps[0])} to "
            f"{int(steps[-1])}; loss {10 ** hi:.3g} to {10 ** lo:.3g} (log scale)</text>"
            f"<polyline fill='none' stroke='#4c72b0' stroke-width='1.5' points='{points}'/></svg>")


def write_report(out: Path, summary: dict[str, Any], videos: list[dict[str, Any]]) -> Path:
    holdout = set(summary["config"]["world"]["holdout"])
    curation = summary["curation"]
    kinds = "".join(f"<tr><td>{html.escape(k)}</td><td>{v['rows']}</td><td>{v['kept']}</td>"
                    f"<td>{html.escape(', '.join(f'{r}: {n}' for r, n in v.items() if r not in ('rows', 'kept')))}</td></tr>"
                    for k, v in sorted(curation["by_kind"].items()))
    stages = "".join(f"<tr><td>{html.escape(k)}</td><td>{v / 60:.1f}</td></tr>"
                     for k, v in summary["stage_seconds"].items())
    vae = summary["vae_reconstructions"]
    page = f"""<!doctype html><html><head><meta charset='utf-8'><title>toy world: {html.escape(out.name)}</title>
<style>{STYLE}</style></head><body>
<h1>Toy world run: {html.escape(str(out))}</h1>
<p>{summary['total_minutes']} minutes in all. Samples: {len(summary['config']['seeds'])} seeds for each of the
32 captions; held-out captions (never generated for training) are outlined.</p>
<h2>Checker</h2>{_figures_table(summary['figures'], summary['targets'])}
<p>VAE reconstructions of {vae.get('videos', 0)} curated shots (PSNR {vae.get('psnr', math.nan):.1f} dB), read by the same checker: colour
{vae.get('colour', math.nan):.2f}, direction {vae.get('direction', math.nan):.2f}, shape
{vae.get('shape', math.nan):.2f}, one blob {vae.get('one_blob', math.nan):.2f} (the best the DiT can reach).</p>
<h2>Samples</h2>{_sample_grid(out / 'samples', videos, holdout)}
<h2>Curation</h2><table><tr><th>planted kind</th><th>segments</th><th>kept</th><th>rejected by reason</th></tr>{kinds}</table>
<h2>Training</h2>{_loss_svg(out / 'vae' / 'metrics.jsonl', 'WF-VAE')}<br>{_loss_svg(out / 'dit' / 'metrics.jsonl', 'DiT')}
<h2>Stages</h2><table><tr><th>stage</th><th>minutes</th></tr>{stages}</table>
</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path
