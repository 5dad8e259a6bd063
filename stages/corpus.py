"""`corpus` stage: the built-in MEAD-shaped corpus (default) or a real MEAD folder, into data/corpus.

    python -m stages.corpus                      # what dvc repro runs
    emmn corpus --params params.yaml --out data/corpus
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.config import load_section
from pipeline.corpus.build import run_corpus
from stages.common import ParamsOption, one_line_errors, stage_app

app = stage_app()


@app.command()
@one_line_errors
def corpus(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="corpus folder to (re)write")] = Path("data/corpus"),
    sheet: Annotated[Path, typer.Option(help="contact sheet PNG")] = Path("data/reports/corpus_sheet.png"),
    report: Annotated[Path, typer.Option(help="summary JSON")] = Path("data/reports/corpus.json"),
) -> None:
    """Build the corpus (built-in synthetic or MEAD ingest): frames Zarr, wavs, landmarks, manifest."""
    base, p = load_section("base", params), load_section("corpus", params)
    summary = run_corpus(out, sheet, report, base, p, params)
    typer.echo(json.dumps(summary))


if __name__ == "__main__":
    app()
