"""`train_fomm` stage: self-supervised FOMM on the corpus's training frames, or an official import.

    python -m stages.train_fomm                  # what dvc repro runs
    emmn train_fomm --params params.yaml
Writes data/models/fomm.pt ({model: {kp_detector, generator}, config, step, metrics}), the loss log
data/reports/fomm_losses.csv (DVC plot, x = step). `train_fomm.resume: true`
continues from an existing fomm.pt; `train_fomm.pretrained: <vox-cpk.pth.tar>` imports instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.config import BaseParams, TrainFommParams, load_section
from pipeline.fomm.train import train_fomm_model
from stages.common import (
    ParamsOption,
    WideOption,
    one_line_errors,
    run_ranks,
    stage_app,
)

app = stage_app()


def run_train_fomm(corpus_dir: Path, model_out: Path, losses_csv: Path, base: BaseParams,
                   p: TrainFommParams, wide: Path | None = None) -> dict:
    """Train (or import) FOMM; return the checkpoint's metrics."""
    return train_fomm_model(corpus_dir, model_out, losses_csv, base, p, wide=wide)


@app.command()
@one_line_errors
def train_fomm(
    params: ParamsOption = Path("params.yaml"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    wide: WideOption = Path("data/wide"),
    out: Annotated[Path, typer.Option(help="checkpoint to write")] = Path("data/models/fomm.pt"),
    losses: Annotated[Path, typer.Option(help="loss log CSV (DVC plot)")] = Path("data/reports/fomm_losses.csv"),
) -> None:
    """Train FOMM (keypoint detector + dense motion + generator) on corpus frames, or import official weights."""
    base, p = load_section("base", params), load_section("train_fomm", params)
    run_ranks(base.processes, "stages.train_fomm")
    summary = run_train_fomm(corpus, out, losses, base, p, wide=wide)
    typer.echo(json.dumps(summary))


if __name__ == "__main__":
    app()
