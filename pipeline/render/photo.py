"""A real photo in, a face crop framed like the training frames out; the animated crop pasted back.

The renderer only knows faces framed as in its training frames (the corpus crops: the face fills most of
a square frame). A photo's face is found with the Haar detector (pipeline.corpus.face_detect) and one square
box is cut around it, enlarged and shifted down by factors measured on the corpus's own frames
(`generate.crop_enlarge`, `generate.crop_shift_down`). Each generated crop goes back into the full
photo through a mask that is 1 inside and falls off smoothly (raised cosine) over a border band, so no
seam shows where the generated square meets the untouched photo.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.core.errors import InputError
from pipeline.corpus.face_detect import crop_resize, stable_crop_box


def load_photo(path: str | Path, max_side: int) -> np.ndarray:
    """RGB uint8 (H, W, 3), scaled down (area filter) so its longer side is at most `max_side`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "image file not found")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise InputError(path, "not a readable image (OpenCV cannot decode it)")
    h, w = image.shape[:2]
    if min(h, w) < 32:
        raise InputError(path, f"image too small ({w}x{h} px) to hold a face")
    scale = max_side / max(h, w)
    if scale < 1:
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image[..., ::-1])


def face_box(image_rgb: np.ndarray, source: str | Path, enlarge: float, shift_down: float) -> tuple[int, int, int]:
    """The square (x0, y0, side) to cut around the largest face; InputError naming `source` if none."""
    return stable_crop_box(image_rgb[None], source=source, samples=1, enlarge=enlarge, shift_down=shift_down)


def crop_face(image_rgb: np.ndarray, box: tuple[int, int, int], size: int) -> np.ndarray:
    """The box resized to the model's `size` (edge pixels repeat where the box leaves the photo)."""
    return crop_resize(image_rgb, box, size)


def feather_mask(side: int, feather: float) -> np.ndarray:
    """(side, side) float32: 1 inside, a raised-cosine fall to 0 across the outer `feather` x side pixels."""
    band = max(1.0, feather * side)
    distance = np.minimum(np.arange(side), np.arange(side)[::-1]).astype(np.float32) + 0.5  # to the nearest edge
    ramp = np.where(distance >= band, 1.0, 0.5 - 0.5 * np.cos(np.pi * np.clip(distance / band, 0, 1)))
    return np.outer(ramp, ramp).astype(np.float32)


class FacePaster:
    """Pastes generated crops (size x size) into copies of the photo at `box`, through a feathered mask."""

    def __init__(self, image_rgb: np.ndarray, box: tuple[int, int, int], feather: float):
        self.image = image_rgb
        h, w = image_rgb.shape[:2]
        x0, y0, side = box
        self.side = side
        # The part of the box inside the photo: photo rows/cols [py0, py1) x [px0, px1) <- box [by0..) x [bx0..)
        self.px0, self.py0 = max(x0, 0), max(y0, 0)
        self.px1, self.py1 = min(x0 + side, w), min(y0 + side, h)
        self.bx0, self.by0 = self.px0 - x0, self.py0 - y0
        # Where the box leaves the photo its faded border is simply cut off: both sides of the blend there
        # show the same photo edge, so nothing needs special care.
        self.mask = self._inside(feather_mask(side, feather))[..., None]
        self.background = self._inside_photo(image_rgb).astype(np.float32)

    def _inside(self, box_array: np.ndarray) -> np.ndarray:
        return box_array[self.by0:self.by0 + self.py1 - self.py0, self.bx0:self.bx0 + self.px1 - self.px0]

    def _inside_photo(self, image: np.ndarray) -> np.ndarray:
        return image[self.py0:self.py1, self.px0:self.px1]

    def paste(self, crops_rgb: np.ndarray) -> np.ndarray:
        """uint8 crops (T, size, size, 3) -> uint8 full frames (T, H, W, 3)."""
        out = np.repeat(self.image[None], len(crops_rgb), axis=0)
        if self.px1 <= self.px0 or self.py1 <= self.py0:
            return out
        for t, crop in enumerate(crops_rgb):
            interp = cv2.INTER_CUBIC if self.side > crop.shape[0] else cv2.INTER_AREA
            face = self._inside(cv2.resize(crop, (self.side, self.side), interpolation=interp)).astype(np.float32)
            blended = self.mask * face + (1.0 - self.mask) * self.background
            out[t, self.py0:self.py1, self.px0:self.px1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        return out
