"""The paper's metrics (Table 1) under the standard protocol (field survey §4, EAT's `evaluation_eat`).

* PSNR per frame over all pixels and channels (skimage `peak_signal_noise_ratio`, data range 255;
  `pipeline.core.image_quality.psnr`), the clip's value the mean over its frames: inf for identical frames.
* SSIM per frame: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
  L = 255, population (not sample) statistics, on the "valid" region only (windows fully inside the
  frame), computed on each RGB channel separately and averaged over the channels. This equals skimage's
  `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  channel_axis=-1, data_range=255)` and Wang's reference `ssim_index.m` per channel. (EAT calls skimage
  with its defaults instead: a 7x7 uniform window with sample covariance, a slightly different number.)
* M-LMD / F-LMD: the 20 mouth points (dlib 48..67) or all 68; each frame's point set is mean-centred
  on its own (the mouth on the mouth's mean, the face on the face's mean: translation removed, no scale
  normalisation, EAT's `calibrate_lmk`), then the Euclidean distances of corresponding points are summed
  over the frames where both videos have landmarks and divided by (valid frames x points). Pixels of the
  evaluation crop (here the corpus frame).
* Sync confidence (LSE-C) and LSE-D: syncnet_python's offset search (`pipeline.lipsync.av_sync`) over the
  scorer's window embeddings (`pipeline.lipsync.sync_scorers`); no ground truth needed.
* Emotion accuracy: the share of clips whose classifier prediction (mean logits over the clip's frames)
  is the clip's emotion label.

Frames of a generated clip and its ground truth are matched as EAT does: both sampled with
`np.linspace(0, n, min(n_a, n_b), endpoint=False)`.
`clip_metrics` scores one generated clip against its ground truth given the judges.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from pipeline.core.image_quality import psnr
from pipeline.judges.scores import clip_emotion, f_lmd, m_lmd

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


# --------------------------------------------------------------------------------------- PSNR / SSIM


def _frames_pair(generated: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    generated, truth = np.asarray(generated), np.asarray(truth)
    if generated.shape != truth.shape or generated.ndim != 4 or generated.shape[-1] != 3:
        raise ValueError(f"need two (T,H,W,3) clips of one shape, got {generated.shape} and {truth.shape}")
    return generated, truth


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian taps (the 2-D window is its outer product, as in Wang's fspecial)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    taps = np.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return taps / taps.sum()


def ssim(generated: np.ndarray, truth: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """(T,) mean SSIM of each frame pair: Gaussian 11x11 window, per RGB channel, averaged (module doc)."""
    generated, truth = _frames_pair(generated, truth)
    if min(generated.shape[1:3]) < SSIM_WINDOW:
        raise ValueError(f"frames smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} SSIM window: {generated.shape}")
    taps = gaussian_window()
    pad = SSIM_WINDOW // 2
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2

    def blur(z: np.ndarray) -> np.ndarray:  # separable Gaussian in float64 over all channels at once;
        # the border mode does not matter: only the valid region (whole windows) is kept
        return cv2.sepFilter2D(z, cv2.CV_64F, taps, taps, borderType=cv2.BORDER_CONSTANT)[pad:-pad, pad:-pad]

    out = np.empty(len(generated))
    for t in range(len(generated)):  # frame by frame: the float64 maps stay in cache
        x, y = generated[t].astype(np.float64), truth[t].astype(np.float64)
        mu_x, mu_y = blur(x), blur(y)
        mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
        var_sum = blur(x * x) + blur(y * y) - mu_xx - mu_yy
        cov = blur(x * y) - mu_xy
        ssim_map = ((2 * mu_xy + c1) * (2 * cov + c2)) / ((mu_xx + mu_yy + c1) * (var_sum + c2))
        out[t] = ssim_map.mean(axis=(0, 1)).mean()  # per channel over the valid region, then over channels
    return out


# ------------------------------------------------------------------------------------------ landmarks


# -------------------------------------------------------------------------------- frames, sync, emotion


def match_lengths(n_generated: int, n_truth: int) -> tuple[np.ndarray, np.ndarray]:
    """EAT's frame matching: min(n) indices into each clip, `linspace(0, n, min, endpoint=False)`."""
    n = min(int(n_generated), int(n_truth))
    return (np.linspace(0, n_generated, n, endpoint=False).astype(np.int64),
            np.linspace(0, n_truth, n, endpoint=False).astype(np.int64))


def sync_metrics(scorer, frames_rgb: np.ndarray, samples: np.ndarray, *, source=None) -> dict[str, float | int]:
    """syncnet_python's numbers of one clip: sync_conf (LSE-C), lse_d (min distance), sync_offset (frames)."""
    from pipeline.lipsync.sync_scorers import score_clip

    result = score_clip(scorer, frames_rgb, samples, source=source)
    return {"sync_conf": result.confidence, "lse_d": result.min_dist, "sync_offset": result.offset}


