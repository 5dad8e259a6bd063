"""`audio_features` stage: Wav2Lip mel windows and EVP/EAMM MFCC windows per video frame.

    python -m stages.audio_features
Writes data/features/audio.zarr: `mel` (F, 80, 16) and `mfcc` (F, 28, 12), aligned row for row
with the corpus frames (same per-clip index), so frame i of a clip has its audio window at row i.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.audio.features import build_audio_features
from pipeline.core.config import load_section
from stages.common import ParamsOption, one_line_errors, stage_app

app = stage_app()


@app.command()
@one_line_errors
def audio_features(
    params: ParamsOption = Path("params.yaml"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    out: Annotated[Path, typer.Option(help="output store")] = Path("data/features/audio.zarr"),
) -> None:
    """Audio front-ends per video frame (Wav2Lip mel, EVP MFCC) into data/features/audio.zarr."""
    base, p = load_section("base", params), load_section("audio_features", params)
    n = build_audio_features(corpus, out, base, p)
    typer.echo(f"audio_features: {n} frames -> {out}")


if __name__ == "__main__":
    app()
