"""`emmn sync-score`'s work: LSE-C, LSE-D and AV offset of any video (syncnet_python's numbers,
pipeline.lipsync.av_sync), frames resampled to 25 fps and, with crop `auto`, a detected face cropped unless the video
already is a face crop. (A module of its own: the face detector it imports stays out of the sync scorers' imports.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.errors import InputError
from pipeline.core.media import (
    has_audio_stream,
    load_audio,
    read_video,
    resample_frame_indices,
)
from pipeline.lipsync.io import load_syncnet_any
from pipeline.lipsync.sync_scorers import SCORER_FPS, make_scorer, score_clip

CROP_SIZE = 224
FACE_CROP_FILL = 0.8  # a detected (enlarged) face box this large means the video is already a face crop


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
