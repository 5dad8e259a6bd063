"""Audio front-ends of the peer models, reproduced to float32 rounding of the official code.

* `load_audio`: any file -> float32 mono in [-1, 1] at 16 kHz (what `librosa.load(sr=16000)` returns).
* `wav2lip_mel` + `wav2lip_mel_windows`: Wav2Lip's `audio.melspectrogram` and its inference windowing.
* `psf_mfcc`: `python_speech_features.mfcc` (re-implemented; that package is not a dependency).
* `syncnet_mfcc`: syncnet_python's MFCC matrix (int16-scale input, c0 = log energy).
* `evp_mfcc_windows`: the EVP / EAMM [28, 12] MFCC windows, one per 25 fps video frame.

See checkpoint-specs/README.md sections 3, 5, 6 and 7 for the official definitions.
"""

from __future__ import annotations

import decimal
import functools

import numpy as np
import scipy.fft
import scipy.signal

from pipeline.core.errors import InputError
from pipeline.core.media import SAMPLE_RATE

# Wav2Lip hparams.py (the values its released checkpoints were trained with).
W2L_N_FFT = 800
W2L_HOP = 200
W2L_WIN = 800
W2L_NUM_MELS = 80
W2L_FMIN = 55.0
W2L_FMAX = 7600.0
W2L_PREEMPHASIS = 0.97
W2L_REF_LEVEL_DB = 20.0
W2L_MIN_LEVEL_DB = -100.0
W2L_MAX_ABS_VALUE = 4.0
MEL_FRAMES_PER_SECOND = SAMPLE_RATE // W2L_HOP  # 80 mel frames per second
MEL_STEP_SIZE = 16  # mel frames per video frame window (0.2 s)

# EVP / EAMM demo front-end.
EVP_PAD_SAMPLES = 1920  # 3 video frames at 25 fps on each side
EVP_WINDOW_ROWS = 28  # MFCC rows per window: video frames k-3..k+3, 4 rows each
EVP_ROWS_PER_FRAME = 4

# ----------------------------------------------------------------------------------------------- loading


# ------------------------------------------------------------------------------------------ Wav2Lip mel


@functools.lru_cache(maxsize=1)
def _wav2lip_mel_basis() -> np.ndarray:
    """Slaney-style, area-normalised mel filters of Wav2Lip (float32, read-only, built once)."""
    import librosa

    basis = librosa.filters.mel(
        sr=SAMPLE_RATE, n_fft=W2L_N_FFT, n_mels=W2L_NUM_MELS, fmin=W2L_FMIN, fmax=W2L_FMAX
    )
    basis.setflags(write=False)
    return basis


def wav2lip_mel(samples: np.ndarray, pad_mode: str = "reflect") -> np.ndarray:
    """Wav2Lip's `audio.melspectrogram`: 16 kHz float samples -> float32 [80, 1 + len // 200] in [-4, 4].

    `pad_mode` is how the centred STFT pads 400 samples at each end. "reflect" is what the released
    checkpoints were trained with (librosa 0.7). The official code run on librosa >= 0.10 pads with
    zeros ("constant"); that changes only the first two and the last two columns.
    """
    import librosa

    samples = np.asarray(samples)
    if samples.ndim != 1 or samples.size == 0:
        raise InputError(None, f"wav2lip_mel needs a non-empty 1-D signal, got shape {samples.shape}")
    emphasized = scipy.signal.lfilter([1.0, -W2L_PREEMPHASIS], [1.0], samples.astype(np.float64))
    spectrum = librosa.stft(
        y=emphasized, n_fft=W2L_N_FFT, hop_length=W2L_HOP, win_length=W2L_WIN,
        window="hann", center=True, pad_mode=pad_mode,
    )
    mel = _wav2lip_mel_basis() @ np.abs(spectrum)
    min_level = 10.0 ** (W2L_MIN_LEVEL_DB / 20.0)
    decibels = 20.0 * np.log10(np.maximum(min_level, mel)) - W2L_REF_LEVEL_DB
    scaled = 2 * W2L_MAX_ABS_VALUE * (decibels - W2L_MIN_LEVEL_DB) / -W2L_MIN_LEVEL_DB - W2L_MAX_ABS_VALUE
    return np.clip(scaled, -W2L_MAX_ABS_VALUE, W2L_MAX_ABS_VALUE).astype(np.float32)


