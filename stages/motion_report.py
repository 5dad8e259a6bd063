"""`motion_report` stage: data/reports/motion.json, Motion Reconstruction measured on the corpus's labels.

    python -m stages.motion_report               # what dvc repro runs
    emmn motion_report --params params.yaml
Reads data/models/motion.pt, data/features/keypoints.zarr, data/features/motion.zarr (the f_e / f_m
decompose wrote: the probes measure the features later stages consume), the corpus (manifest,
per-frame render controls) and data/pseudo/ (pairs, sync, clips). A stage of its own so that
decompose's outputs depend on nothing but the model and the keypoints. What each number means:
pipeline/motion/report.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.config import load_section
from pipeline.motion.report import run_motion_report
from stages.common import ParamsOption, one_line_errors, stage_app

app = stage_app()


@app.command()
@one_line_errors
def motion_report(
    params: ParamsOption = Path("params.yaml"),
    model: Annotated[Path, typer.Option(help="motion.pt from train_motion")] = Path("data/models/motion.pt"),
    keypoints: Annotated[Path, typer.Option(help="keypoint store")] = Path("data/features/keypoints.zarr"),
    features: Annotated[Path, typer.Option(help="motion.zarr from decompose")] = Path("data/features/motion.zarr"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    pseudo: Annotated[Path, typer.Option(help="pseudo_pairs folder")] = Path("data/pseudo"),
    report: Annotated[Path, typer.Option(help="report JSON")] = Path("data/reports/motion.json"),
) -> None:
    """Self / cross reconstruction errors and linear probes of f_e, f_m into data/reports/motion.json."""
    p = load_section("motion_report", params)
    summary = run_motion_report(model, keypoints, features, corpus, pseudo, report, p)
    typer.echo(json.dumps({k: summary[k] for k in ("recon", "probe")}))


if __name__ == "__main__":
    app()
