"""One-euro filter (Casiez, Roussel, Vogel, CHI 2012), vectorised over arrays shaped (T, ...).

The paper (§3.5) smooths the predicted keypoints and Jacobians (p^(t), j^(t)) with it before rendering. Each
element of the trailing axes is filtered independently along time:

    alpha(fc)  = 1 / (1 + tau / Te),   tau = 1 / (2 pi fc),  Te = 1 / rate       (smoothing factor of a cutoff)
    dx_t       = (x_t - x^_{t-1}) * rate                                           (speed of the signal)
    dx^_t      = alpha(d_cutoff) dx_t + (1 - alpha(d_cutoff)) dx^_{t-1}           (smoothed speed)
    fc_t       = min_cutoff + beta |dx^_t|                                         (cutoff grows with speed)
    x^_t       = alpha(fc_t) x_t + (1 - alpha(fc_t)) x^_{t-1}

Slow motion gets a low cutoff (jitter removed), fast motion a high one (little lag). `OneEuroFilter` keeps its
state between calls, so a long sequence filtered window by window equals the sequence filtered at once.
"""

from __future__ import annotations

import math

import numpy as np


def smoothing_factor(rate: float, cutoff: float | np.ndarray) -> float | np.ndarray:
    """alpha = 1 / (1 + tau / Te) with tau = 1 / (2 pi cutoff) and Te = 1 / rate."""
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff, dtype=np.float64))
    return 1.0 / (1.0 + tau * rate)


class OneEuroFilter:
    """Stateful one-euro filter over arrays (T, ...); call it on consecutive chunks of one sequence.

    rate: samples per second (video fps). min_cutoff (Hz): cutoff at rest, lower = less jitter. beta: how fast
    the cutoff rises with speed (per unit of the signal per second), higher = less lag. d_cutoff (Hz): cutoff of
    the speed estimate.
    """

    def __init__(self, rate: float, min_cutoff: float = 1.0, beta: float = 0.5, d_cutoff: float = 1.0):
        if rate <= 0 or min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError("one-euro filter needs rate, min_cutoff, d_cutoff > 0 and beta >= 0")
        self.rate, self.min_cutoff, self.beta, self.d_cutoff = float(rate), float(min_cutoff), float(beta), float(
            d_cutoff)
        self.reset()

    def reset(self) -> None:
        self._x: np.ndarray | None = None  # last filtered sample
        self._dx: np.ndarray | None = None  # last smoothed speed

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Filtered copy of the chunk x (T, ...), in x's float dtype (state kept in float64)."""
        x = np.asarray(x)
        dtype = x.dtype if x.dtype.kind == "f" else np.float64
        x = x.astype(np.float64)
        out = np.empty_like(x)
        alpha_d = smoothing_factor(self.rate, self.d_cutoff)
        for t in range(x.shape[0]):
            if self._x is None:  # the first sample passes through and the speed starts at 0
                self._x, self._dx = x[t].copy(), np.zeros_like(x[t])
            else:
                dx = (x[t] - self._x) * self.rate
                self._dx = alpha_d * dx + (1.0 - alpha_d) * self._dx
                alpha = smoothing_factor(self.rate, self.min_cutoff + self.beta * np.abs(self._dx))
                self._x = alpha * x[t] + (1.0 - alpha) * self._x
            out[t] = self._x
        return out.astype(dtype, copy=False)


def one_euro(x: np.ndarray, rate: float, min_cutoff: float = 1.0, beta: float = 0.5,
             d_cutoff: float = 1.0) -> np.ndarray:
    """Filter a whole sequence (T, ...) along axis 0 (NaN-free input); same shape and float dtype."""
    return OneEuroFilter(rate, min_cutoff, beta, d_cutoff)(x)


__all__ = ["OneEuroFilter", "one_euro", "smoothing_factor"]
