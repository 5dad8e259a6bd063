"""Linear probes: closed-form ridge regression (NumPy) and R^2, to measure what features carry.

Features are standardised with the TRAINING rows' mean and std, targets centred on the training mean
(the intercept is not penalised); R^2 = 1 - SS_res / SS_tot per target on the scoring rows, averaged
uniformly over targets (so 68 landmarks x 2 coordinates count equally). The penalty is picked
from a grid by leave-one-group-out cross-validation on the training rows only (groups = actors), so
the scoring rows (held-out actors) never influence the probe.

`centre_per_group` removes each actor's mean feature vector first: keypoint positions carry the
face's shape, which a linear map fitted on other faces cannot undo, while the FOMM pipeline only ever
uses keypoints relative to the same face (driving minus initial, or minus the neutral frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RidgeProbe:
    mean: np.ndarray  # feature mean (D,)
    scale: np.ndarray  # feature std (D,), 1 where constant
    weights: np.ndarray  # (D, K)
    intercept: np.ndarray  # (K,)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.scale) @ self.weights + self.intercept


def fit_ridge(features: np.ndarray, targets: np.ndarray, alpha: float = 1.0) -> RidgeProbe:
    """Solve (X'X + alpha I) W = X'y on standardised X and centred y (float64)."""
    x = np.asarray(features, np.float64).reshape(len(features), -1)
    y = np.asarray(targets, np.float64).reshape(len(targets), -1)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"ridge probe needs matching rows (>= 2): {len(x)} features, {len(y)} targets")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0
    xs = (x - mean) / scale
    intercept = y.mean(axis=0)
    gram = xs.T @ xs + alpha * np.eye(xs.shape[1])
    weights = np.linalg.solve(gram, xs.T @ (y - intercept))
    return RidgeProbe(mean, scale, weights, intercept)


def r2_score(targets: np.ndarray, predictions: np.ndarray) -> float:
    """Mean over target columns of 1 - SS_res/SS_tot (columns without variance are skipped)."""
    y = np.asarray(targets, np.float64).reshape(len(targets), -1)
    p = np.asarray(predictions, np.float64).reshape(len(predictions), -1)
    ss_res = ((y - p) ** 2).sum(axis=0)
    ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    varying = ss_tot > 1e-12
    if not varying.any():
        return float("nan")
    return float(np.mean(1.0 - ss_res[varying] / ss_tot[varying]))


def probe_r2(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
             alpha: float = 1.0) -> float:
    """Fit on the training rows, R^2 on the test rows; rows with any NaN (features or targets) are dropped."""
    train_x, train_y = _finite_rows(train_x, train_y)
    test_x, test_y = _finite_rows(test_x, test_y)
    if len(train_x) < 2 or len(test_x) < 2:
        return float("nan")
    return r2_score(test_y, fit_ridge(train_x, train_y, alpha).predict(test_x))


def select_alpha(features: np.ndarray, targets: np.ndarray, groups: np.ndarray, alphas: tuple[float, ...]
                 ) -> tuple[float, float]:
    """(best alpha, its mean R^2) over leave-one-group-out folds; the first alpha if fewer than 2 groups."""
    x, y, groups = _finite_rows(features, targets, groups)
    names = np.unique(groups)
    if len(names) < 2 or len(alphas) < 2:
        return float(alphas[0]), float("nan")
    scores = []
    for alpha in alphas:
        fold_scores = []
        for g in names:
            held = groups == g
            fold_scores.append(r2_score(y[held], fit_ridge(x[~held], y[~held], alpha).predict(x[held])))
        scores.append(float(np.nanmean(fold_scores)))
    best = int(np.nanargmax(scores)) if np.isfinite(scores).any() else 0
    return float(alphas[best]), scores[best]


def grouped_probe_r2(train_x: np.ndarray, train_y: np.ndarray, train_groups: np.ndarray, test_x: np.ndarray,
                     test_y: np.ndarray, alphas: tuple[float, ...]) -> tuple[float, float]:
    """(test R^2, alpha): alpha chosen by `select_alpha` on the training rows, then fitted on all of them."""
    alpha, _ = select_alpha(train_x, train_y, train_groups, alphas)
    return probe_r2(train_x, train_y, test_x, test_y, alpha), alpha


def centre_per_group(features: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Subtract each group's mean row (NaN rows ignored in the mean) from that group's rows."""
    x = np.asarray(features, np.float64).reshape(len(features), -1).copy()
    groups = np.asarray(groups)
    for g in np.unique(groups):
        rows = groups == g
        x[rows] -= np.nanmean(x[rows], axis=0)
    return x


def _finite_rows(x: np.ndarray, y: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    x = np.asarray(x).reshape(len(x), -1)
    y = np.asarray(y).reshape(len(y), -1)
    keep = np.isfinite(x).all(axis=1) & np.isfinite(y).all(axis=1)
    return (x[keep], y[keep], *(np.asarray(o)[keep] for o in others))
