"""`train_evaluator` stage: the judges `evaluate` scores generated clips with.

    python -m stages.train_evaluator             # what dvc repro runs
    emmn train-evaluator --params params.yaml
Trains, on the real clips of the TRAIN actors only, an emotion classifier (single frames) and a
68-point landmark regressor (pipeline/judges/train.py), then measures both on the held-out actors'
real clips: the classifier's clip accuracy there is the ceiling of the emotion-accuracy column, the
regressor's error against the exact landmarks the floor of the LMD columns. Writes
data/models/evaluator.pt, data/reports/evaluator.json, the loss log data/reports/evaluator_losses.csv
and the held-out confusion matrix data/reports/evaluator_confusion.png.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.config import BaseParams, TrainEvaluatorParams, load_section
from pipeline.core.store import write_json
from pipeline.judges.train import train_evaluator_models
from stages.common import (
    ParamsOption,
    WideOption,
    one_line_errors,
    run_ranks,
    stage_app,
)

app = stage_app()


def run_train_evaluator(corpus_dir: Path, model_out: Path, report: Path, losses_csv: Path, confusion_png: Path,
                        base: BaseParams, p: TrainEvaluatorParams, wide: Path | None = None) -> dict:
    """Train and measure both judges; write the checkpoint, the report, the loss log and the confusion PNG."""
    metrics = train_evaluator_models(corpus_dir, model_out, losses_csv, confusion_png, base, p, wide=wide)
    write_json(report, metrics)
    return metrics


@app.command()
@one_line_errors
def train_evaluator(
    params: ParamsOption = Path("params.yaml"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    wide: WideOption = Path("data/wide"),
    out: Annotated[Path, typer.Option(help="checkpoint to write")] = Path("data/models/evaluator.pt"),
    report: Annotated[Path, typer.Option(help="held-out metrics JSON")] = Path("data/reports/evaluator.json"),
    losses: Annotated[Path, typer.Option(help="loss log CSV (DVC plot)")] = Path("data/reports/evaluator_losses.csv"),
    confusion: Annotated[Path, typer.Option(help="held-out confusion matrix PNG")] = Path(
        "data/reports/evaluator_confusion.png"),
) -> None:
    """Train the emotion classifier and landmark regressor that score generated clips; held-out ceiling/floor."""
    base, p = load_section("base", params), load_section("train_evaluator", params)
    run_ranks(base.processes, "stages.train_evaluator")
    metrics = run_train_evaluator(corpus, out, report, losses, confusion, base, p, wide=wide)
    typer.echo(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}))


if __name__ == "__main__":
    app()
