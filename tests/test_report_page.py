"""The results page (report stage): markdown tables to HTML, a self-contained page with every picture and video
embedded, and (where Debian's chromium is installed: .ci/run installs it) the page opened in headless Chromium:
the screenshot is not blank and every image and video loads."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.core.media import write_mp4
from pipeline.core.store import write_png
from pipeline.evaluation.report_page import broken_references, build_page, markdown_to_html, stage_times
from stages.cli import app

TABLE = """## Table 1 (held-out actors of the corpus)

| Method | PSNR ↑ | Emotion acc ↑ |
|---|---:|---:|
| Ground truth | n/a | 90.0% |
| EMMN | **20.10** | 70.0% |

Where EMMN does not win:
- PSNR: Baseline beats EMMN (20.20 vs 20.10).
"""


def test_markdown_tables_become_html_tables():
    page = markdown_to_html(TABLE)
    assert page.count("<table>") == 1 and page.count("<tr>") == 3  # header + 2 rows, the --- line dropped
    assert "<th>PSNR ↑</th>" in page and "<td><b>20.10</b></td>" in page
    assert "<h3>Table 1 (held-out actors of the corpus)</h3>" in page
    assert "<ul><li>PSNR: Baseline beats EMMN (20.20 vs 20.10).</li></ul>" in page
    assert "<script" not in markdown_to_html("| <script>x</script> |\n|---|\n| a |")  # escaped


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    reports = root / "reports"
    reports.mkdir()
    (reports / "table1.md").write_text(TABLE)
    gradient = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (48, 1, 3))
    write_png(reports / "fig6_sheet.png", gradient)
    write_png(reports / "memory_losses.png", 255 - gradient)
    frames = np.stack([np.roll(gradient, 4 * t, axis=1) for t in range(12)])
    write_mp4(reports / "side_by_side.mp4", frames, 25.0)
    (reports / "memory.json").write_text(json.dumps({"heldout": {"motion_ratio": 0.61234, "mouth_err": 0.5}}))
    (root / "models").mkdir()
    (root / "models" / "emmn.pt.timings.json").write_text(json.dumps(
        {"train_seconds": 123.4, "machine": {"cpu": "AVX2", "torch_threads": 2}}))
    (root / "params.yaml").write_text("base:\n  seed: 1234\n")
    return root


def test_page_embeds_everything_and_names_what_is_missing(reports):
    page, summary = build_page(reports / "reports", (reports / "params.yaml").read_text(), data_root=reports)
    assert summary["tables"] == ["table1.md"] and summary["videos"] == ["side_by_side.mp4"]
    assert set(summary["images"]) == {"fig6_sheet.png", "memory_losses.png"}
    assert "table2.md" in summary["missing"] and "fomm_heldout.mp4" in summary["missing"]
    assert broken_references(page, reports / "reports") == []  # everything inside: opens anywhere, offline
    assert page.count("src='data:image/png;base64,") == 2 and page.count("src='data:video/mp4;base64,") == 1
    assert "0.6123" in page and "seed: 1234" in page  # key numbers and the params of the run
    assert stage_times(reports) == [("models/emmn.pt", 123.4, "cpu AVX2, torch_threads 2")]
    assert broken_references("<img src='gone.png'><img src='data:x'>", reports) == ["gone.png"]


def test_stage_writes_the_page(reports, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("report:\n  embed_videos: false\n")
    result = CliRunner().invoke(app, ["report", "--params", str(params), "--reports", str(reports / "reports"),
                                      "--data", str(reports), "--out", str(tmp_path / "index.html")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["videos"] == [] and "data:video" not in (tmp_path / "index.html").read_text()


def chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("EMMN_REQUIRE_BROWSER"):
        pytest.fail("EMMN_REQUIRE_BROWSER is set but Debian's chromium is not installed (apt-get install chromium)")
    return found


def open_in_chromium(page: Path, out: Path) -> tuple[str, np.ndarray]:
    """The DOM after load (the page's own check script has run) and a screenshot."""
    browser = chromium()
    if browser is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
             "--virtual-time-budget=10000", f"--user-data-dir={out / 'profile'}"]
    url = page.resolve().as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    shot = out / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,1600", url], capture_output=True,
                   timeout=120)
    image = cv2.imread(str(shot))
    assert image is not None, "chromium wrote no screenshot"
    return dom, image


def test_page_opens_in_headless_chromium(reports, tmp_path):
    page, _ = build_page(reports / "reports", (reports / "params.yaml").read_text(), data_root=reports)
    (tmp_path / "index.html").write_text(page)
    dom, shot = open_in_chromium(tmp_path / "index.html", tmp_path)
    body = re.search(r"<body([^>]*)>", dom)
    assert body is not None, dom[:500]
    attrs = dict(re.findall(r'data-(\w+)="(\d+)"', body.group(1)))
    assert attrs == {"broken": "0", "images": "2", "videos": "1"}, body.group(1)
    assert shot.std() > 10  # not a blank page
