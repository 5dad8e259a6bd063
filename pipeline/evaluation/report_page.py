"""The results page (`report` stage): one self-contained offline HTML file, data/reports/index.html.

Everything a reader wants after `dvc repro`, in one file that opens anywhere without a server or the network:
Table 1 and Table 2 (from their markdown), the judges' own ceilings, the emotion ceiling, the pre-training and
generalisation numbers, the sheets and loss curves (PNG, embedded as data URIs), the side-by-side videos (mp4,
embedded, playable in place), the run's params and the machine it ran on. Missing inputs are named on the page,
never fatal: a partial run still gets a page. Stage wall times come from the `*.timings.json` files beside the
outputs (not DVC-tracked: they differ on every run) and the params from params.yaml, both read as they are when
the page is built: the stage declares neither, so run-only knobs (threads, workers, log_every) rebuild nothing,
while any param that changes an output changes a report the page depends on, which rebuilds it.

A small script in the page counts images and videos that failed to load into `data-broken` on <body>, so a
headless browser can check that every reference resolves (tests/test_report_page.py).
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.core.store import write_text
from pipeline.core.timings import SUFFIX as TIMINGS_SUFFIX

MIME = {".png": "image/png", ".jpg": "image/jpeg", ".mp4": "video/mp4"}

# (section title, report file, what it shows); markdown tables, then pictures, then videos
TABLES = (("Table 1: held-out actors", "table1.md"), ("Table 2: Motion Reconstruction ablations", "table2.md"))
PICTURES = (
    ("Fig. 6-style sheet", "fig6_sheet.png"), ("Emotions, heard from the voice", "emotions_sheet.png"),
    ("Emotions, told", "emotions_sheet_told.png"), ("The renderer's emotion ceiling", "emotion_ceiling.png"),
    ("Judges: emotion confusion on real held-out clips", "evaluator_confusion.png"),
    ("Table 1 confusion per row", "confusion.png"), ("FOMM on held-out actors", "fomm_heldout.png"),
    ("Pseudo labels: sync confidence", "sync_filter_hist.png"), ("The MEAD-shaped corpus", "corpus_sheet.png"),
    ("The wide pre-training set", "wide_sheet.png"), ("Audio emotion encoder", "audio_confusion.png"),
)
VIDEOS = (("Side by side, with sound", "side_by_side.mp4"), ("FOMM reconstruction, held-out", "fomm_heldout.mp4"))
# (report, key path, label): the numbers the issues measure the product by
NUMBERS = (
    ("evaluator.json", "emotion_clip_accuracy", "judge: emotion accuracy on real held-out clips"),
    ("evaluator.json", "reference_judged_neutral", "judge: neutral photo judged neutral"),
    ("evaluator.json", "landmark_error_px", "judge: landmark error on real held-out frames (px)"),
    ("pretrain_mouth.json", "heldout.ratio_to_mean_predictor", "Audio2Mouth pre-training: held-out mouth error / mean's"),
    ("memory.json", "heldout.mouth_err", "Audio2Mouth: held-out mouth error"),
    ("memory.json", "heldout.mouth_err_mean_predictor", "... the mean predictor's"),
    ("memory.json", "heldout.motion_ratio", "held-out lip motion / real"),
    ("memory.json", "heldout.head_motion_ratio", "held-out head motion / real"),
    ("memory.json", "wide_heldout.mouth_err", "wide set held-out (unseen faces, voices, sentences): mouth error"),
    ("memory.json", "wide_heldout.motion_ratio", "wide set held-out: lip motion / real"),
    ("pseudo_pairs.json", "kept_fraction", "pseudo labels kept by sync_filter"),
    ("pseudo_pairs.json", "confidence_mean", "re-dub sync confidence"),
    ("pseudo_pairs.json", "confidence_original_mean", "... the original mouths'"),
    ("fomm.json", "heldout.psnr", "FOMM held-out PSNR (dB)"),
    ("emotion_ceiling.json", "real.emotion_acc", "emotion ceiling: real frames"),
    ("emotion_ceiling.json", "emmn.emotion_acc", "emotion ceiling: EMMN frames"),
)
STYLE = """body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}img,video{max-width:100%;border:1px solid #ddd}
pre{background:#f6f6f6;padding:.8em;overflow:auto;font-size:12px}.missing{color:#a00}h2{margin-top:1.6em}"""
CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var broken = 0;
  document.querySelectorAll('img').forEach(function (i) { if (!i.complete || i.naturalWidth === 0) broken++; });
  document.querySelectorAll('video').forEach(function (v) { if (v.error) broken++; });
  document.body.dataset.broken = String(broken);
  document.body.dataset.images = String(document.images.length);
  document.body.dataset.videos = String(document.querySelectorAll('video').length);
});
</script>"""


def data_uri(path: Path) -> str:
    return f"data:{MIME[path.suffix.lower()]};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def markdown_to_html(text: str) -> str:
    """The markdown the pipeline writes (headings, pipe tables, bullet lists, paragraphs) as HTML; bold kept."""
    def inline(s: str) -> str:
        return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(s.strip()))

    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c for c in lines[i].strip().strip("|").split("|")]
                if not all(re.fullmatch(r"\s*:?-+:?\s*", c) for c in cells):
                    rows.append(cells)
                i += 1
            head, *body = rows
            out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</table>")
            continue
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 4)
            out.append(f"<h{level}>{inline(line.lstrip('#'))}</h{level}>")
        elif line.lstrip().startswith(("- ", "* ")):
            items = []
            while i < len(lines) and lines[i].lstrip().startswith(("- ", "* ")):
                items.append(f"<li>{inline(lines[i].lstrip()[2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
        i += 1
    return "\n".join(out)


def lookup(data: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def stage_times(root: Path) -> list[tuple[str, float, str]]:
    """(output, seconds, machine) of every `*.timings.json` under `root`, sorted by output."""
    rows = []
    for path in sorted(root.rglob(f"*{TIMINGS_SUFFIX}")):
        data = read_json(path)
        seconds = next((data[k] for k in ("seconds", "train_seconds", "total_seconds") if k in data), None)
        if isinstance(seconds, (int, float)):
            found = data.get("machine") if isinstance(data.get("machine"), dict) else {}
            machine = ", ".join(f"{k} {v}" for k, v in found.items())
            rows.append((str(path.relative_to(root))[: -len(TIMINGS_SUFFIX)], float(seconds), machine))
    return rows


def build_page(reports: Path, params_text: str, *, data_root: Path | None = None, embed_videos: bool = True,
               title: str = "EMMN pipeline: results of this run") -> tuple[str, dict[str, Any]]:
    """The HTML text and a summary (what was embedded, what was missing)."""
    reports = Path(reports)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style>{CHECK_SCRIPT}</head><body>", f"<h1>{html.escape(title)}</h1>"]
    summary: dict[str, Any] = {"tables": [], "images": [], "videos": [], "missing": []}

    def missing(name: str) -> None:
        summary["missing"].append(name)
        parts.append(f"<p class='missing'>{html.escape(name)}: not produced by this run.</p>")

    parts.append("<h2>Key numbers</h2><table><tr><th>what</th><th>value</th><th>from</th></tr>")
    loaded = {name: read_json(reports / name) for name in {report for report, _, _ in NUMBERS}}
    for report, key, label in NUMBERS:
        value = lookup(loaded[report], key)
        shown = "n/a" if value is None else f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))
        parts.append(f"<tr><td>{html.escape(label)}</td><td>{shown}</td><td>{report} {key}</td></tr>")
    parts.append("</table>")
    for heading, name in TABLES:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        path = reports / name
        if path.is_file():
            parts.append(markdown_to_html(path.read_text()))
            summary["tables"].append(name)
        else:
            missing(name)
    for heading, name in VIDEOS:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        path = reports / name
        if path.is_file() and embed_videos:
            parts.append(f"<video controls preload='auto' src='{data_uri(path)}'></video>")
            summary["videos"].append(name)
        elif path.is_file():
            parts.append(f"<p>{html.escape(name)} (not embedded: report.embed_videos is off)</p>")
        else:
            missing(name)
    for heading, name in PICTURES:
        path = reports / name
        if path.is_file():
            parts.append(f"<h2>{html.escape(heading)}</h2><img alt='{html.escape(name)}' src='{data_uri(path)}'>")
            summary["images"].append(name)
    curves = sorted(reports.glob("*_losses.png"))
    if curves:
        parts.append("<h2>Loss curves</h2>")
        for path in curves:
            parts.append(f"<h3>{html.escape(path.stem)}</h3><img alt='{path.name}' src='{data_uri(path)}'>")
            summary["images"].append(path.name)
    times = stage_times(Path(data_root)) if data_root is not None else []
    parts.append("<h2>Stage times and machine</h2>")
    if times:
        parts.append("<p>Wall seconds of each stage's last run on this machine (from *.timings.json, which DVC "
                     "does not track), as they were when this page was built.</p><table><tr><th>output</th>"
                     "<th>seconds</th><th>machine</th></tr>" + "".join(
                         f"<tr><td>{html.escape(o)}</td><td>{s:.0f}</td><td>{html.escape(m)}</td></tr>"
                         for o, s, m in times) + "</table>")
    else:
        parts.append("<p>No stage timings found.</p>")
    parts.append(f"<h2>Parameters of this run (params.yaml)</h2><pre>{html.escape(params_text)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts), summary


def run_report(reports: Path, params: Path, out: Path, *, data_root: Path | None = None,
               embed_videos: bool = True) -> dict[str, Any]:
    """Write the page to `out`; return its summary."""
    text, summary = build_page(Path(reports), Path(params).read_text(), data_root=data_root,
                               embed_videos=embed_videos)
    write_text(Path(out), text)
    summary["bytes"] = len(text.encode())
    return summary


def broken_references(page: str, base: Path) -> list[str]:
    """src= references of a page that are neither data URIs nor existing files beside it."""
    refs = re.findall(r"src='([^']+)'", page) + re.findall(r'src="([^"]+)"', page)
    return [r for r in refs if not r.startswith("data:") and not (Path(base) / r).is_file()]


__all__: Sequence[str] = ("broken_references", "build_page", "markdown_to_html", "run_report", "stage_times")
