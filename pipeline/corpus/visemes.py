"""Phoneme timings -> per-frame mouth shapes (the `viseme_*` controls of the synthetic corpus).

Each phoneme class has a target (jaw, spread, round, closure). Targets are blended with a
dominance model of coarticulation (Cohen & Massaro): every phoneme segment exerts, on
each channel, a dominance that is maximal inside the segment and falls off as a Gaussian
of the distance to it, with width `coarticulation` seconds scaled per class; the track is
the dominance-weighted mean of the targets. Bilabials and labiodentals are very strong on
jaw and closure inside themselves, but that extra strength fades within a few ms outside:
the lips shut inside every p/b/m, and one that falls between two frame centres (>= 30 ms)
still shuts the nearer frame, without dragging the neighbouring vowels shut. Consonants are weak on spread
and rounding and take the lip shape of the neighbouring vowels. The tracks are a pure
function of the events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np

from pipeline.corpus.controls import VISEME_CONTROLS

SILENCE = "silence"
_FRAMES_PER_CHUNK = 256
_STRESS_MARKS = "'%,=!"


class _Phoneme(Protocol):
    start_s: float
    end_s: float
    phoneme: str


class VisemeTarget(NamedTuple):
    """Mouth target of a phoneme class and its dominance per channel, plus its reach."""

    target: tuple[float, float, float, float]  # jaw, spread, round, closure
    dominance: tuple[float, float, float, float]
    reach: float  # multiplies the coarticulation width


# Targets follow the order of VISEME_CONTROLS (jaw, spread, round, closure).
CLASS_TARGETS: dict[str, VisemeTarget] = {
    SILENCE: VisemeTarget((0.0, 0.0, 0.0, 0.0), (1.0, 1.0, 1.0, 1.0), 1.0),
    "vowel_open": VisemeTarget((0.85, 0.15, 0.0, 0.0), (1.0, 1.0, 1.0, 1.0), 1.0),
    "vowel_open_round": VisemeTarget((0.65, 0.0, 0.55, 0.0), (1.0, 1.0, 1.0, 1.0), 1.0),
    "vowel_mid": VisemeTarget((0.45, 0.2, 0.0, 0.0), (1.0, 1.0, 1.0, 1.0), 1.0),
    "vowel_front": VisemeTarget((0.3, 0.8, 0.0, 0.0), (1.0, 1.0, 1.0, 1.0), 1.0),
    "vowel_round": VisemeTarget((0.3, 0.0, 0.9, 0.0), (1.0, 1.0, 1.0, 1.0), 1.0),
    "bilabial": VisemeTarget((0.05, 0.0, 0.0, 1.0), (8.0, 0.3, 0.3, 30.0), 0.35),
    "labiodental": VisemeTarget((0.12, 0.1, 0.0, 0.5), (6.0, 0.3, 0.3, 15.0), 0.35),
    "coronal": VisemeTarget((0.18, 0.25, 0.0, 0.0), (0.8, 0.3, 0.3, 1.0), 0.7),
    "postalveolar": VisemeTarget((0.2, 0.0, 0.55, 0.0), (0.8, 0.8, 1.5, 1.0), 0.7),
    "velar_glottal": VisemeTarget((0.4, 0.2, 0.0, 0.0), (0.4, 0.2, 0.2, 1.0), 0.7),
    "glide_round": VisemeTarget((0.2, 0.0, 1.0, 0.0), (1.0, 2.0, 3.0, 1.0), 0.8),
    "glide_front": VisemeTarget((0.2, 0.7, 0.0, 0.0), (1.0, 1.5, 1.0, 1.0), 0.8),
}

# espeak-ng English mnemonics (stress marks stripped) -> class. Diphthongs move between two
# classes: (class, fraction of the phoneme) parts.
_MONOPHTHONGS: dict[str, str] = {
    **dict.fromkeys(["a", "aa", "A:", "A#", "V"], "vowel_open"),
    **dict.fromkeys(["0", "O:", "O", "O2"], "vowel_open_round"),
    **dict.fromkeys(["@", "@2", "@5", "@L", "3", "3:", "a#", "E", "E2", "I#", "e#", "VR", "3:r"], "vowel_mid"),
    **dict.fromkeys(["i", "i:", "I", "I2", "e", "IR"], "vowel_front"),
    **dict.fromkeys(["u:", "U", "u", "o", "o:", "U2"], "vowel_round"),
    **dict.fromkeys(["p", "b", "m", "m-"], "bilabial"),
    **dict.fromkeys(["f", "v"], "labiodental"),
    **dict.fromkeys(
        ["T", "D", "s", "z", "t", "d", "n", "n-", "l", "l-", "l/", "r", "r-", "t#", "t2", "d#", "d2", "R", "*"],
        "coronal",
    ),
    **dict.fromkeys(["S", "Z", "tS", "dZ"], "postalveolar"),
    **dict.fromkeys(["k", "g", "N", "x", "h", "?", "k#"], "velar_glottal"),
    **dict.fromkeys(["w", "W"], "glide_round"),
    **dict.fromkeys(["j", ";"], "glide_front"),  # ';' is espeak's linking /j/ ("me about")
}
_DIPHTHONGS: dict[str, tuple[tuple[str, float], ...]] = {
    "aI": (("vowel_open", 0.6), ("vowel_front", 0.4)),
    "aU": (("vowel_open", 0.6), ("vowel_round", 0.4)),
    "eI": (("vowel_mid", 0.5), ("vowel_front", 0.5)),
    "oU": (("vowel_open_round", 0.5), ("vowel_round", 0.5)),
    "OI": (("vowel_open_round", 0.6), ("vowel_front", 0.4)),
    "e@": (("vowel_mid", 0.6), ("vowel_mid", 0.4)),
    "i@": (("vowel_front", 0.6), ("vowel_mid", 0.4)),
    "i@3": (("vowel_front", 0.6), ("vowel_mid", 0.4)),
    "U@": (("vowel_round", 0.6), ("vowel_mid", 0.4)),
    "A@": (("vowel_open", 0.7), ("vowel_mid", 0.3)),
    "O@": (("vowel_open_round", 0.7), ("vowel_mid", 0.3)),
    "o@": (("vowel_open_round", 0.7), ("vowel_mid", 0.3)),
    "aI@": (("vowel_open", 0.4), ("vowel_front", 0.3), ("vowel_mid", 0.3)),
    "aU@": (("vowel_open", 0.4), ("vowel_round", 0.3), ("vowel_mid", 0.3)),
    "aI3": (("vowel_open", 0.4), ("vowel_front", 0.3), ("vowel_mid", 0.3)),
}


def _phoneme_parts(phoneme: str) -> tuple[tuple[str, float], ...]:
    """The class sequence of a phoneme, each with its share of the phoneme's duration."""
    name = phoneme.strip().lstrip(_STRESS_MARKS)
    if not name or name.startswith("_"):
        return ((SILENCE, 1.0),)
    if name in _DIPHTHONGS:
        return _DIPHTHONGS[name]
    if name in _MONOPHTHONGS:
        return ((_MONOPHTHONGS[name], 1.0),)
    # Unlisted mnemonics (other languages, rare English allophones): drop length and
    # modifier marks and classify by the leading symbol.
    core = name.rstrip(":#-/2345;")
    for candidate in (core, core[:2], core[:1]):
        if candidate in _DIPHTHONGS:
            return _DIPHTHONGS[candidate]
        if candidate in _MONOPHTHONGS:
            return ((_MONOPHTHONGS[candidate], 1.0),)
    return (("vowel_mid", 1.0),) if core[:1].lower() in "aeiouy@3" else (("coronal", 1.0),)


