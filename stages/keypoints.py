"""`keypoints` stage: FOMM keypoints (E_k, paper §3.2) of every corpus clip into data/features/keypoints.zarr.

    python -m stages.keypoints
Writes `value` (F, N, 2) (x, y in [-1, 1]) and `jacobian` (F, N, 2, 2), NaN fill, with the per-clip
index of the corpus frames (row r = corpus frame r), then the clips of every store in
`keypoints.extra_frames` (any Zarr store with `frames` and a per-clip index; params.yaml names
data/pseudo/frames.zarr: every pseudo clip, kept by sync_filter or not, so a new threshold or the
train_motion.use_filter ablation needs no new keypoints). Also `reference_value` (A, N, 2),
`reference_jacobian` (A, N, 2, 2) and `reference_actor` (A,): the keypoints of each actor's neutral
reference frame (corpus `reference_frames`), the (p_neu, j_neu) of Motion Reconstruction.
Clip groups are mapped over Dask workers; this process is the ONE writer, so no shard ever has two.
Then data/reports/fomm.json (+ a held-out side-by-side video) is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.config import load_section
from pipeline.fomm.keypoints import run_keypoints
from stages.common import ParamsOption, one_line_errors, stage_app

app = stage_app()


@app.command()
@one_line_errors
def keypoints(
    params: ParamsOption = Path("params.yaml"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    model: Annotated[Path, typer.Option(help="fomm.pt from train_fomm")] = Path("data/models/fomm.pt"),
    out: Annotated[Path, typer.Option(help="output store")] = Path("data/features/keypoints.zarr"),
    report: Annotated[Path, typer.Option(help="report JSON")] = Path("data/reports/fomm.json"),
    video: Annotated[Path, typer.Option(help="held-out side-by-side mp4")] = Path("data/reports/fomm_heldout.mp4"),
    strip: Annotated[Path, typer.Option(help="held-out side-by-side PNG strip")] = Path(
        "data/reports/fomm_heldout.png"),
) -> None:
    """FOMM keypoints + Jacobians of every clip into data/features/keypoints.zarr, and data/reports/fomm.json."""
    base, p = load_section("base", params), load_section("keypoints", params)
    summary = run_keypoints(corpus, model, out, report, video, strip, base, p)
    typer.echo(json.dumps({k: summary[k] for k in ("heldout", "probe")}))


if __name__ == "__main__":
    app()
