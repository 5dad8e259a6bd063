"""`corpus` stage: the built-in MEAD-shaped corpus (default) or a real MEAD folder, into data/corpus.

    python -m stages.corpus                      # what dvc repro runs
    emmn corpus --params params.yaml --out data/corpus
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.config import load_section
from pipeline.core.store import write_json
from pipeline.core.timings import write_timings
from pipeline.corpus.build import build_corpus
from pipeline.corpus.sheet import corpus_contact_sheet
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
    t0 = time.monotonic()
    summary = build_corpus(out, base, p, params)
    write_timings(out, {"seconds": round(time.monotonic() - t0, 1)})  # not in the report: DVC tracks it
    corpus_contact_sheet(out, sheet)
    write_json(report, summary)
    typer.echo(json.dumps(summary))


if __name__ == "__main__":
    app()
