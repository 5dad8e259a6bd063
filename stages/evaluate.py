"""`evaluate` stage (paper §4, Table 1): every generated row scored against the held-out ground truth.

    python -m stages.evaluate                    # what dvc repro runs
    emmn evaluate --params params.yaml
Reads data/outputs/frames.zarr (clip ids `<row>/<corpus clip id>`, see pipeline/evaluation/evaluate.py), the corpus
(ground-truth frames, exact landmarks, wavs), the judges data/models/evaluator.pt (train_evaluator) and
the sync scorer data/models/sync_scorer.pt (or `evaluate.sync_weights`, e.g. the official
syncnet_v2.model). Writes data/reports/metrics.json (one object per row: psnr, ssim, m_lmd, f_lmd,
sync_conf, lse_d, emotion_acc), data/reports/table1.md, the per-clip scores
data/reports/metrics_clips.csv and one emotion confusion matrix per row, side by side, in
data/reports/confusion.png. Rows the outputs store lacks are left out and named in the table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.config import load_section
from pipeline.core.errors import InputError
from pipeline.evaluation.evaluate import run_evaluate
from stages.common import ParamsOption, one_line_errors, stage_app

app = stage_app()


@app.command()
@one_line_errors
def evaluate(
    params: ParamsOption = Path("params.yaml"),
    outputs: Annotated[Path, typer.Option(help="generated frames store")] = Path("data/outputs/frames.zarr"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    evaluator: Annotated[Path, typer.Option(help="the judges (train_evaluator)")] = Path("data/models/evaluator.pt"),
    scorer: Annotated[Path, typer.Option(help="sync scorer when evaluate.sync_weights is unset")] = Path(
        "data/models/sync_scorer.pt"),
    metrics: Annotated[Path, typer.Option(help="Table 1 rows JSON")] = Path("data/reports/metrics.json"),
    table: Annotated[Path, typer.Option(help="Table 1 markdown")] = Path("data/reports/table1.md"),
    clips: Annotated[Path, typer.Option(help="per-clip scores CSV")] = Path("data/reports/metrics_clips.csv"),
    confusion: Annotated[Path, typer.Option(help="emotion confusion matrices PNG")] = Path(
        "data/reports/confusion.png"),
) -> None:
    """Score every generated row against the held-out ground truth: metrics.json, table1.md, confusion PNG."""
    base, p = load_section("base", params), load_section("evaluate", params)
    if not Path(outputs).exists():
        raise InputError(outputs, "generated outputs not found (run generate first)")
    weights = Path(p.sync_weights) if p.sync_weights else scorer
    rows = run_evaluate(outputs, corpus, evaluator, weights, metrics, table, clips, confusion, base, p)
    typer.echo(json.dumps(rows))


if __name__ == "__main__":
    app()
