"""Face detection (OpenCV Haar cascades, checked by eye cascades) and one stable crop box per clip.

Candidates come from two frontal-face cascades scanned at every scale from `MIN_FACE` px up, on the image
shrunk to at most `DETECT_MAX_SIDE` px (a full 4000x3000 scan for 40-px windows takes ~8 s; a 40-px face
at 1280 px is 125 px in such a photo). A Haar face cascade alone fires on textures (flowers, a blurred
patch on a torso), so each candidate is checked independently: the eye cascades must find eyes in the
upper half of its box, one in each half (or one, when a second face cascade agrees). Only checked
candidates count; the most face-like one (eyes, then cascade agreement, then size) wins.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.errors import InputError

MIN_FACE = 40  # px: smallest face searched for (in the detection image)
DETECT_MAX_SIDE = 1280  # px: larger images are shrunk before the scan (it costs ~ the pixel count)
FACE_CASCADES = ("haarcascade_frontalface_default.xml", "haarcascade_frontalface_alt2.xml")
EYE_CASCADES = ("haarcascade_eye.xml", "haarcascade_eye_tree_eyeglasses.xml",
                "haarcascade_lefteye_2splits.xml", "haarcascade_righteye_2splits.xml")
EYE_ROI_WIDTH = 160  # px: the box's upper part is resized to this width before the eye scan
NO_FACE = "no face found (no candidate with eyes in it; need a frontal face of at least 40 px)"


@functools.lru_cache(maxsize=8)
def _cascade(name: str) -> cv2.CascadeClassifier:
    path = Path(cv2.data.haarcascades) / name
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise InputError(path, "OpenCV Haar cascade missing (opencv-python-headless<5 ships it)")
    return cascade


@dataclass(frozen=True)
class FaceCandidate:
    box: tuple[int, int, int, int]  # x, y, w, h in the input image's pixels
    cascades: int  # how many FACE_CASCADES found it
    eyes: int  # 0..2: halves of the box's upper part (left, right) where an eye cascade fired

    @property
    def checked(self) -> bool:
        return self.eyes == 2 or (self.eyes == 1 and self.cascades >= 2)

    @property
    def rank(self) -> tuple[int, int, int]:
        return self.eyes, self.cascades, self.box[2] * self.box[3]


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def eye_halves(gray: np.ndarray, box: Sequence[int]) -> int:
    """How many halves (left, right) of the box's upper 60% hold an eye-cascade hit at eye height."""
    x, y, w, h = (int(v) for v in box)
    roi = gray[max(y, 0):max(y + int(0.6 * h), 0), max(x, 0):max(x + w, 0)]
    if roi.shape[0] < 8 or roi.shape[1] < 8:
        return 0
    width = EYE_ROI_WIDTH
    to_image = roi.shape[1] / width  # ROI pixels -> image pixels
    # resized and equalised on its own: eyes are a local contrast, and the photo's histogram is not the face's
    roi = cv2.equalizeHist(cv2.resize(roi, (width, max(1, round(roi.shape[0] / to_image))),
                                      interpolation=cv2.INTER_AREA if to_image > 1 else cv2.INTER_LINEAR))
    left = right = False
    for name in EYE_CASCADES:
        hits = _cascade(name).detectMultiScale(roi, scaleFactor=1.05, minNeighbors=2, minSize=(width // 10,) * 2,
                                               maxSize=(width // 2,) * 2)
        for ex, ey, ew, eh in np.asarray(hits).reshape(-1, 4):
            cx = (max(x, 0) + (ex + ew / 2) * to_image - x) / w  # eye centre in box fractions
            cy = (max(y, 0) + (ey + eh / 2) * to_image - y) / h
            if 0.15 < cy < 0.6:
                left |= 0.1 < cx < 0.5
                right |= 0.5 <= cx < 0.9
    return int(left) + int(right)


def face_candidates(image_rgb: np.ndarray, min_face: int = MIN_FACE, max_side: int = DETECT_MAX_SIDE,
                    scale_factor: float = 1.1) -> list[FaceCandidate]:
    """Every face-cascade hit of at least `min_face` px, each scored by the eye check, most face-like first."""
    gray = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2GRAY)
    scale = min(1.0, max_side / max(gray.shape))
    small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else gray
    equalised = cv2.equalizeHist(small)
    hits = []
    for name in FACE_CASCADES:
        found = _cascade(name).detectMultiScale(equalised, scaleFactor=scale_factor, minNeighbors=3,
                                                minSize=(min_face, min_face))
        hits.append([tuple(int(round(v / scale)) for v in box) for box in np.asarray(found).reshape(-1, 4)])
    out = {}
    # every hit is scored on its own box: two cascades' boxes of one face differ, and the eyes may fit only one
    for box in sorted({box for boxes in hits for box in boxes}):
        agree = sum(any(_iou(box, other) > 0.4 for other in boxes) for boxes in hits)
        out[box] = FaceCandidate(box, agree, eye_halves(gray, box))
    return sorted(out.values(), key=lambda c: c.rank, reverse=True)


def detect_faces(image_rgb: np.ndarray, min_face: int = MIN_FACE) -> np.ndarray:
    """Checked face boxes (n, 4) as x, y, w, h, most face-like first (empty when none passes the eye check).

    A second, finer scan (scale steps of 5%, twice the time) runs only when the first finds no checked face:
    it finds faces that fall between the first scan's window sizes; the eye check keeps its extra hits honest.
    """
    boxes = []
    for scale_factor in (1.1, 1.05):
        boxes = [c.box for c in face_candidates(image_rgb, min_face, scale_factor=scale_factor) if c.checked]
        if boxes:
            break
    return np.asarray(boxes, dtype=np.int64).reshape(-1, 4)


def stable_crop_box(frames_rgb: Sequence[np.ndarray], *, source: str | Path, samples: int = 12,
                    enlarge: float = 1.7, shift_down: float = 0.08) -> tuple[int, int, int]:
    """One square box (x0, y0, side) for a whole clip: the median of the best checked face over evenly
    spaced frames, enlarged to take in hair and chin. Per-frame boxes would make the crop jitter.

    Frames without a checked face (a blink, motion blur) are left out; a clip without any is refused.
    Boxes far from the median (another person, a false hit) are dropped before the final median.
    """
    idx = np.linspace(0, len(frames_rgb) - 1, min(samples, len(frames_rgb))).astype(int)
    found = [b[0] for b in (detect_faces(frames_rgb[i]) for i in idx) if len(b)]
    if not found:
        raise InputError(source, NO_FACE)
    boxes = np.stack(found).astype(np.float64)
    middle = np.median(boxes, axis=0)
    near = boxes[np.abs(boxes[:, :2] + boxes[:, 2:] / 2 - middle[:2] - middle[2:] / 2).max(axis=1) < middle[2] / 2]
    x, y, w, h = np.median(near if len(near) else boxes, axis=0)
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
