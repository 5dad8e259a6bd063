"""Audio front-ends against the official golden arrays, an independent slow implementation, and I/O rules."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

from pipeline.audio.frontends import (
    evp_mfcc_windows,
    mel_window_start,
    psf_mfcc,
    syncnet_mfcc,
    wav2lip_mel,
    wav2lip_mel_windows,
)
from pipeline.core.errors import InputError
from pipeline.core.media import load_audio

# copied from shared/checkpoint-specs/golden: what the official code computes for test_signal.wav
GOLDEN = Path(__file__).parent / "golden" / "frontends"


@pytest.fixture(scope="module")
def test_signal() -> np.ndarray:
    return load_audio(GOLDEN / "test_signal.wav")


def _report(name: str, ours: np.ndarray, golden: np.ndarray) -> float:
    diff = float(np.abs(ours.astype(np.float64) - golden.astype(np.float64)).max())
    print(f"{name}: shape {ours.shape}, max |golden| {np.abs(golden).max():.3f}, max abs diff {diff:.3g}")
    return diff


# ------------------------------------------------------------------------------------------ golden arrays


def test_load_audio_reads_golden_signal_like_librosa(test_signal):
    raw, rate = soundfile.read(GOLDEN / "test_signal.wav", dtype="int16")
    assert rate == 16000 and test_signal.dtype == np.float32 and test_signal.shape == (20800,)
    # librosa.load at the native rate returns int16 / 32768 exactly.
    np.testing.assert_array_equal(test_signal, raw.astype(np.float32) / 32768.0)


def test_wav2lip_mel_matches_golden(test_signal):
    golden = np.load(GOLDEN / "wav2lip_mel.npy")
    # The golden array was made by the official code on librosa >= 0.10, whose STFT pads with zeros.
    zero_padded = wav2lip_mel(test_signal, pad_mode="constant")
    assert zero_padded.shape == golden.shape == (80, 1 + 20800 // 200)
    assert _report("wav2lip mel (zero pad) vs golden", zero_padded, golden) <= 1e-4
    # Default (reflect, librosa 0.7 as in training): only the 2 columns at each end see the padding.
    reflected = wav2lip_mel(test_signal)
    assert _report("wav2lip mel (reflect) interior vs golden", reflected[:, 2:-2], golden[:, 2:-2]) <= 1e-4
    assert np.abs(reflected[:, [0, 1, -2, -1]] - golden[:, [0, 1, -2, -1]]).max() > 0.1


def test_syncnet_mfcc_matches_golden(test_signal):
    golden = np.load(GOLDEN / "syncnet_python_mfcc.npy")  # (129, 13) float64 from raw int16 samples
    int16_scale = test_signal.astype(np.float64) * 32768.0
    assert _report("psf_mfcc (float64) vs golden", psf_mfcc(int16_scale), golden) <= 1e-9
    ours = syncnet_mfcc(int16_scale)
    assert ours.shape == (13, 129) and ours.dtype == np.float32
    # Values reach |68|: float32 rounding alone is ~4e-6 there.
    assert _report("syncnet_mfcc [13, N] vs golden", ours.T, golden) <= 1e-4


def test_evp_mfcc_windows_match_golden(test_signal):
    golden = np.load(GOLDEN / "evp_eamm_mfcc_windows.npy")
    ours = evp_mfcc_windows(test_signal)
    # 20800 + 2*1920 samples -> 153 MFCC rows -> 153 // 4 - 6 = 32 windows.
    assert ours.shape == golden.shape == (32, 28, 12)
    assert _report("evp/eamm windows vs golden", ours, golden) <= 1e-4


# ------------------------------------------------------------- independent values computed from the spec


def _slaney_hz_to_mel(hz):
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3.0)
    logarithmic = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, logarithmic, linear)


def _slaney_mel_to_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * (200.0 / 3.0)
    logarithmic = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, logarithmic, linear)


def _slow_wav2lip_mel(samples: np.ndarray) -> np.ndarray:
    """Spec of section 3 written out: explicit DFT of reflect-padded periodic-Hann frames, explicit triangles."""
    x = samples.astype(np.float64)
    emphasized = x.copy()
    for n in range(1, len(x)):
        emphasized[n] = x[n] - 0.97 * x[n - 1]
    padded = np.pad(emphasized, 400, mode="reflect")
    n = np.arange(800)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / 800)  # periodic Hann
    dft = np.exp(-2j * np.pi * np.arange(401)[:, None] * n[None, :] / 800)
    n_frames = 1 + len(x) // 200
    frames = np.stack([padded[t * 200 : t * 200 + 800] * window for t in range(n_frames)], axis=1)
    magnitude = np.abs(dft @ frames)  # [401, T]

    edges = _slaney_mel_to_hz(np.linspace(_slaney_hz_to_mel(55.0), _slaney_hz_to_mel(7600.0), 82))
    bin_hz = np.arange(401) * 16000.0 / 800
    basis = np.zeros((80, 401))
    for band in range(80):
        low, centre, high = edges[band : band + 3]
        rising = (bin_hz - low) / (centre - low)
        falling = (high - bin_hz) / (high - centre)
        basis[band] = np.maximum(0.0, np.minimum(rising, falling)) * 2.0 / (high - low)
    decibels = 20.0 * np.log10(np.maximum(1e-5, basis @ magnitude)) - 20.0
    return np.clip(8.0 * (decibels + 100.0) / 100.0 - 4.0, -4.0, 4.0)


def test_wav2lip_mel_matches_slow_independent_implementation_on_a_tone():
    rng = np.random.default_rng(0)
    t = np.arange(4800) / 16000.0  # 0.3 s -> 25 mel frames
    # 440 Hz tone plus a little noise so that almost no band sits at the -4 clipping floor.
    tone = (0.5 * np.sin(2 * np.pi * 440.0 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    expected = _slow_wav2lip_mel(tone)
    ours = wav2lip_mel(tone)
    clipped = float(np.mean(expected <= -4.0))
    print(f"tone mel: shape {ours.shape}, clipped fraction {clipped:.3f}, "
          f"max abs diff {np.abs(ours - expected).max():.3g}")
    assert ours.shape == (80, 25) and clipped < 0.05
    assert np.abs(ours - expected).max() <= 1e-4
    # The loudest band holds 440 Hz: its triangle's edges straddle it.
    edges = _slaney_mel_to_hz(np.linspace(_slaney_hz_to_mel(55.0), _slaney_hz_to_mel(7600.0), 82))
    loudest = int(np.argmax(ours[:, 12]))
    assert edges[loudest] < 440.0 < edges[loudest + 2]


def test_mfcc_c0_carries_the_input_scale_and_frame_count_follows_the_spec():
    rng = np.random.default_rng(1)
    unit = (0.3 * rng.standard_normal(3000)).astype(np.float32)
    unit_scale, int16_scale = psf_mfcc(unit), psf_mfcc(unit * 32768.0)
    # Scaling by a constant only shifts log energies: c0 by 2*log(32768) = 20.79, the rest not at all.
    np.testing.assert_allclose(int16_scale[:, 0] - unit_scale[:, 0], 2 * np.log(32768.0), atol=1e-9)
    np.testing.assert_allclose(int16_scale[:, 1:], unit_scale[:, 1:], atol=1e-9)
    # Frames: 1 + ceil((n - 400) / 160), tail zero-padded; 1 frame when n <= 400.
    for length, frames in [(300, 1), (400, 1), (560, 2), (561, 3), (3000, 18)]:
        assert psf_mfcc(unit[:length]).shape == (frames, 13), length
    silent = psf_mfcc(np.zeros(800))
    assert np.all(silent[:, 0] == np.log(np.finfo(float).eps))  # zero energy -> log(eps)


# ------------------------------------------------------------------------------------ window rule (sec. 3)


def test_mel_window_start_hand_computed():
    # s = int(i * 80 / 25) = floor(3.2 i)
    assert [mel_window_start(i) for i in range(10)] == [0, 3, 6, 9, 12, 16, 19, 22, 25, 28]
    assert mel_window_start(3) == 9
    assert mel_window_start(3, fps=30.0) == 8 and mel_window_start(7, fps=30.0) == 18


def test_wav2lip_mel_windows_last_chunk_and_truncation():
    mel = np.tile(np.arange(30, dtype=np.float32), (80, 1))  # column t holds the value t
    chunks, count = wav2lip_mel_windows(mel, n_frames=100)
    # Starts 0, 3, 6, 9, 12 fit (12 + 16 <= 30); frame 5 would start at 16 and overrun: last = mel[:, 14:30].
    assert count == 6 and chunks.shape == (6, 80, 16)
    assert chunks[:, 0, 0].tolist() == [0, 3, 6, 9, 12, 14]
    np.testing.assert_array_equal(chunks[-1, 5], np.arange(14, 30))
    short, short_count = wav2lip_mel_windows(mel, n_frames=3)
    assert short_count == 3 and short[:, 0, 0].tolist() == [0, 3, 6]
    # Exactly 16 columns: frame 0 fits, frame 1 overruns and repeats the whole mel.
    _, minimal = wav2lip_mel_windows(mel[:, :16])
    assert minimal == 2
    # One second of audio: T = 81 mel frames -> 21 regular windows (i <= 20) + the last one.
    assert wav2lip_mel_windows(np.zeros((80, 81)))[1] == 22
    with pytest.raises(InputError):
        wav2lip_mel_windows(mel[:, :15])


@pytest.mark.parametrize("fps", [25.0, 30.0, 29.97, 12.5])
def test_wav2lip_mel_windows_equal_the_official_loop(fps):
    for total in range(16, 140, 7):
        mel = np.tile(np.arange(total, dtype=np.float32), (2, 1))
        starts, i = [], 0
        while True:  # the inference loop of Wav2Lip, written out
            start = int(i * (80.0 / fps))
            if start + 16 > total:
                starts.append(total - 16)
                break
            starts.append(start)
            i += 1
        chunks, count = wav2lip_mel_windows(mel, fps=fps)
        assert count == len(starts) and chunks[:, 0, 0].astype(int).tolist() == starts, (fps, total)


# ------------------------------------------------------------------------------------------------ loading


def _tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(int(round(seconds * rate))) / rate)


def _amplitude_at(samples: np.ndarray, rate: int, freq: float) -> float:
    """Amplitude of the `freq` component by projection (over whole periods of the interior)."""
    t = np.arange(samples.size) / rate
    inner = slice(samples.size // 10, samples.size - samples.size // 10)
    basis = np.exp(-2j * np.pi * freq * t[inner])
    return float(2 * np.abs(np.mean(samples[inner] * basis)))


def test_load_audio_resamples_44k_stereo_to_16k_mono(tmp_path):
    tone = _tone(0.75, 44100)  # 33075 samples
    stereo = np.stack([0.6 * tone, 0.2 * tone], axis=1)
    path = tmp_path / "stereo_44k.wav"
    soundfile.write(path, stereo, 44100, subtype="PCM_16")
    samples = load_audio(path)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert samples.shape == (12000,)  # ceil(33075 * 16000 / 44100)
    # Channels are averaged: 0.4 at 440 Hz survives resampling.
    assert _amplitude_at(samples, 16000, 440.0) == pytest.approx(0.4, abs=0.01)


def test_load_audio_decodes_m4a_with_bundled_ffmpeg(tmp_path):
    import imageio_ffmpeg

    source = tmp_path / "tone.wav"
    soundfile.write(source, 0.5 * _tone(1.0, 44100), 44100, subtype="PCM_16")
    encoded = tmp_path / "tone.m4a"
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(source), "-c:a", "aac", str(encoded)],
        check=True, capture_output=True,
    )
    samples = load_audio(encoded)
    assert samples.dtype == np.float32 and abs(samples.size - 16000) <= 1024  # AAC frames are 1024 long
    assert _amplitude_at(samples, 16000, 440.0) == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("kind", ["missing", "empty", "corrupt_wav", "corrupt_m4a", "no_samples"])
def test_load_audio_bad_files_raise_input_error_naming_them(tmp_path, kind):
    suffix = ".m4a" if kind == "corrupt_m4a" else ".wav"
    path = tmp_path / f"bad_{kind}{suffix}"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind.startswith("corrupt"):
        path.write_bytes(np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "no_samples":
        soundfile.write(path, np.zeros(0), 16000)
    with pytest.raises(InputError) as caught:
        load_audio(path)
    message = str(caught.value)
    print(message)
    assert path.name in message and "\n" not in message
