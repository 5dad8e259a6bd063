"""`report` stage: the results page, one self-contained offline HTML file (pipeline.evaluation.report_page).

    python -m stages.report                 # what dvc repro runs, last
    emmn report --out /tmp/index.html
Reads the reports of data/reports/ (tables, sheets, loss curves, videos, JSON numbers), params.yaml and the
stage timings beside the outputs under data/; writes data/reports/index.html with every picture and video
embedded (opens offline, anywhere).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.config import load_section
from pipeline.evaluation.report_page import run_report
from stages.common import ParamsOption, one_line_errors, stage_app

app = stage_app()


@app.command()
@one_line_errors
def report(
    params: ParamsOption = Path("params.yaml"),
    reports: Annotated[Path, typer.Option(help="folder of the reports the page shows")] = Path("data/reports"),
    data: Annotated[Path, typer.Option(help="folder searched for the stages' *.timings.json")] = Path("data"),
    out: Annotated[Path, typer.Option(help="the HTML page to write")] = Path("data/reports/index.html"),
) -> None:
    """Write the self-contained results page (tables, numbers, sheets, videos, loss curves, params, timings)."""
    p = load_section("report", params)
    summary = run_report(reports, params, out, data_root=data, embed_videos=p.embed_videos)
    typer.echo(json.dumps({k: summary[k] for k in ("tables", "videos", "missing", "bytes")}))


if __name__ == "__main__":
    app()
