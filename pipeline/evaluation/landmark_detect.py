"""68-point landmarks of frames for M-LMD / F-LMD: dlib's predictor on real faces, else the trained regressor.

The standard protocol (EAT's `test_lmd.py`) runs dlib's `get_frontal_face_detector` and
`shape_predictor_68_face_landmarks.dat` on every frame, takes the first face found, and skips frames
where no face is found. dlib is an optional extra (`pip install emmn[dlib]`: `dlib-bin` and
`face-recognition-models`, which ships the .dat file); it is used when it imports and a predictor file
is given (or `auto`: the one face-recognition-models ships). Otherwise the evaluator's regressor, trained
on the corpus's exact landmarks, reads every frame (it always "finds" the face: corpus frames are crops).
A detector maps uint8 RGB frames (T,H,W,3) to (T,68,2) float points in pixels of those frames, NaN for
frames without a face.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.errors import InputError

LandmarkDetector = Callable[[np.ndarray], np.ndarray]


def dlib_available() -> bool:
    try:
        importlib.import_module("dlib")
    except ImportError:
        return False
    return True


def default_dlib_predictor() -> Path | None:
    """The 68-point model shipped by face-recognition-models, when installed."""
    try:
        models = importlib.import_module("face_recognition_models")
    except ImportError:
        return None
    return Path(models.pose_predictor_model_location())


class DlibLandmarks:
    """dlib's frontal face detector + 68-point shape predictor, first face per frame (as EAT does)."""

    name = "dlib"

    def __init__(self, predictor_path: str | Path, upsample: int = 0):
        import dlib

        path = Path(predictor_path)
        if not path.is_file():
            raise InputError(path, "dlib shape predictor file not found (shape_predictor_68_face_landmarks.dat)")
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(path))
        self.upsample = upsample

    def __call__(self, frames_rgb: np.ndarray) -> np.ndarray:
        out = np.full((len(frames_rgb), 68, 2), np.nan, np.float32)
        for t, frame in enumerate(np.asarray(frames_rgb)):
            gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
            faces = self.detector(gray, self.upsample)
            if len(faces) == 0:
                continue
            shape = self.predictor(gray, faces[0])
            out[t] = [(shape.part(i).x, shape.part(i).y) for i in range(68)]
        return out


def landmark_detector(evaluator=None, dlib_predictor: str | Path | None = None, log=print) -> LandmarkDetector:
    """dlib when it imports and `dlib_predictor` names a file (`auto`: face-recognition-models' file),
    else the evaluator's trained regressor; InputError when neither is there."""
    if dlib_predictor is not None:
        path = default_dlib_predictor() if str(dlib_predictor) == "auto" else Path(dlib_predictor)
        if path is not None and dlib_available():
            return DlibLandmarks(path)
        log(f"landmarks: dlib {'not installed' if not dlib_available() else 'model not found'}; "
            f"using the trained regressor")
    if evaluator is None or evaluator.landmarks is None:
        raise InputError(dlib_predictor, "no landmark detector: the evaluator has no regressor and dlib is not usable")
    return evaluator.face_landmarks
