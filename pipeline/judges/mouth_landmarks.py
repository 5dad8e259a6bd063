"""A small CNN that reads the 68 landmarks off a face, to score generated frames (evaluate) and re-dubbed mouths
(pseudo_pairs, points 48..67).

Generated frames have no ground-truth landmarks, so they are measured with a regressor trained on the
corpus's real frames, whose landmarks are exact (`train_evaluator`). Output: the points as fractions of the
frame side (multiply by the corpus frame size for pixels). Half of each training batch is blurred by a 2x
down/up resize, so a generator's softer output reads like a real frame. The held-out error is reported alongside.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MOUTH = slice(48, 68)
STAGES = 4  # stride-2 conv blocks: 96 px -> 6 px


def conv_features(width: int) -> tuple[nn.Sequential, int]:
    """Four (stride-2 conv, conv) blocks with BatchNorm/ReLU; returns the stack and its output channels."""
    chans = (3, width, 2 * width, 4 * width, 6 * width)
    layers: list[nn.Module] = []
    for cin, cout in zip(chans[:-1], chans[1:]):
        layers += [nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.ReLU(),
                   nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*layers), chans[-1]


def features_hw(input_hw: tuple[int, int]) -> tuple[int, int]:
    """Spatial size after the stride-2 blocks (kernel 3, padding 1: ceil(n / 2) each)."""
    h, w = input_hw
    for _ in range(STAGES):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


class LandmarkNet(nn.Module):
    """[B,3,H,W] BGR in [0,1] -> [B,P,2] points (x, y) as fractions of the face side."""

    def __init__(self, width: int, points: int, input_hw: tuple[int, int]):
        super().__init__()
        self.width, self.points, self.input_hw = width, points, tuple(input_hw)
        self.features, channels = conv_features(width)
        h, w = features_hw(self.input_hw)
        self.head = nn.Linear(channels * h * w, 2 * points)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x).flatten(1)
        # the head stays fp32 under bf16 autocast: bf16 would round a point to ~0.25 px at 128 px
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.head(features.float()).view(-1, self.points, 2) + 0.5


def face_input(faces_bgr: np.ndarray, crop_top: int = 0) -> torch.Tensor:
    """uint8 BGR faces [T,S,S,3] -> network input [T,3,S-crop_top,S] in [0,1] (rows above crop_top dropped)."""
    crop = np.ascontiguousarray(faces_bgr[:, crop_top:].transpose(0, 3, 1, 2))
    return torch.from_numpy(crop).float().div_(255.0)


def soften(x: torch.Tensor) -> torch.Tensor:
    """2x bilinear down and up: about the sharpness of a generated 96 px face."""
    small = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(small, size=x.shape[2:], mode="bilinear", align_corners=False)


@dataclass
class LandmarkRegressor:
    net: LandmarkNet
    heldout_err_px: float  # mean point error on held-out real frames, corpus pixels
    frame_size: int  # corpus frame side the landmarks are measured in
    steps: int
    crop_top: int = 0  # rows of the face_size face the net does not see

    @property
    def face_size(self) -> int:
        """Side of the BGR face `predict` takes (the net sees rows crop_top.. of it)."""
        return self.net.input_hw[1]

    @torch.inference_mode()
    def predict(self, faces_bgr: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """[T,P,2] points in corpus pixels from uint8 BGR faces [T,face_size,face_size,3]."""
        self.net.eval()
        out = [self.net(face_input(faces_bgr[i:i + batch_size], self.crop_top)).numpy()
               for i in range(0, len(faces_bgr), batch_size)]
        return (np.concatenate(out) if out else np.zeros((0, self.net.points, 2), np.float32)) * self.frame_size

    def state(self) -> dict:
        return {"net": {k: v.cpu() for k, v in self.net.state_dict().items()}, "width": self.net.width,
                "heldout_err_px": self.heldout_err_px, "frame_size": self.frame_size, "steps": self.steps,
                "points": self.net.points, "input_hw": list(self.net.input_hw), "crop_top": self.crop_top}

    @classmethod
    def from_state(cls, state: dict) -> LandmarkRegressor:
        """Rebuild from `state()` (how pseudo_pairs hands the judge to its Dask workers)."""
        net = LandmarkNet(int(state["width"]), int(state["points"]), tuple(int(v) for v in state["input_hw"]))
        net.load_state_dict(state["net"])
        return cls(net.eval(), float(state["heldout_err_px"]), int(state["frame_size"]), int(state["steps"]),
                   int(state["crop_top"]))


def point_error(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean Euclidean distance over frames and points."""
    return float(np.linalg.norm(pred - truth, axis=-1).mean())


def budget_progress(step: int, max_steps: int, seconds: float, max_minutes: float) -> float:
    """Fraction of the training budget used: steps or wall-clock minutes, whichever is further along."""
    by_time = seconds / (max_minutes * 60) if max_minutes > 0 else 0.0
    return max(step / max(max_steps, 1), by_time)


def set_cosine_lr(optimizer: torch.optim.Optimizer, lr: float, progress: float) -> None:
    """Cosine decay from `lr` to 0 as `progress` goes 0 -> 1 (a Python float: optimizer states load weights-only)."""
    for group in optimizer.param_groups:
        group["lr"] = float(lr * 0.5 * (1.0 + np.cos(np.pi * progress)))


def landmark_loss(net: LandmarkNet, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Smooth L1 on points in frame-side fractions (beta 0.01: L1 beyond ~1 px at 128 px)."""
    return F.smooth_l1_loss(net(x), target, beta=0.01)
