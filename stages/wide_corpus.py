"""`wide_corpus` stage: the wide LRW/LRS2-shaped pre-training set (built-in, or a real LRW tree), into data/wide.

    python -m stages.wide_corpus                 # what dvc repro runs
    emmn wide_corpus --params params.yaml --out data/wide
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.config import load_section
from pipeline.corpus.wide import run_wide_corpus
from stages.common import ParamsOption, one_line_errors, stage_app

app = stage_app()


@app.command()
@one_line_errors
def wide_corpus(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="wide set folder to (re)write")] = Path("data/wide"),
    sheet: Annotated[Path, typer.Option(help="identity sheet PNG")] = Path("data/reports/wide_sheet.png"),
    report: Annotated[Path, typer.Option(help="summary and coverage JSON")] = Path("data/reports/wide.json"),
) -> None:
    """Build the wide pre-training set: many identities, voices and phrases (or LRW), in the corpus layout."""
    base, p = load_section("base", params), load_section("wide_corpus", params)
    summary = run_wide_corpus(out, sheet, report, base, p, params)
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "coverage"}))


if __name__ == "__main__":
    app()
