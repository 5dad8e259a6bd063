"""`emotion_ceiling` stage: how much emotion the renderer can show at best, beside what the product shows.

    python -m stages.emotion_ceiling                                  # what dvc repro runs
    emmn emotion_ceiling --renderer other.pt --out other.json --sheet other.png   # another renderer, outside DVC
The evaluator's emotion judge on every held-out clip (every `stride`-th frame) in five versions: the real frames;
the neutral reference copied; the reference warped onto the frame's true landmarks (perfect geometry, nothing
painted); the reference driven through FOMM by the frame's own keypoints; and the product's frames (EmmnNet's
keypoints from the clip's audio through the stage-2 renderer). Writes data/reports/emotion_ceiling.json (overall
and per emotion) and emotion_ceiling.png (one row per emotion: real | landmark warp | FOMM | EMMN | reference).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.audio.prosody import DEFAULT_STORE as DEFAULT_PROSODY_STORE
from pipeline.core.config import load_section
from pipeline.evaluation.emotion_ceiling import run_emotion_ceiling
from stages.common import ParamsOption, one_line_errors, stage_app

app = stage_app()


@app.command()
@one_line_errors
def emotion_ceiling(
    params: ParamsOption = Path("params.yaml"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    audio_features: Annotated[Path, typer.Option(help="audio.zarr")] = Path("data/features/audio.zarr"),
    prosody: Annotated[Path, typer.Option(help="prosody.zarr (voice baselines)")] = DEFAULT_PROSODY_STORE,
    evaluator: Annotated[Path, typer.Option(help="the judges (train_evaluator)")] = Path("data/models/evaluator.pt"),
    fomm: Annotated[Path, typer.Option(help="FOMM driven by the frames' own keypoints")] = Path("data/models/fomm.pt"),
    emmn: Annotated[Path, typer.Option(help="EmmnNet of the emmn row")] = Path("data/models/emmn.pt"),
    renderer: Annotated[Path, typer.Option(help="renderer of the emmn row (fomm.pt layout)")] = Path(
        "data/models/emmn_render.pt"),
    out: Annotated[Path, typer.Option(help="report JSON")] = Path("data/reports/emotion_ceiling.json"),
    sheet: Annotated[Path, typer.Option(help="contact sheet PNG")] = Path("data/reports/emotion_ceiling.png"),
) -> None:
    """The judge on real / reference / landmark warp / FOMM on true keypoints / EMMN frames of the held-out clips."""
    p = load_section("emotion_ceiling", params)
    metrics = run_emotion_ceiling(corpus, audio_features, prosody, evaluator, fomm, emmn, renderer, out, sheet, p)
    typer.echo(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}))


if __name__ == "__main__":
    app()
