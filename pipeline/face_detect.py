"""Face detection (OpenCV Haar cascade) and one stable crop box per clip."""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import InputError


# (cascade file, scale factor, min neighbours): strict first; the relaxed passes rescue faces the strict
# one misses (stylised or low-contrast faces) at a higher false-positive risk, so they run only when needed.
DETECTOR_PASSES = (
    ("haarcascade_frontalface_default.xml", 1.1, 5),
    ("haarcascade_frontalface_alt2.xml", 1.1, 4),
    ("haarcascade_frontalface_default.xml", 1.05, 3),
)


@functools.lru_cache(maxsize=4)
def _cascade(name: str) -> cv2.CascadeClassifier:
    path = Path(cv2.data.haarcascades) / name
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise InputError(path, "OpenCV Haar cascade missing (opencv-python-headless<5 ships it)")
    return cascade


def detect_faces(image_rgb: np.ndarray, min_size_fraction: float = 0.15, detector_pass: int = 0) -> np.ndarray:
    """Boxes (n, 4) as x, y, w, h, largest first, from one of DETECTOR_PASSES."""
    name, scale, neighbours = DETECTOR_PASSES[detector_pass]
    gray = cv2.equalizeHist(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY))
    side = int(min(gray.shape) * min_size_fraction)
    boxes = _cascade(name).detectMultiScale(gray, scaleFactor=scale, minNeighbors=neighbours, minSize=(side, side))
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    return boxes[np.argsort(-(boxes[:, 2] * boxes[:, 3]))]


def stable_crop_box(frames_rgb: np.ndarray, *, source: str | Path, samples: int = 12,
                    enlarge: float = 1.7, shift_down: float = 0.08) -> tuple[int, int, int]:
    """One square box (x0, y0, side) for a whole clip: the median of the largest detection over
    evenly spaced frames, enlarged to take in hair and chin. Per-frame boxes would make the crop jitter."""
    idx = np.linspace(0, len(frames_rgb) - 1, min(samples, len(frames_rgb))).astype(int)
    for detector_pass in range(len(DETECTOR_PASSES)):
        found = [b[0] for b in (detect_faces(frames_rgb[i], detector_pass=detector_pass) for i in idx) if len(b)]
        if found:
            break
    else:
        raise InputError(source, "no face found")
    x, y, w, h = np.median(np.stack(found), axis=0)
    cx, cy = x + w / 2, y + h / 2 + shift_down * h
    side = int(round(max(w, h) * enlarge))
    return int(round(cx - side / 2)), int(round(cy - side / 2)), side


def crop_resize(frame_rgb: np.ndarray, box: tuple[int, int, int], size: int) -> np.ndarray:
    """Crop a square box (padding with edge pixels where it leaves the frame) and resize it."""
    x0, y0, side = box
    h, w = frame_rgb.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
    if pad:
        frame_rgb = cv2.copyMakeBorder(frame_rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    crop = frame_rgb[y0 + pad: y0 + pad + side, x0 + pad: x0 + pad + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(crop, (size, size), interpolation=interp)
