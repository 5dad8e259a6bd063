"""Phoneme events -> viseme tracks: hand-computed targets, real speech, bilabial closures."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.corpus.controls import VISEME_CONTROLS
from pipeline.corpus.sentences import SENTENCES
from pipeline.corpus.speech import PhonemeEvent, synthesize
from pipeline.corpus.visemes import (
    CLASS_TARGETS,
    frame_phoneme_classes,
    phoneme_class,
    viseme_tracks,
)

FPS = 25.0


def _frames_for(duration_s: float) -> int:
    return int(np.ceil(duration_s * FPS))


@pytest.mark.parametrize(
    "phoneme, expected",
    [
        ("'a", "vowel_open"), ("A:", "vowel_open"), ("'V", "vowel_open"), (",i:", "vowel_front"),
        ("I2", "vowel_front"), ("u:", "vowel_round"), ("'0", "vowel_open_round"), ("@", "vowel_mid"),
        ("a#", "vowel_mid"), ("p", "bilabial"), ("b", "bilabial"), ("m", "bilabial"), ("f", "labiodental"),
        ("v", "labiodental"), ("D", "coronal"), ("s", "coronal"), ("t", "coronal"), ("r-", "coronal"),
        ("tS", "postalveolar"), ("k", "velar_glottal"), ("h", "velar_glottal"), ("w", "glide_round"),
        (";", "glide_front"), ("_:", "silence"), ("_", "silence"), ("aI", "vowel_open"), ("oU", "vowel_open_round"),
    ],
)
def test_phoneme_class_of_espeak_mnemonics(phoneme, expected):
    assert phoneme_class(phoneme) == expected


def test_every_mnemonic_espeak_emits_is_classified_explicitly():
    """No phoneme of the corpus sentences falls through to the fallback rules."""
    from pipeline.corpus.visemes import _DIPHTHONGS, _MONOPHTHONGS

    seen = set()
    for text in SENTENCES[:12]:
        seen |= {p.phoneme.lstrip("'%,=!") for p in synthesize(text).phonemes}
    unknown = {p for p in seen if p not in _MONOPHTHONGS and p not in _DIPHTHONGS and not p.startswith("_")}
    print(f"{len(seen)} distinct mnemonics")
    assert not unknown, unknown


def test_hand_made_events_reach_class_targets_inside_long_phonemes():
    events = [
        PhonemeEvent(0.2, 0.7, "'a"),
        PhonemeEvent(0.7, 1.2, "m"),
        PhonemeEvent(1.2, 1.7, "i:"),
        PhonemeEvent(1.7, 2.2, "u:"),
        PhonemeEvent(2.2, 2.7, "f"),
    ]
    n_frames = 75  # 3 s; the last 0.3 s and the first 0.2 s are silence
    tracks = viseme_tracks(events, n_frames, fps=FPS, coarticulation=0.06)
    assert set(tracks) == set(VISEME_CONTROLS)
    frame_of = {"vowel_open": 11, "bilabial": 23, "vowel_front": 36, "vowel_round": 48, "labiodental": 61}
    for cls, frame in frame_of.items():  # frame centres >= 0.18 s from every boundary
        got = [float(tracks[name][frame]) for name in VISEME_CONTROLS]
        np.testing.assert_allclose(got, CLASS_TARGETS[cls].target, atol=1e-3, err_msg=cls)
    assert all(float(tracks[name][0]) < 1e-3 for name in VISEME_CONTROLS)  # rest before speech
    assert all(float(tracks[name][-1]) < 1e-3 for name in VISEME_CONTROLS)
    classes = frame_phoneme_classes(events, n_frames, fps=FPS)
    assert classes[0] == classes[-1] == "silence"
    assert [classes[f] for f in frame_of.values()] == list(frame_of)
    # The jaw moves smoothly from the open vowel into the closure, not in one frame.
    jaw = tracks["viseme_jaw"]
    assert 0.1 < jaw[17] < 0.8 and np.all(np.diff(jaw[12:23]) <= 1e-6)


def test_no_coarticulation_gives_step_targets():
    events = [PhonemeEvent(0.0, 0.5, "a"), PhonemeEvent(0.5, 1.0, "p")]
    tracks = viseme_tracks(events, 25, fps=FPS, coarticulation=0.0)
    assert tracks["viseme_jaw"][11] == pytest.approx(0.85) and tracks["viseme_jaw"][13] == pytest.approx(0.05)
    assert tracks["viseme_closure"][13] == pytest.approx(1.0)


def test_short_bilabial_between_frames_still_closes_the_lips():
    # A 30 ms /p/ whose interval holds no frame centre (frames at 0.46 s and 0.50 s).
    events = [PhonemeEvent(0.1, 0.465, "a"), PhonemeEvent(0.465, 0.495, "p"), PhonemeEvent(0.495, 0.9, "a")]
    closure = viseme_tracks(events, 25, fps=FPS)["viseme_closure"]
    print(f"closure around the 30 ms /p/: {np.round(closure[9:15], 2)}")
    assert closure[11:13].max() >= 0.8 and closure[8] < 0.05 and closure[15] < 0.05


@pytest.fixture(scope="module")
def real_tracks():
    """Tracks and frame classes over six synthesized corpus sentences."""
    jaw, closure, classes, lengths = [], [], [], []
    for text in SENTENCES[:6]:
        speech = synthesize(text)
        n_frames = _frames_for(speech.duration_s)
        tracks = viseme_tracks(speech.phonemes, n_frames, fps=FPS)
        for name, track in tracks.items():
            assert track.dtype == np.float32 and track.shape == (n_frames,), name
            assert float(track.min()) >= 0.0 and float(track.max()) <= 1.0, name
        jaw.append(tracks["viseme_jaw"])
        closure.append(tracks["viseme_closure"])
        classes += frame_phoneme_classes(speech.phonemes, n_frames, fps=FPS)
        lengths.append(n_frames)
    return np.concatenate(jaw), np.concatenate(closure), np.array(classes), lengths


def test_real_speech_opens_on_vowels_and_closes_on_bilabials(real_tracks):
    jaw, closure, classes, _ = real_tracks
    open_frames, bilabial_frames = classes == "vowel_open", classes == "bilabial"
    assert open_frames.sum() >= 15 and bilabial_frames.sum() >= 30
    jaw_open, jaw_bilabial = jaw[open_frames].mean(), jaw[bilabial_frames].mean()
    print(
        f"jaw: open vowels {jaw_open:.3f} (n={open_frames.sum()}), bilabials {jaw_bilabial:.3f} "
        f"(n={bilabial_frames.sum()}); closure on bilabials min {closure[bilabial_frames].min():.3f} "
        f"mean {closure[bilabial_frames].mean():.3f}; on open vowels mean {closure[open_frames].mean():.3f}"
    )
    assert jaw_open > 2.0 * jaw_bilabial
    assert closure[bilabial_frames].min() >= 0.8
    assert closure[open_frames].mean() < 0.3


def test_tracks_are_a_pure_function_of_the_events():
    speech = synthesize(SENTENCES[1])
    n_frames = _frames_for(speech.duration_s)
    first = viseme_tracks(speech.phonemes, n_frames)
    second = viseme_tracks(list(reversed(speech.phonemes)), n_frames)  # order of the list is irrelevant
    for name in VISEME_CONTROLS:
        assert first[name].tobytes() == second[name].tobytes()


def test_degenerate_inputs():
    assert all(t.shape == (0,) for t in viseme_tracks([], 0).values())
    rest = viseme_tracks([], 10)
    assert all(float(np.abs(t).max()) == 0.0 for t in rest.values())
    assert frame_phoneme_classes([], 3) == ["silence"] * 3
    with pytest.raises(ValueError):
        viseme_tracks([], 10, fps=0)
