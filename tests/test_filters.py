"""One-euro filter: hand-computed steps, chunked == whole, and lag/jitter on a noisy ramp."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.render.filters import OneEuroFilter, one_euro, smoothing_factor

FPS = 25.0


def test_smoothing_factor_by_hand():
    # tau = 1 / (2 pi) = 0.159155 s, Te = 0.04 s -> alpha = 1 / (1 + 3.978874) = 0.200848
    assert smoothing_factor(FPS, 1.0) == pytest.approx(1 / (1 + 25 / (2 * math.pi)))


def test_without_beta_it_is_an_exponential_smoother():
    a = smoothing_factor(FPS, 1.0)
    y = one_euro(np.array([0.0, 1.0, 1.0]), FPS, min_cutoff=1.0, beta=0.0)
    assert y == pytest.approx([0.0, a, a + (1 - a) * a])  # 0, 0.2008, 0.3614


def test_beta_raises_the_cutoff_with_speed():
    """Second sample by hand: speed dx = 25/s, smoothed by alpha_d, cutoff 1 + beta |dx^|."""
    a_d = smoothing_factor(FPS, 1.0)
    fc = 1.0 + 0.5 * a_d * 25.0
    y = one_euro(np.array([0.0, 1.0]), FPS, min_cutoff=1.0, beta=0.5)
    assert y[1] == pytest.approx(smoothing_factor(FPS, fc))


def test_constant_stays_constant_and_dtype_and_shape_kept():
    x = np.full((20, 3, 2, 2), 0.7, np.float32)
    y = one_euro(x, FPS)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.allclose(y, 0.7)


def test_chunked_equals_whole():
    x = np.random.default_rng(0).normal(size=(50, 4, 2))
    whole = one_euro(x, FPS, 1.0, 0.7)
    f = OneEuroFilter(FPS, 1.0, 0.7)
    chunked = np.concatenate([f(x[:13]), f(x[13:31]), f(x[31:])])
    assert np.allclose(whole, chunked)


def ramp_lag_and_jitter(filtered: np.ndarray, truth: np.ndarray, step: float) -> tuple[float, float]:
    """Over the second half (past the start-up): lag = mean shortfall behind the ramp, in frames; jitter = RMS of
    what is left after removing each coordinate's best straight line."""
    half = slice(len(truth) // 2, None)
    t = np.arange(len(truth))[half]
    lag = float(np.mean(truth[half, None] - filtered[half]) / step)
    residuals = [filtered[half, k] - np.polyval(np.polyfit(t, filtered[half, k], 1), t)
                 for k in range(filtered.shape[1])]
    return lag, float(np.sqrt(np.mean(np.square(residuals))))


def test_noisy_ramp_jitter_drops_and_lag_stays_bounded(record_property):
    frames, speed, noise = 250, 0.4, 0.01  # a keypoint moving 0.4 units/s ([-1, 1] frame) with 0.01 detection noise
    step = speed / FPS
    truth = step * np.arange(frames)
    noisy = truth[:, None] + np.random.default_rng(0).normal(0.0, noise, (frames, 6))
    lag_raw, jitter_raw = ramp_lag_and_jitter(noisy, truth, step)
    lag_f, jitter_f = ramp_lag_and_jitter(one_euro(noisy, FPS, min_cutoff=1.0, beta=0.5), truth, step)
    lag_ema, _ = ramp_lag_and_jitter(one_euro(noisy, FPS, min_cutoff=1.0, beta=0.0), truth, step)
    print(f"noisy ramp: raw lag {lag_raw:.2f} frames, jitter {jitter_raw:.4f}; one-euro (1 Hz, beta 0.5) lag "
          f"{lag_f:.2f} frames, jitter {jitter_f:.4f}; same cutoff without beta lag {lag_ema:.2f} frames")
    for name, value in (("lag_raw", lag_raw), ("jitter_raw", jitter_raw), ("lag_filtered", lag_f),
                        ("jitter_filtered", jitter_f)):
        record_property(name, round(value, 5))
    assert abs(lag_raw) < 0.5  # the noise itself has no lag
    assert jitter_f < 0.6 * jitter_raw
    assert 0 < lag_f < 3.0
    assert lag_f < 0.75 * lag_ema  # beta is what keeps the lag down on a moving signal


def test_bad_parameters():
    with pytest.raises(ValueError):
        OneEuroFilter(0.0)
    with pytest.raises(ValueError):
        OneEuroFilter(FPS, beta=-1.0)
