"""`decompose` stage (paper §3.3 "pseudo labels"): f_e and f_m of every frame of every corpus clip.

    python -m stages.decompose                   # what dvc repro runs
    emmn decompose --params params.yaml
Reads data/models/motion.pt, data/features/keypoints.zarr (with each actor's neutral keypoints: the
encoders read motion relative to them) and the corpus manifest (each clip's actor); writes
data/features/motion.zarr with
`f_e` (F, expression_dim) and `f_m` (F, mouth_dim) float32 for the CORPUS clips only (the first entries
of the keypoint store's index: row r = corpus frame r; pseudo clips are left out), the same per-clip
index, and root attributes (schema, stage, resolved params, the motion model's step/config/training
params). Clip groups are mapped over Dask workers; this process is the one writer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.config import load_section
from pipeline.motion.decompose import build_motion_store
from stages.common import ParamsOption, one_line_errors, stage_app

app = stage_app()


@app.command()
@one_line_errors
def decompose(
    params: ParamsOption = Path("params.yaml"),
    keypoints: Annotated[Path, typer.Option(help="keypoint store")] = Path("data/features/keypoints.zarr"),
    model: Annotated[Path, typer.Option(help="motion.pt from train_motion")] = Path("data/models/motion.pt"),
    corpus: Annotated[Path, typer.Option(help="corpus folder (the manifest names each clip's actor)")] = Path(
        "data/corpus"),
    out: Annotated[Path, typer.Option(help="output store")] = Path("data/features/motion.zarr"),
) -> None:
    """f_e and f_m (Motion Disentanglement) of every corpus frame into data/features/motion.zarr."""
    base, p = load_section("base", params), load_section("decompose", params)
    frames = build_motion_store(keypoints, model, corpus, out, base, p)
    typer.echo(json.dumps({"frames": frames, "out": str(out)}))


if __name__ == "__main__":
    app()
