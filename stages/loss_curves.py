"""`loss_curves` stage: every training stage's loss log drawn as a PNG.

    python -m stages.loss_curves data/reports/fomm_losses.csv ...   # what dvc repro runs (dvc.yaml lists the logs)
    emmn loss_curves data/reports/*_losses.csv
Writes `<log stem>.png` beside each CSV (or in --out-dir). The trainers write only their CSV logs (also DVC plots:
`dvc plots show`), so restyling a plot (pipeline/training/curves.py) re-runs this cheap stage and no training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.training.curves import draw_loss_curves
from stages.common import one_line_errors, stage_app

app = stage_app()


@app.command()
@one_line_errors
def loss_curves(
    logs: Annotated[list[Path], typer.Argument(help="loss log CSVs (step, one column per loss term)")],
    out_dir: Annotated[Path | None, typer.Option(help="folder for the PNGs (default: beside each CSV)")] = None,
) -> None:
    """Draw each loss log as `<stem>.png` (log10 y axis, one colour per term)."""
    for png in draw_loss_curves(list(logs), out_dir):
        typer.echo(str(png))


if __name__ == "__main__":
    app()
