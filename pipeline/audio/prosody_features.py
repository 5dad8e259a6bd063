"""The prosody stage's work: pitch and loudness per video frame and each speaker's voice baseline, into a store.

`build_prosody` writes data/features/prosody.zarr: `prosody` (F, 4, 3) per video frame (pipeline.audio.prosody's
`frame_prosody`), aligned row for row with the corpus frames (same per-clip index as audio.zarr), and the root
attribute `voices`: {actor: [median voiced f0, mean voiced energy]} over that actor's real clips. Clips are mapped by
`clip_prosody` (a top-level function: it runs in worker processes); this process alone writes the store. Read back
by pipeline.audio.prosody.ProsodyStore.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.audio.prosody import (
    PROSODY_ARRAY,
    VOICES_ATTR,
    frame_prosody,
    voice_baseline,
)
from pipeline.core.config import BaseParams, ProsodyParams, recorded_params
from pipeline.core.errors import InputError
from pipeline.core.media import load_audio
from pipeline.core.parallel import ordered_map
from pipeline.core.store import ArraySpec, RaggedStoreWriter, atomic_output
from pipeline.models.audio import CHANNELS, STEPS_PER_FRAME

SCHEMA = "emmn.prosody/v1"


def clip_prosody(task: tuple) -> np.ndarray:
    wav, n_frames, fps, sample_rate = task
    return frame_prosody(load_audio(wav, sample_rate), n_frames, fps, sample_rate)


def build_prosody(corpus_dir: Path, out: Path, base: BaseParams, p: ProsodyParams) -> dict[str, list[float]]:
    """Write prosody.zarr atomically; return the voice baselines {actor: [f0, energy]}."""
    manifest_path = corpus_dir / "manifest.parquet"
    if not manifest_path.is_file():
        raise InputError(manifest_path, "corpus manifest not found (run the corpus stage first)")
    manifest = pd.read_parquet(manifest_path)
    tasks = [(corpus_dir / row.wav_path, int(row.frames), base.fps, base.sample_rate) for row in manifest.itertuples()]
    real = (manifest.kind == "real").to_numpy() if "kind" in manifest else np.ones(len(manifest), bool)
    tracks: dict[str, list[np.ndarray]] = defaultdict(list)
    with atomic_output(out) as tmp:
        writer = RaggedStoreWriter(
            tmp, list(manifest.clip_id), list(manifest.frames),
            {PROSODY_ARRAY: ArraySpec((STEPS_PER_FRAME, CHANNELS), "float32", ("step", "channel"))},
            attrs={"schema": SCHEMA, "stage": "prosody",
                   "params": recorded_params("prosody", base, p),
                   PROSODY_ARRAY: "per video frame, 4 sub-steps of (f0 semitones re 1 Hz, 0 unvoiced; voiced 0/1; "
                                  "RMS energy dB FS)"},
            chunk_frames=p.chunk_frames, shard_frames=p.shard_frames)
        for i, track in enumerate(ordered_map(clip_prosody, tasks, description="prosody")):
            writer.write_clip(i, {PROSODY_ARRAY: track})
            if real[i]:
                tracks[str(manifest.actor.iloc[i])].append(track)
        writer.close()
        voices = {}
        for actor, clips in sorted(tracks.items()):
            try:
                voices[actor] = [round(float(v), 4) for v in voice_baseline(clips)]
            except InputError:
                raise InputError(corpus_dir, f"actor '{actor}' has no voiced speech to measure a voice on") from None
        import zarr

        zarr.open_group(tmp, mode="a").attrs[VOICES_ATTR] = voices
    return voices
