"""The judges of `evaluate` (data/models/evaluator.pt): an emotion classifier and a 68-point landmark regressor.

Both read single face frames resized to `image_size` (BGR in [0,1], as the lip-sync models and the mouth
regressor of pseudo_pairs do) through the same small conv stack (`pipeline.judges.mouth_landmarks.conv_features`):
* `EmotionNet`: global-average-pooled features -> logits over `emotions` (class order in the config);
  a clip's emotion is the argmax of its frames' mean logits.
* the landmark regressor: `pipeline.judges.mouth_landmarks.LandmarkNet` with 68 points over the whole face
  (`crop_top` 0), points as fractions of the frame side.
* the expression judge (`ControlNet`): the corpus's per-frame render controls (`JUDGED_CONTROLS`: the mouth and
  upper-face controls and the head's rotation) read back from a frame, so a table can say WHAT a generated face
  misses (a smile, raised brows, an open jaw), which a class accuracy cannot. Framing (tx, ty, scale) is left
  out: the training shift augmentation moves it on purpose.
Checkpoint: {model: {emotion, landmarks?, controls?}, config: {arch: evaluator, emotions, image_size, width,
frame_size, controls}, step, metrics}. A corpus without landmarks (MEAD ingest) gives
a checkpoint without `landmarks`: LMD then needs dlib (`pipeline.evaluation.landmark_detect`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.core.checkpoints import load_strict, load_training_state
from pipeline.core.errors import CheckpointError
from pipeline.core.media import faces_bgr
from pipeline.corpus.controls import FACE_CONTROLS, MOUTH_CONTROLS
from pipeline.judges.mouth_landmarks import (
    LandmarkNet,
    LandmarkRegressor,
    conv_features,
    face_input,
    features_hw,
)

ARCH = "evaluator"
FACE_POINTS = 68
MOUTH_JUDGED = MOUTH_CONTROLS
UPPER_JUDGED = FACE_CONTROLS
JUDGED_CONTROLS = MOUTH_JUDGED + UPPER_JUDGED + ("yaw", "pitch", "roll")


class ControlNet(nn.Module):
    """[B,3,S,S] BGR in [0,1] -> [B,C] render controls in their own units (the head learns them standardised by
    the training frames' mean and std, kept as buffers)."""

    def __init__(self, width: int, controls: int, input_hw: tuple[int, int]):
        super().__init__()
        self.width, self.controls, self.input_hw = width, controls, tuple(input_hw)
        self.features, channels = conv_features(width)
        h, w = features_hw(self.input_hw)
        self.head = nn.Linear(channels * h * w, controls)
        self.register_buffer("mean", torch.zeros(controls))
        self.register_buffer("std", torch.ones(controls))

    def standardized(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x).flatten(1)
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.head(features.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.standardized(x) * self.std + self.mean


class EmotionNet(nn.Module):
    """[B,3,S,S] BGR in [0,1] -> [B,classes] emotion logits (fp32)."""

    def __init__(self, width: int, classes: int, dropout: float = 0.2):
        super().__init__()
        self.width, self.classes = width, classes
        self.features, channels = conv_features(width)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).float().mean(dim=(2, 3))
        with torch.autocast(device_type=pooled.device.type, enabled=False):
            return self.head(pooled)


def face_landmark_net(width: int, image_size: int) -> LandmarkNet:
    return LandmarkNet(width, FACE_POINTS, (image_size, image_size))


@dataclass
class Evaluator:
    """Both judges, ready for frames of any size (uint8 RGB (T,H,W,3), as the stores hold them)."""

    emotion_net: EmotionNet
    emotions: tuple[str, ...]
    image_size: int
    landmarks: LandmarkRegressor | None = None
    metrics: dict = field(default_factory=dict)
    batch_size: int = 256
    controls: ControlNet | None = None
    control_names: tuple[str, ...] = ()

    def faces(self, frames_rgb: np.ndarray) -> np.ndarray:
        return faces_bgr(np.asarray(frames_rgb), self.image_size)

    def emotion_logits(self, frames_rgb: np.ndarray) -> np.ndarray:
        """(T, classes) logits in the order of `emotions`."""
        return self.emotion_logits_of_faces(self.faces(frames_rgb))

    @torch.inference_mode()
    def emotion_logits_of_faces(self, faces: np.ndarray) -> np.ndarray:
        """Logits of uint8 BGR faces already at `image_size` (T,S,S,3)."""
        self.emotion_net.eval()
        out = [self.emotion_net(face_input(faces[i:i + self.batch_size])).numpy()
               for i in range(0, len(faces), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.emotions)), np.float32)

    def expression_controls(self, frames_rgb: np.ndarray) -> np.ndarray:
        """(T, C) render controls read from frames (names `control_names`)."""
        return self.expression_controls_of_faces(self.faces(frames_rgb))

    @torch.inference_mode()
    def expression_controls_of_faces(self, faces: np.ndarray) -> np.ndarray:
        """Controls of uint8 BGR faces already at `image_size` (T,S,S,3)."""
        if self.controls is None:
            raise CheckpointError(None, "this evaluator has no expression judge (corpus without render controls)")
        self.controls.eval()
        out = [self.controls(face_input(faces[i:i + self.batch_size])).numpy()
               for i in range(0, len(faces), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.control_names)), np.float32)

    def face_landmarks(self, frames_rgb: np.ndarray) -> np.ndarray:
        """(T,68,2) points in pixels of the given frames (x along width, y along height)."""
        if self.landmarks is None:
            raise CheckpointError(None, "this evaluator has no landmark regressor (corpus without landmarks)")
        frames_rgb = np.asarray(frames_rgb)
        fractions = self.landmarks.predict(self.faces(frames_rgb), self.batch_size) / self.landmarks.frame_size
        return (fractions * np.array([frames_rgb.shape[2], frames_rgb.shape[1]], np.float64)).astype(np.float32)


