"""EVP/EAMM MFCC windows of a long signal, computed a block of video frames at a time (+ mel windows).

`frame_mfcc_windows(samples, n)` (pipeline.audio.features, the audio_features stage) runs the MFCC over the
whole signal at once: its frame matrix is 400 float64 values per 10 ms row, about 1.2 GB for an hour of speech. Here the
same windows come out block by block: block [k0, k1) needs only the padded samples under MFCC rows
4*k0 .. 4*k1+23. Pre-emphasis is applied to the block with the sample before it (then the MFCC runs
with pre-emphasis off), so each MFCC row sees exactly the samples the whole-signal computation gives it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pipeline.audio.frontends import (
    EVP_PAD_SAMPLES,
    EVP_ROWS_PER_FRAME,
    EVP_WINDOW_ROWS,
    mel_window_start,
    psf_mfcc,
    wav2lip_mel,
)
from pipeline.core.errors import InputError
from pipeline.core.media import SAMPLE_RATE

HOP = 160  # psf_mfcc's 10 ms step at 16 kHz
FRAME_LEN = 400  # its 25 ms frame
PREEMPHASIS = 0.97  # psf_mfcc's default


def video_frame_count(num_samples: int, sample_rate: int, fps: float) -> int:
    """Video frames covering the audio (the corpus writes exactly fps/sample_rate frames per sample)."""
    return max(1, int(round(num_samples * fps / sample_rate)))


def window_count(num_samples: int) -> int:
    """How many windows `evp_mfcc_windows` yields for a signal of this length (rows // 4 - 6)."""
    padded = num_samples + 2 * EVP_PAD_SAMPLES
    rows = 1 if padded <= FRAME_LEN else 1 + int(np.ceil((padded - FRAME_LEN) / HOP))
    return rows // EVP_ROWS_PER_FRAME - 6


def _padded_slice(samples: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Samples [start, stop) of the signal with EVP's 1920 zeros on each side (zeros past either end)."""
    out = np.zeros(stop - start, dtype=np.float64)
    lo, hi = max(start, EVP_PAD_SAMPLES), min(stop, EVP_PAD_SAMPLES + len(samples))
    if hi > lo:
        out[lo - start:hi - start] = samples[lo - EVP_PAD_SAMPLES:hi - EVP_PAD_SAMPLES]
    return out


def mfcc_window_block(samples: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Windows [start, stop) of `evp_mfcc_windows(samples)` (stop <= window_count): float32 (n, 28, 12)."""
    first = start * EVP_ROWS_PER_FRAME * HOP  # padded sample under the first MFCC row needed
    rows = (stop - start) * EVP_ROWS_PER_FRAME + EVP_WINDOW_ROWS - EVP_ROWS_PER_FRAME
    end = first + (rows - 1) * HOP + FRAME_LEN
    raw = _padded_slice(samples, max(first - 1, 0), end)
    if first > 0:  # pre-emphasis across the block edge, as over the whole signal
        emphasized = raw[1:] - PREEMPHASIS * raw[:-1]
    else:
        emphasized = np.concatenate([raw[:1], raw[1:] - PREEMPHASIS * raw[:-1]])
    coefficients = psf_mfcc(emphasized, SAMPLE_RATE, preemph=0.0)[:, 1:]
    windows = np.lib.stride_tricks.sliding_window_view(coefficients, EVP_WINDOW_ROWS, axis=0)
    windows = windows[::EVP_ROWS_PER_FRAME][:stop - start]
    return np.ascontiguousarray(windows.transpose(0, 2, 1), dtype=np.float32)


def mfcc_windows(samples: np.ndarray, n_frames: int, start: int, stop: int) -> np.ndarray:
    """Frames [start, stop) of `frame_mfcc_windows(samples, n_frames)` (the audio_features stage's per-frame
    windows: frames past the last window repeat it), float32 (stop - start, 28, 12)."""
    samples = np.asarray(samples, dtype=np.float32)  # float32 like the whole-signal front-end
    if samples.ndim != 1:
        raise InputError(None, f"audio must be a 1-D signal, got shape {samples.shape}")
    available = window_count(len(samples))
    if available <= 0:
        raise InputError(None, f"audio too short for one MFCC window ({len(samples)} samples)")
    if not 0 <= start < stop <= n_frames:
        raise InputError(None, f"frame range [{start}, {stop}) outside the clip's {n_frames} frames")
    real_stop = min(stop, available)
    parts = [mfcc_window_block(samples, start, real_stop)] if real_stop > start else []
    if stop > real_stop:
        last = mfcc_window_block(samples, available - 1, available)
        parts.append(np.repeat(last, stop - max(start, real_stop), axis=0))
    return np.concatenate(parts)


def mfcc_window_blocks(samples: np.ndarray, n_frames: int, block_frames: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first frame, windows) blocks of `frame_mfcc_windows(samples, n_frames)`, `block_frames` at a time."""
    if block_frames < 1:
        raise InputError(None, f"block_frames must be positive, got {block_frames}")
    for start in range(0, n_frames, block_frames):
        yield start, mfcc_windows(samples, n_frames, start, min(start + block_frames, n_frames))


def signal_mel(samples: np.ndarray, pad_mode: str = "reflect") -> np.ndarray:
    """Wav2Lip's mel [80, T] of the whole signal (80 float32 per 12.5 ms: ~115 MB per hour, unlike the MFCC)."""
    return wav2lip_mel(np.asarray(samples, dtype=np.float32), pad_mode)


def mel_windows(mel: np.ndarray, start: int, stop: int, fps: float, step: int = 16) -> np.ndarray:
    """Frames [start, stop) of the audio_features stage's per-frame mel windows (stop - start, 80, step):
    frame i reads mel[:, s:s+step] with s = int(i*80/fps), clamped so the last windows repeat the end."""
    if mel.shape[1] < step:
        mel = np.pad(mel, ((0, 0), (0, step - mel.shape[1])), mode="edge")
    last = mel.shape[1] - step
    starts = [min(mel_window_start(i, fps), last) for i in range(start, stop)]
    return np.stack([mel[:, s:s + step] for s in starts]).astype(np.float32)
