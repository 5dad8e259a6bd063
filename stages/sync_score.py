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

import numpy as np
import typer

from pipeline.core.errors import InputError
from pipeline.core.media import (
    has_audio_stream,
    load_audio,
    read_video,
    resample_frame_indices,
)
from pipeline.lipsync.io import load_syncnet_any
from pipeline.lipsync.sync_scorers import SCORER_FPS, make_scorer, score_clip
from stages.common import one_line_errors, stage_app

CROP_SIZE = 224
FACE_CROP_FILL = 0.8  # a detected (enlarged) face box this large means the video is already a face crop
app = stage_app()


def face_frames(frames: np.ndarray, mode: str, source: Path) -> tuple[np.ndarray, str]:
    """The frames the scorer sees, and how they were obtained (`none`, `face box`, `whole frame`)."""
    if mode == "none":
        return frames, "none"
    if mode != "auto":
        raise InputError(None, f"--crop must be auto or none, not '{mode}'")
    from pipeline.corpus.face_detect import crop_resize, stable_crop_box

    try:
        box = stable_crop_box(frames, source=source)
    except InputError:
        return frames, "whole frame (no face found)"
    if box[2] >= FACE_CROP_FILL * min(frames.shape[1:3]):
        return frames, "whole frame (already a face crop)"
    return np.stack([crop_resize(f, box, CROP_SIZE) for f in frames]), "face box"


def sync_score_video(video: Path, audio: Path | None, weights: Path, crop: str = "auto") -> dict:
    """Offset / LSE-C / LSE-D of a video against its own audio track or `audio`."""
    loaded = load_syncnet_any(weights)
    frames, fps = read_video(video)
    if audio is None:
        if not has_audio_stream(video):
            raise InputError(video, "no audio stream (pass --audio WAV)")
        audio = video
    samples = load_audio(audio)
    if abs(fps - SCORER_FPS) > 1e-3:
        frames = frames[resample_frame_indices(len(frames), fps, SCORER_FPS)]
    frames, how = face_frames(frames, crop, video)
    result = score_clip(make_scorer(loaded), frames, samples, source=audio)
    return {"video": str(video), "audio": str(audio), "offset": result.offset,
            "lse_c": round(result.confidence, 4), "lse_d": round(result.min_dist, 4),
            "windows": int(len(result.frame_confidence)), "fps": fps, "scorer": loaded.arch, "crop": how}


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
