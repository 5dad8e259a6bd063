"""The audio_features stage's work: Wav2Lip mel windows and EVP/EAMM MFCC windows per video frame.

`build_audio_features` writes data/features/audio.zarr: `mel` (F, 80, 16) and `mfcc` (F, 28, 12), aligned row for
row with the corpus frames (same per-clip index), so frame i of a clip has its audio window at row i. Clips are
mapped by `clip_features` (a top-level function: it runs in worker processes); this process alone writes the store.
`frame_mfcc_windows` is the whole-signal per-frame MFCC that pipeline.audio.stream reproduces block by block.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.audio.frontends import evp_mfcc_windows, wav2lip_mel
from pipeline.audio.stream import mel_windows
from pipeline.core.config import (
    AudioFeaturesParams,
    BaseParams,
    recorded_params,
)
from pipeline.core.errors import InputError
from pipeline.core.media import load_audio
from pipeline.core.parallel import ordered_map
from pipeline.core.store import ArraySpec, RaggedStoreWriter, atomic_output

SCHEMA = "emmn.audio/v1"
MFCC_COEFFS = 12


def frame_mfcc_windows(samples: np.ndarray, n_frames: int) -> np.ndarray:
    """EVP/EAMM windows, one per video frame; the front-end yields one per 640 samples, edge-padded to match."""
    windows = evp_mfcc_windows(samples)
    if len(windows) < n_frames:
        windows = np.concatenate([windows, np.repeat(windows[-1:], n_frames - len(windows), axis=0)])
    return windows[:n_frames].astype(np.float32)


def clip_features(task: tuple) -> dict[str, np.ndarray]:
    wav, n_frames, fps, sample_rate, step, pad_mode = task
    samples = load_audio(wav, sample_rate)
    if len(samples) < sample_rate / fps * 5:
        raise InputError(wav, f"audio too short ({len(samples)} samples; need at least 5 video frames)")
    return {"mel": mel_windows(wav2lip_mel(samples, pad_mode=pad_mode), 0, n_frames, fps, step),
            "mfcc": frame_mfcc_windows(samples, n_frames)}


def build_audio_features(corpus_dir: Path, out: Path, base: BaseParams, p: AudioFeaturesParams) -> int:
    """Write audio.zarr atomically; return the number of frames."""
    manifest_path = corpus_dir / "manifest.parquet"
    if not manifest_path.is_file():
        raise InputError(manifest_path, "corpus manifest not found (run the corpus stage first)")
    manifest = pd.read_parquet(manifest_path)
    tasks = [(corpus_dir / row.wav_path, int(row.frames), base.fps, base.sample_rate, p.mel_step, p.mel_pad_mode)
             for row in manifest.itertuples()]
    attrs = {"schema": SCHEMA, "stage": "audio_features",
             "params": recorded_params("audio_features", base, p),
             "mel": "Wav2Lip melspectrogram windows, s = int(i*80/fps), 16 steps, last-chunk rule at the end",
             "mfcc": "EVP/EAMM MFCC windows (28 x 12, c0 dropped), one per video frame"}
    with atomic_output(out) as tmp:
        writer = RaggedStoreWriter(
            tmp, list(manifest.clip_id), list(manifest.frames),
            {"mel": ArraySpec((80, p.mel_step), "float32", ("mel", "step")),
             "mfcc": ArraySpec((28, MFCC_COEFFS), "float32", ("step", "coeff"))},
            attrs=attrs, chunk_frames=p.chunk_frames, shard_frames=p.shard_frames)
        for i, feats in enumerate(ordered_map(clip_features, tasks, description="audio_features")):
            writer.write_clip(i, feats)
        writer.close()
    return int(manifest.frames.sum())