def phoneme_class(phoneme: str) -> str:
    """The viseme class of an espeak-ng mnemonic (stress marks allowed); a diphthong gives its onset class."""
    return _phoneme_parts(phoneme)[0][0]


class _Segments(NamedTuple):
    start: np.ndarray  # (S,) seconds
    end: np.ndarray
    classes: list[str]


def _segments(phonemes: Sequence[_Phoneme], total_s: float) -> _Segments:
    """Split diphthongs, drop empty events and cover every gap (and both ends) with silence."""
    starts: list[float] = []
    ends: list[float] = []
    classes: list[str] = []

    def add(start: float, end: float, segment_class: str) -> None:
        starts.append(start)
        ends.append(end)
        classes.append(segment_class)

    cursor = 0.0
    for event in sorted(phonemes, key=lambda e: (e.start_s, e.end_s)):
        start, end = float(event.start_s), float(event.end_s)
        if not (np.isfinite(start) and np.isfinite(end)):
            raise ValueError(f"phoneme {event.phoneme!r} has a non-finite time ({start}, {end})")
        start = max(start, cursor)  # overlapping events: the later one starts where the earlier ends
        if end <= start:
            continue
        if start > cursor:
            add(cursor, start, SILENCE)
        part_start = start
        for part_class, share in _phoneme_parts(event.phoneme):
            part_end = min(end, part_start + share * (end - start))
            add(part_start, part_end, part_class)
            part_start = part_end
        ends[-1] = end  # rounding of the shares must not leave a gap
        cursor = end
    if total_s > cursor:
        add(cursor, total_s, SILENCE)
    return _Segments(np.asarray(starts, np.float64), np.asarray(ends, np.float64), classes)


