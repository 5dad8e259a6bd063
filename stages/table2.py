"""`table2` stage (paper Table 2): the Motion Reconstruction ablations, retrained and rendered on held-out actors.

    python -m stages.table2                      # what dvc repro runs
    emmn table2 --params params.yaml
Trains full, w/o L_rec, w/o L_self, w/o L_e/m-con and w/o filter (pipeline/motion/ablation.py: one
train_motion switch off each, `table2.steps` steps, every other hyperparameter from train_motion), then
renders each row's self-reconstructions of held-out frames through the renderer (data/models/emmn_render.pt,
else data/models/fomm.pt) next to the target's own E_k keypoints rendered (the renderer's ceiling), and
scores them against the real frames (pipeline/evaluation/table2.py says exactly how). Writes data/reports/table2.json
(one object per row: psnr, ssim, m_lmd, f_lmd, kp_error, kp_error_px, steps, clips, frames),
data/reports/table2.md, and data/ablations/motion/ (per row: motion.pt, losses.csv, motion.json;
clips.csv with every clip's scores; sheet.png).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.config import load_section
from pipeline.evaluation.table2 import run_table2
from stages.common import ParamsOption, one_line_errors, stage_app

app = stage_app()


@app.command()
@one_line_errors
def table2(
    params: ParamsOption = Path("params.yaml"),
    keypoints: Annotated[Path, typer.Option(help="keypoint store (corpus + pseudo clips)")] = Path(
        "data/features/keypoints.zarr"),
    pseudo: Annotated[Path, typer.Option(help="pseudo_pairs folder (pairs, sync, clips)")] = Path("data/pseudo"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    renderer: Annotated[Path, typer.Option(help="renderer (fomm.pt layout)")] = Path("data/models/emmn_render.pt"),
    fomm: Annotated[Path, typer.Option(help="renderer when --renderer does not exist")] = Path("data/models/fomm.pt"),
    evaluator: Annotated[Path, typer.Option(help="the judges (train_evaluator)")] = Path("data/models/evaluator.pt"),
    work: Annotated[Path, typer.Option(help="per-row models, losses, clip scores, sheet")] = Path(
        "data/ablations/motion"),
    report: Annotated[Path, typer.Option(help="Table 2 rows JSON")] = Path("data/reports/table2.json"),
    table: Annotated[Path, typer.Option(help="Table 2 markdown")] = Path("data/reports/table2.md"),
) -> None:
    """Train the Table 2 ablations of Motion Reconstruction, render held-out frames, score them: table2.md/json."""
    sections = {name: load_section(name, params) for name in ("base", "train_motion", "motion_report", "table2")}
    rows = run_table2(keypoints, pseudo, corpus, renderer, fomm, evaluator, work, report, table, sections["base"],
                      sections["train_motion"], sections["motion_report"], sections["table2"])
    typer.echo(json.dumps(rows))


if __name__ == "__main__":
    app()
