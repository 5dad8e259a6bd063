"""Per-frame control tracks of one clip: emotion expression, speech mouth, blinks and head motion.

Everything except the mouth and the speech nods is a function of (clip seed, time) only, so a
counterfactual render (same actor, emotion and pose track, another sentence's mouth) reproduces the source
clip's expression, blinks and head motion frame for frame, for any length (it is given the source clip's nods).

Head motion is slow random sway plus, with `head_speech_coupling` > 0, nods on stressed syllables: speakers
move their heads with the prosody of what they say, and this part is what a model can learn to predict from
audio alone (paper §3.2: the expression features carry head pose; there is no pose input).
"""

from __future__ import annotations

import numpy as np

from pipeline.corpus.controls import (
    ALL_CONTROLS,
    FACE_CONTROLS,
    MOUTH_CONTROLS,
    NEUTRAL,
)
from pipeline.corpus.emotions import intensity, style

# Base amplitudes of rigid head motion at style amplitude 1 (degrees; fractions of the frame).
POSE_AMPLITUDE = {"yaw": 6.0, "pitch": 4.0, "roll": 3.0, "tx": 0.015, "ty": 0.012, "scale": 0.02}
POSE_FREQUENCIES_HZ = (0.13, 0.31, 0.67)
# One stressed syllable's nod at coupling 1: head pitch (degrees, down), a little vertical shift and yaw.
NOD_AMPLITUDE = {"pitch": 3.0, "ty": 0.006, "yaw": 1.0}
NOD_SECONDS = 0.4  # a nod's length from the vowel's start: down, then back up
EXPRESSION_CONTROLS = tuple(c for c in MOUTH_CONTROLS + FACE_CONTROLS
                            if c not in ("jaw_open", "lip_spread", "lip_round", "lip_closure", "blink"))


def smooth_wave(rng: np.random.Generator, t: np.ndarray, freqs: tuple[float, ...], freq_scale: float) -> np.ndarray:
    """Sum of random-phase sinusoids, unit RMS-ish; defined for any t so tracks extend deterministically."""
    out = np.zeros_like(t)
    for f in freqs:
        amp, phase, jitter = rng.uniform(0.5, 1.0), rng.uniform(0, 2 * np.pi), rng.uniform(0.8, 1.25)
        out += amp * np.sin(2 * np.pi * f * freq_scale * jitter * t + phase)
    return out / np.sqrt(len(freqs) / 2)


def blink_track(rng: np.random.Generator, t: np.ndarray, rate: float, horizon_s: float = 120.0) -> np.ndarray:
    """Random blinks (Poisson times drawn over a fixed horizon, so any clip length sees the same blinks)."""
    n = rng.poisson(rate * horizon_s)
    starts = np.sort(rng.uniform(0.2, horizon_s, n))
    durations = rng.uniform(0.16, 0.26, n)
    track = np.zeros_like(t)
    for s, d in zip(starts, durations):
        if s > t[-1] + d:
            break
        phase = (t - s) / d  # 0..1 across the blink: close fast, open slower
        shape = np.where(phase < 0.35, phase / 0.35, 1.0 - (phase - 0.35) / 0.65)
        track = np.maximum(track, np.where((phase >= 0) & (phase <= 1), shape, 0.0))
    return np.clip(track * 1.15, 0.0, 1.0)


def speech_nods(phonemes, n_frames: int, fps: float) -> np.ndarray:
    """(n_frames,) nod signal >= 0: a half-sine bump of NOD_SECONDS starting at every stressed vowel
    (espeak's primary stress mark ' weighs 1, secondary , weighs 0.5), overlapping bumps summed and
    softly capped at 1.5. Events need `start_s` and `phoneme` (stress marks kept)."""
    t = (np.arange(n_frames) + 0.5) / fps
    out = np.zeros(n_frames)
    for ev in phonemes:
        weight = 1.0 if "'" in ev.phoneme else 0.5 if "," in ev.phoneme else 0.0
        if weight:
            phase = (t - ev.start_s) / NOD_SECONDS
            out += weight * np.where((phase >= 0) & (phase <= 1), np.sin(np.pi * np.clip(phase, 0, 1)), 0.0)
    return 1.5 * np.tanh(out / 1.5)


def clip_controls(
    *,
    seed: int,
    emotion: str,
    level: int,
    visemes: dict[str, np.ndarray],
    fps: float,
    blink_rate: float,
    actor_expressiveness: dict[str, float] | None = None,
    nods: np.ndarray | None = None,
    head_speech_coupling: float = 0.0,
) -> np.ndarray:
    """(T, len(ALL_CONTROLS)) float32 control matrix for a clip; T = length of the viseme tracks.
    `nods` (T,) from `speech_nods` of the clip's audio (a counterfactual: of its source clip's audio)
    drive head nods scaled by `head_speech_coupling` (0 = sway only)."""
    n = len(visemes["viseme_jaw"])
    t = (np.arange(n) + 0.5) / fps
    st, k = style(emotion), intensity(level)
    expressive = actor_expressiveness or {}
    rng_pose, rng_face, rng_blink = (np.random.default_rng([seed, i]) for i in range(3))
    out = {name: np.full(n, NEUTRAL[name], dtype=np.float64) for name in ALL_CONTROLS}

    for name, value in visemes.items():
        out[name] = np.asarray(value, dtype=np.float64)

    # expression: steady emotion target with a slow +-10% breathing and the actor's own scale
    for name in EXPRESSION_CONTROLS:
        target = st.face.get(name, 0.0) * k * expressive.get(name, 1.0)
        wobble = 1.0 + 0.1 * smooth_wave(rng_face, t, (0.09, 0.23), 1.0)
        out[name] = target * wobble

    gain = 1.0 + (st.speech_gain - 1.0) * k
    closure = out["viseme_closure"]
    out["jaw_open"] = np.clip(out["viseme_jaw"] * gain + st.jaw_offset * k * (1.0 - closure), 0.0, 1.0)
    out["lip_spread"] = np.clip(out["viseme_spread"] * gain, 0.0, 1.0)
    out["lip_round"] = np.clip(out["viseme_round"] + st.round_offset * k, 0.0, 1.0)
    out["lip_closure"] = closure

    out["blink"] = blink_track(rng_blink, t, blink_rate)

    head = st.head
    for name, amp in POSE_AMPLITUDE.items():
        wave = smooth_wave(rng_pose, t, POSE_FREQUENCIES_HZ, 1.0 + (head.frequency - 1.0) * k)
        out[name] = (1.0 if name == "scale" else 0.0) + amp * (1.0 + (head.amplitude - 1.0) * k) * wave
    out["pitch"] += head.pitch_bias * k
    out["yaw"] += head.yaw_bias * k
    out["roll"] += head.roll_bias * k
    if head_speech_coupling and nods is not None:
        gain = head_speech_coupling * (1.0 + (head.amplitude - 1.0) * k)
        side = 1.0 if rng_pose.random() < 0.5 else -1.0  # which way this speaker's nods turn
        nods = np.asarray(nods, dtype=np.float64)[:n]
        nods = np.pad(nods, (0, n - len(nods)))  # a counterfactual longer than its source: no nods past its end
        for name, amp in NOD_AMPLITUDE.items():
            out[name] += gain * amp * nods * (side if name == "yaw" else 1.0)

    return np.stack([out[name] for name in ALL_CONTROLS], axis=1).astype(np.float32)


def neutral_controls() -> np.ndarray:
    """The reference frame: neutral expression, frontal, eyes open, mouth closed."""
    return np.asarray([NEUTRAL[name] for name in ALL_CONTROLS], dtype=np.float32)
