"""`prosody` stage: pitch and loudness per video frame, and each speaker's voice baseline (pipeline.audio.prosody).

    python -m stages.prosody
Writes data/features/prosody.zarr: `prosody` (F, 4, 3) = four sub-steps per video frame of (f0 semitones or 0
where unvoiced, voiced, energy dB FS), aligned row for row with the corpus frames (same per-clip index as
audio.zarr), and the root attribute `voices`: {actor: [median voiced f0, mean voiced energy]} over that actor's
real clips (counterfactual clips reuse the same actor's speech). The emotion encoder hears prosody relative
to the speaker's baseline (train_audio.prosody_channels).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import typer

from pipeline.audio.prosody import (
    PROSODY_ARRAY,
    VOICES_ATTR,
    frame_prosody,
    voice_baseline,
)
from pipeline.core.config import BaseParams, ProsodyParams, as_dict, load_section
from pipeline.core.errors import InputError
from pipeline.core.media import load_audio
from pipeline.core.parallel import ordered_map
from pipeline.core.store import ArraySpec, RaggedStoreWriter, atomic_output
from pipeline.models.audio import CHANNELS, STEPS_PER_FRAME
from stages.common import ParamsOption, one_line_errors, stage_app

SCHEMA = "emmn.prosody/v1"
app = stage_app()


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
                   "params": {"base": as_dict(base), "prosody": as_dict(p)},
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


@app.command()
@one_line_errors
def prosody(
    params: ParamsOption = Path("params.yaml"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    out: Annotated[Path, typer.Option(help="output store")] = Path("data/features/prosody.zarr"),
) -> None:
    """Pitch/loudness tracks per video frame and per-speaker voice baselines into data/features/prosody.zarr."""
    base, p = load_section("base", params), load_section("prosody", params)
    voices = build_prosody(corpus, out, base, p)
    typer.echo(f"prosody: {len(voices)} voices -> {out}; " + ", ".join(
        f"{a} {v[0]:.1f} st / {v[1]:.1f} dB" for a, v in voices.items()))


if __name__ == "__main__":
    app()
