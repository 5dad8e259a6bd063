"""How a judge's reading is scored: M-LMD / F-LMD between landmark sets (mouth and face, after
centring), the clip's emotion from per-frame logits, the confusion matrix and its picture. The judges' own
training reports with these, and `evaluation` builds Table 1 on them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.store import write_png

MOUTH = slice(48, 68)  # dlib / imutils "mouth": outer 48..59 + inner 60..67, 20 points


def centre_landmarks(points: np.ndarray) -> np.ndarray:
    """Subtract each frame's mean point from its points: (T,P,2) -> (T,P,2), translation removed."""
    points = np.asarray(points, np.float64)
    return points - points.mean(axis=-2, keepdims=True)


def landmark_distance(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """LMD: sum of |centred pred - centred truth| over valid frames and points / (valid frames x points).

    A frame is valid when both sets are finite (a detector that found no face returns NaN); None when
    no frame is valid.
    """
    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    if pred.shape != truth.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"need two (T,P,2) landmark tracks of one shape, got {pred.shape} and {truth.shape}")
    valid = np.isfinite(pred).all(axis=(1, 2)) & np.isfinite(truth).all(axis=(1, 2))
    if not valid.any():
        return None
    dist = np.linalg.norm(centre_landmarks(pred[valid]) - centre_landmarks(truth[valid]), axis=-1)
    return float(dist.sum() / dist.size)


def m_lmd(pred68: np.ndarray, truth68: np.ndarray) -> float | None:
    """Mouth LMD: the 20 mouth points (dlib 48..67), centred on the mouth's own mean."""
    return landmark_distance(np.asarray(pred68)[:, MOUTH], np.asarray(truth68)[:, MOUTH])


def f_lmd(pred68: np.ndarray, truth68: np.ndarray) -> float | None:
    """Face LMD: all 68 points, centred on the face's mean."""
    return landmark_distance(pred68, truth68)


def clip_emotion(logits: np.ndarray, emotions: Sequence[str]) -> str:
    """A clip's predicted emotion: argmax of the mean of its frames' logits."""
    return str(emotions[int(np.argmax(np.asarray(logits, np.float64).mean(axis=0)))])


def confusion_matrix(labels: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """(C,C) counts: row = true class, column = predicted class (labels outside `classes` are an error)."""
    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), np.int64)
    for t, p in zip(labels, predicted):
        matrix[index[t], index[p]] += 1
    return matrix


def confusion_image(matrix: np.ndarray, classes: Sequence[str], title: str = "emotion", cell: int = 56) -> np.ndarray:
    """RGB picture of a confusion matrix: cells shaded by the row-normalised share, counts written in them."""
    n = len(classes)
    left, top = 110, 60
    img = np.full((top + n * cell + 20, left + n * cell + 20, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    total = int(matrix.sum())
    acc = float(np.trace(matrix) / total) if total else 0.0
    cv2.putText(img, f"{title}: {total} clips, accuracy {100 * acc:.1f}%", (8, 18), font, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)
    cv2.putText(img, "rows: true, columns: predicted", (8, 36), font, 0.38, (90, 90, 90), 1, cv2.LINE_AA)
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    for i in range(n):
        cv2.putText(img, classes[i][:12], (6, top + i * cell + cell // 2 + 4), font, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, classes[i][:7], (left + i * cell + 3, top - 6), font, 0.32, (0, 0, 0), 1, cv2.LINE_AA)
        for j in range(n):
            shade = int(round(255 * (1.0 - share[i, j])))
            colour = (255, shade, shade) if i != j else (shade, 255, shade)  # RGB: red off, green on the diagonal
            x0, y0 = left + j * cell, top + i * cell
            cv2.rectangle(img, (x0, y0), (x0 + cell - 1, y0 + cell - 1), colour, -1)
            cv2.rectangle(img, (x0, y0), (x0 + cell - 1, y0 + cell - 1), (200, 200, 200), 1)
            cv2.putText(img, str(int(matrix[i, j])), (x0 + cell // 2 - 8, y0 + cell // 2 + 5), font, 0.45, (0, 0, 0),
                        1, cv2.LINE_AA)
    return img


def write_confusion_png(matrix: np.ndarray, classes: Sequence[str], path: str | Path, title: str = "emotion") -> None:
    """One confusion matrix as a PNG."""
    write_png(path, confusion_image(matrix, classes, title))
