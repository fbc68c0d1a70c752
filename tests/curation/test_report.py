"""report.html: self-contained (every image inlined), funnel and thumbnails per reason; renders in Chromium."""

import base64
import io
import json
import re
import shutil
import subprocess

import pytest
from PIL import Image

from soraplan.curation.analyze import AnalyzeConfig, ClipAnalyzer
from soraplan.core.inputs import InputClip
from soraplan.curation.pipeline import CurateConfig
from soraplan.core.schema import rows_to_table, write_table_atomic
from soraplan.curation.summary import summarize


@pytest.fixture(scope="module")
def curated(media, tmp_path_factory):
    """A curation output written without Ray: kept, too_short, static and subtitled segments."""
    out = tmp_path_factory.mktemp("curated")
    cfg = CurateConfig(input="unused", out=str(out), analyze=AnalyzeConfig())
    analyzer = ClipAnalyzer(cfg.analyze)
    rows = []
    for name in ("short_shot", "static", "subtitled"):
        rows.extend(analyzer.analyze(InputClip(source_id=name, path=str(media[name]))))
    rows.extend(analyzer.analyze(InputClip(source_id="gone", path=str(out / "missing.mp4"))))
    write_table_atomic(rows_to_table(rows), out / "clips" / "part-0.parquet")
    summary = summarize(out, cfg, inputs=4, duplicates=0, wall_s=1.0)
    (out / "summary.json").write_text(json.dumps(summary))
    return out


def data_uris(page: str) -> list[str]:
    return re.findall(r'src="(data:image/png;base64,[^"]+)"', page)


def test_report_is_self_contained_with_thumbnails_per_reason(curated, curate):
    assert curate("report", curated) == 0
    page = (curated / "report.html").read_text()
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing fetched: no CDN, no files
    for title in ("kept", "rejected: too_short", "rejected: static", "rejected: subtitles"):
        assert f"<h3>{title} (" in page
    for stage in ("cuts", "motion", "ocr", "aesthetic"):
        assert f"<td>{stage}</td>" in page
    uris = data_uris(page)
    histograms = page.count('alt="histogram"')
    assert histograms == 2  # motion (flow) and text area; no aesthetic scores in this run
    assert len(uris) >= histograms + 4
    for uri in uris:
        image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert image.width > 50 and image.height > 50
    thumbnail = Image.open(io.BytesIO(base64.b64decode(uris[-1].split(",", 1)[1])))
    assert thumbnail.width > 2 * thumbnail.height  # three frames side by side


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.heavy
@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_report_images_render_in_headless_chromium(curated, tmp_path, curate):
    page = tmp_path / "report.html"
    assert curate("report", curated, "--to", page) == 0
    # Once loaded, list every image's decoded width into the DOM, which --dump-dom prints.
    probe = ("<script>window.addEventListener('load', () => { const p = document.createElement('pre');"
             " p.id = 'widths'; p.textContent = JSON.stringify([...document.images].map(i => i.naturalWidth));"
             " document.body.appendChild(p); });</script>")
    page.write_text(page.read_text().replace("</body>", probe + "</body>"))
    dom = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True).stdout
    widths = json.loads(re.search(r'<pre id="widths">(.*?)</pre>', dom).group(1))
    assert len(widths) == len(data_uris(page.read_text())) and all(w > 50 for w in widths)


def test_report_streams_the_shards_and_shows_the_same_clips_however_they_are_split(curated, tmp_path, monkeypatch):
    """The page reads the shards in batches (here of 2 rows) and picks its clips by a seeded hash
    of the clip id, so the same rows in other files, in another order, give the same page; the
    histograms count every scored row."""
    from soraplan.core.schema import read_clip_table
    from soraplan.curation import report

    table = read_clip_table(curated)
    split = tmp_path / "split"
    (split / "clips").mkdir(parents=True)
    shutil.copy(curated / "summary.json", split / "summary.json")
    reordered = table.take(list(reversed(range(table.num_rows))))
    write_table_atomic(reordered.slice(0, 3), split / "clips" / "part-1.parquet")
    write_table_atomic(reordered.slice(3), split / "clips" / "part-0.parquet")
    monkeypatch.setattr(report, "BATCH_ROWS", 2)
    pages = [report.write_report(folder, to=tmp_path / f"{folder.name}.html", per_reason=1).read_text()
             for folder in (curated, split)]

    def shown(page: str) -> list[str]:
        return re.findall(r"<h3>.*?</h3>|<figcaption>.*?</figcaption>", page)

    assert shown(pages[0]) == shown(pages[1]) and len(shown(pages[0])) >= 8
    assert re.search(r"\(\d+ segments, 1 shown\)", pages[0])

    drawn = {}
    monkeypatch.setattr(report, "_histogram", lambda counts, edges, title, thresholds: drawn.setdefault(
        title, int(counts.sum())))
    report.write_report(split, to=tmp_path / "counted.html")
    rows = table.to_pylist()
    assert drawn == {"motion (flow)": sum(r["motion_score"] is not None for r in rows),
                     "text area ratio": sum(r["ocr_area_ratio"] is not None for r in rows)}
