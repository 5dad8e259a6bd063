"""`train_motion` stage (paper §3.2, Eq. 1-5): Expression / Mouth Encoders and the Motion Decoder.

    python -m stages.train_motion                # what dvc repro runs
    emmn train_motion --params params.yaml
Reads data/features/keypoints.zarr (corpus + pseudo clips, neutral reference keypoints) and
data/pseudo/pairs.parquet, restricted by data/pseudo/sync.parquet to the quadruples whose two pseudo
clips sync_filter kept (`use_filter: false` = the paper's "w/o filter"; with `labels: counterfactual`
the filter decides which re-dub targets count next to the exact renders). Writes data/models/motion.pt
({model: {motion}, config, step, metrics, train_state}), the loss log data/reports/motion_losses.csv
(DVC plot, x = step) and its PNG. `resume: true` continues from an existing motion.pt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.config import BaseParams, TrainMotionParams, load_section
from pipeline.motion.data import read_pairs, read_sync
from pipeline.motion.train import train_motion_model
from pipeline.training.loop import plot_loss_curves
from stages.common import ParamsOption, one_line_errors, stage_app

app = stage_app()


def run_train_motion(kp_store: Path, pseudo_dir: Path, model_out: Path, losses_csv: Path, losses_png: Path,
                     base: BaseParams, p: TrainMotionParams, log=print) -> dict:
    """Train Motion Reconstruction, then draw the loss curves; return the checkpoint's metrics.

    Callable with any params (e.g. `with_field(p, use_rec=False)`): scripts/table2_motion.py runs the
    Table 2 rows through it in one process.
    """
    pairs = read_pairs(pseudo_dir)
    sync = read_sync(pseudo_dir) if p.use_filter else None  # counterfactual labels: it judges the re-dub targets
    summary = train_motion_model(kp_store, pairs, sync, model_out, losses_csv, base, p,
                                 sync_path=Path(pseudo_dir) / "sync.parquet", log=log)
    switches = ", ".join(f"{k}={getattr(p, k)}" for k in ("labels", "use_rec", "use_self", "use_con", "use_filter"))
    plot_loss_curves(losses_csv, losses_png, title=f"train_motion losses (unweighted; {switches})")
    return summary


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
    losses_png: Annotated[Path, typer.Option(help="loss curves PNG")] = Path("data/reports/motion_losses.png"),
) -> None:
    """Train E_e, E_m, D_em (Eq. 1-5) on keypoints of the kept pseudo-pair quadruples."""
    base, p = load_section("base", params), load_section("train_motion", params)
    summary = run_train_motion(keypoints, pseudo, out, losses, losses_png, base, p)
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "train_params"}))


if __name__ == "__main__":
    app()