def mel_window_start(frame_index: int, fps: float = 25.0) -> int:
    """First mel frame of video frame `frame_index`'s window (Wav2Lip inference: int(i * 80/fps))."""
    # Same operation order as the official `i * mel_idx_multiplier` so float truncation agrees.
    return int(frame_index * (MEL_FRAMES_PER_SECOND / fps))


def wav2lip_mel_windows(
    mel: np.ndarray, n_frames: int | None = None, fps: float = 25.0
) -> tuple[np.ndarray, int]:
    """Cut a [80, T] mel into per-video-frame windows [n, 80, 16] following Wav2Lip's inference loop.

    Frame i takes `mel[:, s:s+16]`, s = `mel_window_start(i, fps)`; the first frame whose window would
    run past T gets `mel[:, T-16:]` and ends the list. The video is truncated to the number of windows;
    with `n_frames` given, windows beyond it are dropped too (the official demo would loop the frames).
    Returns the windows (float32) and their count n.
    """
    mel = np.asarray(mel)
    if mel.ndim != 2 or mel.shape[1] < MEL_STEP_SIZE:
        raise InputError(None, f"mel must be [bins, T] with T >= {MEL_STEP_SIZE}, got shape {mel.shape}")
    if n_frames is not None and n_frames < 1:
        raise InputError(None, f"n_frames must be positive, got {n_frames}")
    total = mel.shape[1]
    step = MEL_FRAMES_PER_SECOND / fps
    # Enough candidate frames to reach the first window that overruns T.
    candidates = int(np.ceil((total - MEL_STEP_SIZE + 1) / step)) + 2
    starts = (np.arange(candidates) * step).astype(np.int64)
    first_overrun = int(np.argmax(starts + MEL_STEP_SIZE > total))
    starts = starts[: first_overrun + 1]
    starts[first_overrun] = total - MEL_STEP_SIZE
    if n_frames is not None:
        starts = starts[:n_frames]
    windows = np.lib.stride_tricks.sliding_window_view(mel, MEL_STEP_SIZE, axis=1)  # [80, T-15, 16]
    chunks = np.ascontiguousarray(windows[:, starts].transpose(1, 0, 2), dtype=np.float32)
    return chunks, len(starts)


# ---------------------------------------------------------------------------- python_speech_features MFCC


def _round_half_up(value: float) -> int:
    """python_speech_features' rounding of frame lengths (decimal ROUND_HALF_UP on the exact float)."""
    return int(decimal.Decimal(value).quantize(decimal.Decimal("1"), rounding=decimal.ROUND_HALF_UP))


def _hz_to_htk_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _htk_mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=8)
def _psf_filterbank(nfilt: int, nfft: int, sample_rate: int) -> np.ndarray:
    """Triangular HTK-mel filters from 0 Hz to Nyquist with edges on integer FFT bins: [nfilt, nfft//2+1]."""
    mel_points = np.linspace(_hz_to_htk_mel(0.0), _hz_to_htk_mel(sample_rate / 2), nfilt + 2)
    edges = np.floor((nfft + 1) * _htk_mel_to_hz(mel_points) / sample_rate)
    bank = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        low, centre, high = edges[j], edges[j + 1], edges[j + 2]
        rising = np.arange(int(low), int(centre))
        bank[j, rising] = (rising - low) / (centre - low)
        falling = np.arange(int(centre), int(high))
        bank[j, falling] = (high - falling) / (high - centre)
    bank.setflags(write=False)
    return bank


