"""`emmn sync-score VIDEO [--audio WAV] [--weights FILE]`: LSE-C, LSE-D and AV offset of any video.

syncnet_python's numbers (pipeline.lipsync.av_sync): offset search over +-15 frames, confidence (LSE-C) =
median - min of the mean distances, min distance = LSE-D. The scorer is the pipeline's sync scorer
(data/models/sync_scorer.pt, a SyncNet_color trained on the corpus) unless `--weights` names another
file; the official `syncnet_v2.model` gives the standard, comparable numbers. Frames are resampled to 25 fps; with `--crop auto` a face is detected
and cropped (one stable box per video) unless the video already is a face crop, as corpus and generated
videos are. Bad input (no audio stream, audio under 6 frames, a non-SyncNet checkpoint) -> exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.lipsync.sync_score import sync_score_video
from stages.common import one_line_errors, stage_app

app = stage_app()


@app.command()
@one_line_errors
def sync_score(
    video: Annotated[Path, typer.Argument(help="video file (mp4, avi, ...)")],
    audio: Annotated[Path | None, typer.Option(help="score against this audio instead of the video's own")] = None,
    weights: Annotated[Path, typer.Option(help="sync_scorer.pt / syncnet.pt, or official syncnet_v2.model")] = Path(
        "data/models/sync_scorer.pt"),
    crop: Annotated[str, typer.Option(help="auto: detect and crop the face unless already cropped; none")] = "auto",
) -> None:
    """LSE-C (confidence), LSE-D (min distance) and AV offset of a video, as syncnet_python computes them."""
    typer.echo(json.dumps(sync_score_video(video, audio, weights, crop)))


if __name__ == "__main__":
    app()
