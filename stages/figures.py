"""`figures` stage (issue 8, item 4): the paper's pictures from the generated outputs.

    python -m stages.figures                     # what dvc repro runs (after generate, beside evaluate)
    emmn figures --params params.yaml
Reads data/outputs/frames.zarr (clip ids `<row>/<corpus clip id>`) and the corpus (manifest, neutral reference
frames, landmarks, wavs). Writes data/reports/fig6_sheet.png (rows Baseline / MMN / EMMN / GT x the emotions,
one held-out actor and sentence; Fig. 6 of the paper) and data/reports/side_by_side.mp4 (reference | GT |
Wav2Lip-only | EMMN, one clip per emotion with its audio). Rows the outputs lack are skipped and named.
See pipeline/evaluation/figures.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.config import load_section
from pipeline.evaluation.figures import run_figures
from stages.common import ParamsOption, one_line_errors, stage_app

app = stage_app()


@app.command()
@one_line_errors
def figures(
    params: ParamsOption = Path("params.yaml"),
    outputs: Annotated[Path, typer.Option(help="generated frames store")] = Path("data/outputs/frames.zarr"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    sheet: Annotated[Path, typer.Option(help="Fig. 6-style PNG")] = Path("data/reports/fig6_sheet.png"),
    video: Annotated[Path, typer.Option(help="side-by-side mp4")] = Path("data/reports/side_by_side.mp4"),
) -> None:
    """Fig. 6-style sheet (rows x emotions) and a side-by-side mp4 with audio from the generated outputs."""
    base, p = load_section("base", params), load_section("figures", params)
    summary = run_figures(outputs, corpus, sheet, video, base, p)
    typer.echo(json.dumps({"sheet_rows": summary["sheet"]["rows"], "skipped_rows": summary["sheet"]["skipped_rows"],
                           "video_columns": summary["video"]["columns"], "emotions": summary["sheet"]["emotions"]}))


if __name__ == "__main__":
    app()