def emotion_accuracy(predicted: Sequence[str], labels: Sequence[str]) -> float | None:
    """Share of clips whose predicted emotion is the label (None for no clips)."""
    if len(predicted) != len(labels):
        raise ValueError("predictions and labels differ in length")
    if not len(labels):
        return None
    return float(np.mean([p == t for p, t in zip(predicted, labels)]))


def finite_mean(values: np.ndarray) -> float | None:
    """Mean of a per-frame metric; None when any value is inf/NaN (e.g. PSNR of identical frames)."""
    values = np.asarray(values, np.float64)
    if values.size == 0 or not np.isfinite(values).all():
        return None
    return float(values.mean())


# ------------------------------------------------------------------------------------------ one clip

LandmarkFn = Callable[[np.ndarray], np.ndarray]  # RGB frames (T,H,W,3) uint8 -> (T,68,2) px, NaN where none


def clip_metrics(generated: np.ndarray, truth: np.ndarray, *, emotion: str | None = None,
                 emotion_logits: Callable[[np.ndarray], np.ndarray] | None = None,
                 emotions: Sequence[str] = (), landmarks: LandmarkFn | None = None,
                 truth_landmarks: np.ndarray | None = None, scorer=None, samples: np.ndarray | None = None,
                 source=None, expression: tuple | None = None, truth_controls: np.ndarray | None = None) -> dict:
    """Every metric of one generated clip (T,H,W,3) uint8 against its ground truth.

    `landmarks` detects the 68 points on frames (the trained regressor or dlib); the truth's points are
    `truth_landmarks` when known exactly (the built-in corpus), else detected on `truth` too.
    `emotion_logits` maps frames to (T, classes) logits in the order of `emotions`; `scorer` (a
    SyncScorer) with `samples` (16 kHz audio of the clip) gives the sync numbers. A judge left out
    gives None for its metrics. `expression` (control names, frames -> (T, C) controls, mouth names, upper
    names) with `truth_controls` (T, C) of the ground truth gives `expression_errors`. Returns psnr, ssim, m_lmd,
    f_lmd, sync_conf, lse_d, sync_offset, expr_err_mouth, expr_err_upper (+ expr_<control>), emotion_pred,
    emotion_correct, frames.
    """
    gen_idx, truth_idx = match_lengths(len(generated), len(truth))
    gen, tru = np.asarray(generated)[gen_idx], np.asarray(truth)[truth_idx]
    out: dict = {"frames": int(len(gen_idx)), "psnr": finite_mean(psnr(gen, tru, data_range=255.0)),
                 "ssim": float(ssim(gen, tru).mean())}
    out["m_lmd"] = out["f_lmd"] = None
    if landmarks is not None:
        pred = landmarks(gen)
        ref = np.asarray(truth_landmarks)[truth_idx] if truth_landmarks is not None else landmarks(tru)
        out["m_lmd"], out["f_lmd"] = m_lmd(pred, ref), f_lmd(pred, ref)
    out.update({"sync_conf": None, "lse_d": None, "sync_offset": None})
    if scorer is not None and samples is not None:
        out.update(sync_metrics(scorer, np.asarray(generated), samples, source=source))
    out["expr_err_mouth"] = out["expr_err_upper"] = None
    if expression is not None and truth_controls is not None:
        names, read, mouth, upper = expression
        predicted = read(gen)
        out.update(expression_errors(predicted, np.asarray(truth_controls)[truth_idx], names, mouth, upper))
    out["emotion_pred"] = out["emotion_correct"] = None
    if emotion_logits is not None:
        out["emotion_pred"] = clip_emotion(emotion_logits(np.asarray(generated)), emotions)
        out["emotion_correct"] = None if emotion is None else bool(out["emotion_pred"] == emotion)
    return out


def expression_errors(predicted: np.ndarray, truth: np.ndarray, names: Sequence[str],
                      mouth: Sequence[str], upper: Sequence[str]) -> dict[str, float]:
    """Expression, control by control: mean |estimated - true| over frames of each render control (predicted
    (T, C) read off the generated frames by the expression judge, truth (T, C) the ground-truth clip's controls,
    frames already matched), as `expr_<name>`, and the means over the mouth and upper-face controls as
    `expr_err_mouth` / `expr_err_upper`."""
    per_control = np.abs(np.asarray(predicted, np.float64) - np.asarray(truth, np.float64)).mean(axis=0)
    out = {f"expr_{name}": float(v) for name, v in zip(names, per_control)}
    out["expr_err_mouth"] = float(np.mean([out[f"expr_{n}"] for n in mouth]))
    out["expr_err_upper"] = float(np.mean([out[f"expr_{n}"] for n in upper]))
    return out


def json_number(value: float | None, digits: int = 4) -> float | None:
    """A finite float rounded for a report, None for None/NaN/inf (JSON has no inf)."""
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), digits)
