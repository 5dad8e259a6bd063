"""espeak-ng synthesis: determinism, format, timings, and that voice parameters act."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.errors import InputError
from pipeline.corpus.sentences import SENTENCES, pick_sentences
from pipeline.corpus.speech import (
    PAD_S,
    PhonemeEvent,
    Speech,
    available_variants,
    synthesize,
)

VOWEL_RICH = "Father saw a large barn far away."


def _median_f0(samples: np.ndarray, sample_rate: int, low_hz: float = 60.0, high_hz: float = 400.0) -> float:
    """Median F0 over loud 40 ms frames, by normalised autocorrelation peak picking."""
    frame = int(0.04 * sample_rate)
    hop = frame // 2
    energies = np.array([np.sum(samples[i: i + frame] ** 2) for i in range(0, len(samples) - frame, hop)])
    loud = energies > 0.3 * energies.max()
    lags = np.arange(int(sample_rate / high_hz), int(sample_rate / low_hz) + 1)
    estimates = []
    for k in np.flatnonzero(loud):
        x = samples[k * hop: k * hop + frame].astype(np.float64)
        x = x - x.mean()
        ac = np.correlate(x, x, mode="full")[frame - 1:]
        if ac[0] <= 0:
            continue
        normalised = ac[lags] / ac[0]
        if normalised.max() > 0.5:  # voiced
            estimates.append(sample_rate / lags[np.argmax(normalised)])
    assert len(estimates) >= 10, f"only {len(estimates)} voiced frames"
    return float(np.median(estimates))


@pytest.fixture(scope="module")
def speech() -> Speech:
    return synthesize(SENTENCES[0])


def test_output_format_and_duration(speech):
    assert speech.sample_rate == 16000
    assert speech.samples.dtype == np.float32 and speech.samples.ndim == 1
    assert np.abs(speech.samples).max() <= 1.0
    rms = float(np.sqrt(np.mean(speech.samples ** 2)))
    print(f"duration {speech.duration_s:.3f} s, rms {rms:.4f}")
    assert 0.5 < speech.duration_s < 6.0
    assert rms > 0.02
    pad = int(PAD_S * 16000) - 40  # the padding is silent, up to resampling ringing
    assert np.abs(speech.samples[: pad]).max() < 1e-3 and np.abs(speech.samples[-pad:]).max() < 1e-3


def test_synthesis_is_bit_identical_whatever_came_before():
    first = synthesize(SENTENCES[3], variant="f2", pitch=70)
    synthesize("Something else entirely, to disturb any state.", variant="m1", rate=220)
    again = synthesize(SENTENCES[3], variant="f2", pitch=70)
    assert first.samples.tobytes() == again.samples.tobytes()
    assert first.phonemes == again.phonemes and first.words == again.words


def test_events_are_ordered_and_inside_the_audio(speech):
    phonemes = speech.phonemes
    assert len(phonemes) >= 15
    assert all(isinstance(p, PhonemeEvent) for p in phonemes)
    starts = np.array([p.start_s for p in phonemes])
    ends = np.array([p.end_s for p in phonemes])
    assert np.all(ends > starts)
    assert np.all(np.diff(starts) > 0) and np.allclose(starts[1:], ends[:-1])  # contiguous
    assert starts[0] >= PAD_S - 0.11 and ends[-1] <= speech.duration_s - PAD_S + 1e-6
    words = [w for _, _, w in speech.words]
    assert words == SENTENCES[0].rstrip(".").split()
    word_starts = [s for s, _, _ in speech.words]
    assert all(0 <= s <= e <= speech.duration_s for s, e, _ in speech.words)
    assert word_starts == sorted(word_starts)


def test_stop_closures_belong_to_the_stop(speech):
    """espeak marks a stop at its burst; our p/b/t intervals must begin in the silent closure."""
    samples = speech.samples
    checked = 0
    for event in speech.phonemes:
        if event.phoneme.lstrip("'%,") in ("p", "t") and event.end_s - event.start_s > 0.04:
            head = samples[int(event.start_s * 16000): int((event.start_s + 0.015) * 16000)]
            assert np.sqrt(np.mean(head ** 2)) < 0.01, f"{event} does not start in silence"
            checked += 1
    assert checked >= 2  # "map", "put" (the burst alone has RMS ~0.02)


def test_pitch_raises_the_fundamental():
    high = _median_f0(synthesize(VOWEL_RICH, pitch=80).samples, 16000)
    low = _median_f0(synthesize(VOWEL_RICH, pitch=20).samples, 16000)
    print(f"median F0: pitch 80 -> {high:.1f} Hz, pitch 20 -> {low:.1f} Hz")
    assert high > 1.3 * low


def test_rate_changes_duration():
    slow = synthesize(VOWEL_RICH, rate=110).duration_s
    fast = synthesize(VOWEL_RICH, rate=260).duration_s
    print(f"duration: rate 110 -> {slow:.2f} s, rate 260 -> {fast:.2f} s")
    assert slow > 1.6 * fast


def test_variants_change_the_voice():
    assert {"m3", "f2"} <= set(available_variants())
    male = synthesize(VOWEL_RICH, voice="en-us", variant="m3")
    female = synthesize(VOWEL_RICH, voice="en-us", variant="f2")
    assert male.samples.shape != female.samples.shape or not np.array_equal(male.samples, female.samples)
    assert _median_f0(female.samples, 16000) > _median_f0(male.samples, 16000)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"variant": "nope"}, "unknown espeak-ng voice variant"),
        ({"voice": "xx-none"}, "no voice"),
        ({"pitch": 120}, "pitch=120"),
        ({"rate": 20}, "rate=20"),
    ],
)
def test_bad_parameters_raise_input_error(kwargs, message):
    with pytest.raises(InputError, match=message):
        synthesize("Hello.", **kwargs)


def test_empty_text_raises_input_error():
    with pytest.raises(InputError, match="empty"):
        synthesize("   ")


def test_sentence_list():
    assert 35 <= len(SENTENCES) <= 45 and len(set(SENTENCES)) == len(SENTENCES)
    picked = pick_sentences(np.random.default_rng(7), 10)
    assert picked == pick_sentences(np.random.default_rng(7), 10)
    assert len(set(picked)) == 10 and all(0 <= i < len(SENTENCES) for i in picked)
    with pytest.raises(ValueError):
        pick_sentences(np.random.default_rng(0), len(SENTENCES) + 1)
