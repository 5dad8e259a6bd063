"""Voice-relative prosody for the emotion encoder: pitch and loudness measured against the speaker's own level.

Why: on the built-in corpus an emotion moves a voice's pitch, pitch range, rate and loudness by about as much as
voices differ from one another, so an encoder that hears one clip in absolute terms takes voices for emotions.
Measured on the default corpus (linear classifier on ten hand-made prosody statistics per clip, trained on the
8 training actors, scored on the 4 held-out ones): 0.41 in absolute terms, 0.69 (0.82 at level 3) once each
statistic is taken relative to the speaker's mean over their clips. Speaker normalisation is the usual remedy
in speech emotion recognition; here the speaker's level is two numbers, its voice baseline.

* `frame_prosody(samples, n_frames, fps, sample_rate)` -> (T, 4, 3) float32: per video frame, four equal
  sub-steps of (f0 in semitones above 1 Hz or 0 where unvoiced, voiced 0/1, RMS energy in dB full scale).
* `voice_baseline(tracks)` -> (2,): median voiced f0 and mean voiced energy over a speaker's clips.
* `relative_prosody(prosody, voice, fallback)` (torch): what E_e reads: pitch in octaves and energy in 20 dB
  above the baseline (pitch zeroed where unvoiced), and a flag saying whether the voice was known (when it is
  not, `fallback`, the training voices' average, stands in).
* `ProsodyStore`: the prosody stage's store (pipeline.audio.prosody_features) read back (each clip's track, each
  actor's baseline).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core.errors import InputError
from pipeline.models.audio import CHANNELS, STEPS_PER_FRAME

F0_MIN_HZ, F0_MAX_HZ = 60.0, 600.0
ENERGY_FLOOR_DB = -80.0
VOICED_RANGE_DB = 30.0  # steps this far below the clip's loudest one count as silence
YIN_FRAME_S = 0.064  # two periods of the lowest f0


def frame_prosody(samples: np.ndarray, n_frames: int, fps: float, sample_rate: int) -> np.ndarray:
    """Mono float samples -> (n_frames, 4, 3): f0 semitones re 1 Hz (0 unvoiced), voiced, energy dB FS.

    f0 by YIN; a step is voiced when its energy is within `VOICED_RANGE_DB` of the clip's loudest step and its
    f0 is inside the search range (YIN pins unvoiced steps to the range ends). Steps are centred on
    k * sample_rate / (fps * 4), as the video frames' audio windows are.
    """
    import librosa  # slow to import; only this function needs it

    if n_frames < 1:
        raise InputError(None, f"prosody needs at least one video frame, got {n_frames}")
    hop = sample_rate / (fps * STEPS_PER_FRAME)
    if abs(hop - round(hop)) > 1e-6:
        raise InputError(None, f"sample rate {sample_rate} is not a whole number of samples per "
                               f"1/{STEPS_PER_FRAME} frame at {fps:g} fps")
    hop = int(round(hop))
    steps = n_frames * STEPS_PER_FRAME
    samples = np.asarray(samples, np.float32)
    need = steps * hop + 1
    if len(samples) < need:  # the video may run a little past the audio: hear silence there
        samples = np.concatenate([samples, np.zeros(need - len(samples), np.float32)])
    frame_length = int(2 ** np.ceil(np.log2(YIN_FRAME_S * sample_rate)))
    f0 = librosa.yin(samples, fmin=F0_MIN_HZ, fmax=F0_MAX_HZ, sr=sample_rate, frame_length=frame_length,
                     hop_length=hop, center=True)[:steps]
    rms = librosa.feature.rms(y=samples, frame_length=2 * hop + hop // 2, hop_length=hop, center=True)[0][:steps]
    energy = np.maximum(20 * np.log10(np.maximum(rms, 1e-12)), ENERGY_FLOOR_DB)
    voiced = ((energy > energy.max() - VOICED_RANGE_DB) & (energy > ENERGY_FLOOR_DB)
              & (f0 > F0_MIN_HZ * 1.05) & (f0 < F0_MAX_HZ * 0.95))
    semitones = np.where(voiced, 12 * np.log2(np.maximum(f0, 1.0)), 0.0)
    track = np.stack([semitones, voiced.astype(np.float64), energy], axis=-1)
    return track.reshape(n_frames, STEPS_PER_FRAME, CHANNELS).astype(np.float32)


def block_prosody(samples: np.ndarray, start: int, stop: int, fps: float, sample_rate: int) -> np.ndarray:
    """`frame_prosody` of video frames [start, stop) measured on their own samples only (memory bounded for any
    length; the voicing threshold is then the block's)."""
    lo, hi = round(start * sample_rate / fps), round(stop * sample_rate / fps)
    return frame_prosody(np.asarray(samples[lo:hi]), stop - start, fps, sample_rate)


def measure_voice(paths: Sequence[str | Path], fps: float, sample_rate: int, block_seconds: float = 30.0
                  ) -> np.ndarray:
    """The voice baseline (2,) of recordings of one speaker (any format; each read in `block_seconds` pieces)."""
    from pipeline.core.media import load_audio

    tracks = []
    for path in paths:
        samples = load_audio(path, sample_rate)
        frames = int(len(samples) * fps / sample_rate)
        if frames < 1:
            raise InputError(path, "voice recording is shorter than one video frame")
        block = max(1, int(block_seconds * fps))
        tracks += [block_prosody(samples, a, min(a + block, frames), fps, sample_rate) for a in range(0, frames, block)]
    try:
        return voice_baseline(tracks)
    except InputError:
        raise InputError(paths[0] if paths else None, "no voiced speech in the voice recording(s)") from None


def voice_baseline(tracks: Sequence[np.ndarray]) -> np.ndarray:
    """(2,) float32: median f0 (semitones) and mean energy (dB) over the voiced steps of a speaker's clips."""
    steps = np.concatenate([np.asarray(t, np.float32).reshape(-1, CHANNELS) for t in tracks]) if tracks else None
    if steps is None or not (steps[:, 1] > 0.5).any():
        raise InputError(None, "no voiced speech to measure the voice baseline on")
    voiced = steps[steps[:, 1] > 0.5]
    return np.array([np.median(voiced[:, 0]), voiced[:, 2].mean()], np.float32)


# ------------------------------------------------------------------------------------------- the store

PROSODY_ARRAY = "prosody"
VOICES_ATTR = "voices"
DEFAULT_STORE = Path("data/features/prosody.zarr")  # where the prosody stage writes it


class ProsodyStore:
    """data/features/prosody.zarr read back: each clip's (T, 4, 3) track and its speaker's voice baseline."""

    def __init__(self, path: str | Path):
        from pipeline.core.store import (  # store imports zarr: only readers pay for it
            open_store,
            read_index,
        )

        self.path = path
        root = open_store(path)
        if PROSODY_ARRAY not in root or VOICES_ATTR not in root.attrs:
            raise InputError(path, f"no '{PROSODY_ARRAY}' array or '{VOICES_ATTR}' attribute "
                                   "(not a prosody store; run the prosody stage)")
        self.array = root[PROSODY_ARRAY]
        self.index = read_index(path).set_index("clip_id")
        self.voices = {str(actor): np.asarray(v, np.float32) for actor, v in dict(root.attrs[VOICES_ATTR]).items()}

    def clip(self, clip_id: str) -> np.ndarray:
        if clip_id not in self.index.index:
            raise InputError(self.path, f"clip '{clip_id}' is not in the prosody store (re-run the prosody stage)")
        row = self.index.loc[clip_id]
        return np.asarray(self.array[int(row.start):int(row.stop)], np.float32)

    def voice(self, actor: str) -> np.ndarray:
        if str(actor) not in self.voices:
            raise InputError(self.path, f"actor '{actor}' has no voice baseline (re-run the prosody stage)")
        return self.voices[str(actor)]
