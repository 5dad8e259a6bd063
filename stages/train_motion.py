"""`train_motion` stage (paper §3.2, Eq. 1-5): Expression / Mouth Encoders and the Motion Decoder.

    python -m stages.train_motion                # what dvc repro runs
    emmn train_motion --params params.yaml
Reads data/features/keypoints.zarr (corpus + pseudo clips, neutral reference keypoints) and
data/pseudo/pairs.parquet, restricted by data/pseudo/sync.parquet to the quadruples whose two pseudo
clips sync_filter kept (`use_filter: false` = the paper's "w/o filter"; with `labels: counterfactual`
the filter decides which re-dub targets count next to the exact renders). Writes data/models/motion.pt
({model: {motion}, config, step, metrics, train_state}), the loss log data/reports/motion_losses.csv
(DVC plot, x = step). `resume: true` continues from an existing motion.pt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.config import load_section
from pipeline.motion.train import run_train_motion
from stages.common import ParamsOption, one_line_errors, run_ranks, stage_app

app = stage_app()


@app.command()
@one_line_errors
def train_motion(
    params: ParamsOption = Path("params.yaml"),
    keypoints: Annotated[Path, typer.Option(help="keypoint store (corpus + pseudo clips)")] = Path(
        "data/features/keypoints.zarr"),
    pseudo: Annotated[Path, typer.Option(help="pseudo_pairs folder (pairs.parquet, sync.parquet)")] = Path(
        "data/pseudo"),
    out: Annotated[Path, typer.Option(help="checkpoint to write")] = Path("data/models/motion.pt"),
    losses: Annotated[Path, typer.Option(help="loss log CSV (DVC plot)")] = Path("data/reports/motion_losses.csv"),
) -> None:
    """Train E_e, E_m, D_em (Eq. 1-5) on keypoints of the kept pseudo-pair quadruples."""
    base, p = load_section("base", params), load_section("train_motion", params)
    run_ranks(base.processes, "stages.train_motion")
    summary = run_train_motion(keypoints, pseudo, out, losses, base, p)
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "train_params"}))


if __name__ == "__main__":
    app()