def control_columns(store) -> list[int] | None:
    """Columns of JUDGED_CONTROLS in the store's `render_params` (built-in corpus, wide set), None without them
    (MEAD, LRW: no render controls)."""
    names = list(store.attrs.get("render_params", []))
    if "render_params" not in store or not set(JUDGED_CONTROLS) <= set(names) or store["render_params"].shape[0] == 0:
        return None
    columns = [names.index(c) for c in JUDGED_CONTROLS]
    return columns if np.isfinite(store["render_params"][0][columns]).all() else None


def evaluator_config(emotions: Sequence[str], image_size: int, width: int, frame_size: int,
                     controls: Sequence[str] = ()) -> dict[str, Any]:
    """What rebuilds the judges (frame_size 0: no landmark regressor; no controls: no expression judge). Fixed
    before training, so a resumed run can check it; held-out errors are results and live in the metrics."""
    return {"arch": ARCH, "emotions": list(emotions), "image_size": int(image_size), "width": int(width),
            "frame_size": int(frame_size), "controls": list(controls)}


def load_evaluator(path: str | Path) -> Evaluator:
    """evaluator.pt -> Evaluator in eval mode (weights_only load; another model's checkpoint is refused)."""
    ckpt = load_training_state(path)
    config = ckpt["config"] if isinstance(ckpt["config"], Mapping) else {}
    model = ckpt["model"] if isinstance(ckpt["model"], Mapping) else {}
    if config.get("arch") != ARCH or "emotion" not in model:
        found = config.get("arch") or ", ".join(sorted(model)) or "unknown"
        raise CheckpointError(path, f"checkpoint of the wrong model ({found}); expected an evaluator checkpoint")
    try:
        emotions = tuple(str(e) for e in config["emotions"])
        size, width = int(config["image_size"]), int(config["width"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(path, f"bad evaluator config ({exc})") from None
    emotion_net = EmotionNet(width, len(emotions))
    load_strict(emotion_net, model["emotion"], path)
    landmarks = None
    if "landmarks" in model:
        net = face_landmark_net(width, size)
        load_strict(net, model["landmarks"], path)
        metrics = ckpt.get("metrics") or {}
        # the held-out error: a metric since training can resume (older checkpoints kept it in the config)
        err = metrics.get("landmark_error_px", config.get("landmarks_heldout_err_px"))
        landmarks = LandmarkRegressor(net.eval(), float(err or 0.0),
                                      int(config["frame_size"]), int(ckpt["step"]), crop_top=0)
    names = tuple(str(c) for c in config.get("controls") or ())
    controls = None
    if names:
        if "controls" not in model:
            raise CheckpointError(path, "the config names expression controls but the checkpoint has no 'controls'")
        controls = ControlNet(width, len(names), (size, size))
        load_strict(controls, model["controls"], path)
        controls.eval()
    return Evaluator(emotion_net.eval(), emotions, size, landmarks, dict(ckpt.get("metrics") or {}),
                     controls=controls, control_names=names)