def _frame_times(n_frames: int, fps: float) -> np.ndarray:
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return (np.arange(n_frames, dtype=np.float64) + 0.5) / fps


def viseme_tracks(
    phonemes: Sequence[_Phoneme], n_frames: int, fps: float = 25.0, coarticulation: float = 0.06
) -> dict[str, np.ndarray]:
    """Per-frame viseme controls (float32, shape (n_frames,), in [0, 1]) sampled at frame centres.

    phonemes: events with start_s, end_s, phoneme (speech.PhonemeEvent); time not covered by
    any event is silence (rest). coarticulation: the dominance width in seconds (0 gives
    the raw step targets).
    """
    times = _frame_times(n_frames, fps)
    if coarticulation < 0:
        raise ValueError(f"coarticulation must be >= 0, got {coarticulation}")
    segments = _segments(phonemes, float(times[-1]) + 1.0 if n_frames else 0.0)
    if n_frames == 0:
        return {name: np.zeros(0, np.float32) for name in VISEME_CONTROLS}
    specs = [CLASS_TARGETS[c] for c in segments.classes]
    targets = np.array([s.target for s in specs])  # (S, 4)
    strengths = np.array([s.dominance for s in specs])  # (S, 4)
    reach = np.array([s.reach for s in specs]) * coarticulation  # (S,)
    # Beyond 6 reaches a dominance is < exp(-36) of its peak: only nearby segments are blended,
    # so memory stays bounded for long audio.
    horizon = 6.0 * float(reach.max())
    tracks = np.empty((n_frames, len(VISEME_CONTROLS)), np.float64)
    for chunk_start in range(0, n_frames, _FRAMES_PER_CHUNK):
        chunk = times[chunk_start: chunk_start + _FRAMES_PER_CHUNK]
        first = int(np.searchsorted(segments.end, chunk[0] - horizon, side="left"))
        last = int(np.searchsorted(segments.start, chunk[-1] + horizon, side="right"))
        near = slice(first, max(last, first + 1))
        # Distance from each frame centre to each segment (0 inside it).
        distance = np.maximum(segments.start[None, near] - chunk[:, None], 0.0) + np.maximum(
            chunk[:, None] - segments.end[None, near], 0.0
        )
        weights = _dominance(distance, reach[near], strengths[near])  # (T, S, 4)
        tracks[chunk_start: chunk_start + len(chunk)] = np.einsum(
            "tsc,sc->tc", weights, targets[near]
        ) / np.maximum(weights.sum(axis=1), 1e-12)
    tracks = np.clip(tracks, 0.0, 1.0).astype(np.float32)
    return {name: np.ascontiguousarray(tracks[:, k]) for k, name in enumerate(VISEME_CONTROLS)}


def _dominance(distance: np.ndarray, reach: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """Dominance (T, S, C) of segments at the given frame-to-segment distances (T, S).

    Inside a segment it is the class strength. Outside, strength above 1 (the grip of a lip
    closure) decays within a quarter of the reach, so a strong p/b/m holds the lips shut
    inside itself without dragging neighbouring vowels shut; what is left falls off over
    the full reach.
    """
    if not np.all(reach > 0):  # no coarticulation: each segment acts only inside itself
        return (distance == 0.0)[:, :, None] * strength[None, :, :]
    scaled = distance / reach[None, :]
    base = np.minimum(strength, 1.0)
    grip = np.exp(-np.square(4.0 * scaled))[:, :, None]
    return (base[None] + (strength - base)[None] * grip) * np.exp(-np.square(scaled))[:, :, None]


def frame_phoneme_classes(phonemes: Sequence[_Phoneme], n_frames: int, fps: float = 25.0) -> list[str]:
    """The viseme class active at each frame centre (diphthongs split into their parts)."""
    times = _frame_times(n_frames, fps)
    if n_frames == 0:
        return []
    segments = _segments(phonemes, float(times[-1]) + 1.0)
    index = np.searchsorted(segments.end, times, side="right")
    index = np.minimum(index, len(segments.classes) - 1)
    return [segments.classes[i] for i in index]