def psf_mfcc(
    signal: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    winlen: float = 0.025,
    winstep: float = 0.01,
    numcep: int = 13,
    nfilt: int = 26,
    nfft: int = 512,
    preemph: float = 0.97,
    ceplifter: int = 22,
    append_energy: bool = True,
) -> np.ndarray:
    """`python_speech_features.mfcc` with a rectangular window: [N, numcep] float64.

    Frames are not centred: N = 1 + ceil((len - frame_len) / step) (1 if the signal is shorter than a
    frame) and the tail is zero-padded. Pre-emphasis keeps the first sample; power spectrum
    |rfft(frame, nfft)|^2 / nfft; zero energies become float eps before the log; DCT-II (ortho),
    sinusoidal lifter; with `append_energy` c0 is replaced by the log frame energy. Computed in float64,
    so the input's scale matters (syncnet_python feeds raw int16 values).
    """
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim != 1 or signal.size == 0:
        raise InputError(None, f"psf_mfcc needs a non-empty 1-D signal, got shape {signal.shape}")
    emphasized = np.concatenate([signal[:1], signal[1:] - preemph * signal[:-1]])

    frame_len = _round_half_up(winlen * sample_rate)
    frame_step = _round_half_up(winstep * sample_rate)
    if emphasized.size <= frame_len:
        n_frames = 1
    else:
        n_frames = 1 + int(np.ceil((emphasized.size - frame_len) / frame_step))
    padded_len = (n_frames - 1) * frame_step + frame_len
    padded = np.concatenate([emphasized, np.zeros(padded_len - emphasized.size)])
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame_len)[::frame_step]

    # rfft with n < frame_len truncates each frame, as numpy does inside python_speech_features.
    power = np.square(np.abs(np.fft.rfft(frames, nfft))) / nfft
    eps = np.finfo(float).eps
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, eps, energy)
    filtered = power @ _psf_filterbank(nfilt, nfft, sample_rate).T
    filtered = np.where(filtered == 0, eps, filtered)

    cepstra = scipy.fft.dct(np.log(filtered), type=2, axis=1, norm="ortho")[:, :numcep]
    if ceplifter > 0:
        cepstra = cepstra * (1.0 + (ceplifter / 2.0) * np.sin(np.pi * np.arange(cepstra.shape[1]) / ceplifter))
    if append_energy:
        cepstra[:, 0] = np.log(energy)
    return cepstra


def syncnet_mfcc(samples_int16_scale: np.ndarray) -> np.ndarray:
    """syncnet_python's audio input: 16 kHz samples on the int16 scale (NOT in [-1, 1]) -> float32 [13, N].

    N = 1 + ceil((len - 400) / 160) (100 per second); the window of video frame v is columns 4v..4v+19.
    c0 is the log frame energy, so it shifts by 2*log(32768) if [-1, 1] samples are passed by mistake.
    """
    return np.ascontiguousarray(psf_mfcc(samples_int16_scale, SAMPLE_RATE).T, dtype=np.float32)


def evp_mfcc_windows(samples: np.ndarray) -> np.ndarray:
    """EVP / EAMM audio windows: float samples in [-1, 1] at 16 kHz -> float32 [N, 28, 12].

    The signal gets 1920 zeros on each side; MFCC rows every 10 ms with c0 dropped; window k holds rows
    4k..4k+27 (video frames k-3..k+3 around frame k of the unpadded audio), for
    N = rows // 4 - 6 windows (none for very short input).
    """
    samples = np.asarray(samples, dtype=np.float32)  # the demos read float32 with librosa
    if samples.ndim != 1:
        raise InputError(None, f"evp_mfcc_windows needs a 1-D signal, got shape {samples.shape}")
    padding = np.zeros(EVP_PAD_SAMPLES)
    coefficients = psf_mfcc(np.concatenate([padding, samples, padding]), SAMPLE_RATE)[:, 1:]
    count = coefficients.shape[0] // EVP_ROWS_PER_FRAME - 6
    if count <= 0:
        return np.zeros((0, EVP_WINDOW_ROWS, coefficients.shape[1]), dtype=np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(coefficients, EVP_WINDOW_ROWS, axis=0)
    windows = windows[:: EVP_ROWS_PER_FRAME][:count]  # [N, 12, 28]
    return np.ascontiguousarray(windows.transpose(0, 2, 1), dtype=np.float32)
