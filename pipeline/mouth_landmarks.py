"""Small CNNs that read landmarks off a face: the 20 mouth points (dlib 48..67) or all 68, to score generated frames.

Generated frames have no ground-truth landmarks, so they are measured with a regressor trained on the
corpus's real frames, whose landmarks are exact. The mouth regressor (pseudo_pairs) reads the lower 5/8
of a 96x96 BGR face (rows 36..95, the whole mouth with margin); the face regressor of `train_evaluator`
reads the whole face (`crop_top` 0). Output: the points as fractions of the frame side (multiply by the
corpus frame size for pixels). Half of each batch is blurred by a 2x down/up resize, so a generator's
softer output reads like a real frame. Each regressor's own held-out error is reported alongside.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.lipsync_data import FACE_SIZE

MOUTH = slice(48, 68)
MOUTH_POINTS = 20
CROP_TOP = FACE_SIZE * 3 // 8  # 36: rows above hold no mouth point in any corpus frame
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

    def __init__(self, width: int = 16, points: int = MOUTH_POINTS,
                 input_hw: tuple[int, int] = (FACE_SIZE - CROP_TOP, FACE_SIZE)):
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


class MouthLandmarkNet(LandmarkNet):
    """[B,3,60,96] BGR in [0,1] -> [B,20,2] mouth points (x, y) as fractions of the face side."""

    def __init__(self, width: int = 16):
        super().__init__(width)


def face_input(faces_bgr: np.ndarray, crop_top: int = 0) -> torch.Tensor:
    """uint8 BGR faces [T,S,S,3] -> network input [T,3,S-crop_top,S] in [0,1] (rows above crop_top dropped)."""
    crop = np.ascontiguousarray(faces_bgr[:, crop_top:].transpose(0, 3, 1, 2))
    return torch.from_numpy(crop).float().div_(255.0)


def mouth_input(faces_bgr: np.ndarray) -> torch.Tensor:
    """uint8 BGR faces [T,96,96,3] -> network input [T,3,60,96] in [0,1]."""
    return face_input(faces_bgr, CROP_TOP)


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
    crop_top: int = CROP_TOP  # rows of the face_size face the net does not see

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
        """Rebuild from `state()`; a state without points/input_hw/crop_top is a mouth regressor."""
        net = LandmarkNet(int(state["width"]), int(state.get("points", MOUTH_POINTS)),
                          tuple(int(v) for v in state.get("input_hw", (FACE_SIZE - CROP_TOP, FACE_SIZE))))
        net.load_state_dict(state["net"])
        return cls(net.eval(), float(state["heldout_err_px"]), int(state["frame_size"]), int(state["steps"]),
                   int(state.get("crop_top", CROP_TOP)))


MouthRegressor = LandmarkRegressor  # the name pseudo_pairs knows; its defaults are the mouth regressor's


def point_error(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean Euclidean distance over frames and points."""
    return float(np.linalg.norm(pred - truth, axis=-1).mean())


def budget_progress(step: int, max_steps: int, seconds: float, max_minutes: float) -> float:
    """Fraction of the training budget used: steps or wall-clock minutes, whichever is further along."""
    by_time = seconds / (max_minutes * 60) if max_minutes > 0 else 0.0
    return max(step / max(max_steps, 1), by_time)


def set_cosine_lr(optimizer: torch.optim.Optimizer, lr: float, progress: float) -> None:
    """Cosine decay from `lr` to 0 over whichever budget (steps or minutes) runs out first."""
    for group in optimizer.param_groups:
        group["lr"] = lr * 0.5 * (1.0 + np.cos(np.pi * progress))


def landmark_loss(net: LandmarkNet, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Smooth L1 on points in frame-side fractions (beta 0.01: L1 beyond ~1 px at 128 px)."""
    return F.smooth_l1_loss(net(x), target, beta=0.01)


def train_mouth_regressor(train_faces: np.ndarray, train_mouth: np.ndarray, test_faces: np.ndarray,
                          test_mouth: np.ndarray, frame_size: int, *, seed: int, max_steps: int,
                          max_minutes: float, batch_size: int = 64, lr: float = 1e-3, width: int = 16,
                          log=print) -> LandmarkRegressor:
    """Fit on (faces [N,96,96,3] BGR, mouth points [N,20,2] in corpus px); report held-out error in px."""
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 303])
    net = MouthLandmarkNet(width)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    target = torch.from_numpy(np.asarray(train_mouth, np.float32) / frame_size)
    started, step = time.monotonic(), 0
    net.train()
    while (progress := budget_progress(step, max_steps, time.monotonic() - started, max_minutes)) < 1.0:
        set_cosine_lr(optimizer, lr, progress)
        idx = rng.integers(len(train_faces), size=batch_size)
        x = mouth_input(train_faces[idx])
        x[: batch_size // 2] = soften(x[: batch_size // 2])
        loss = landmark_loss(net, x, target[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
    regressor = LandmarkRegressor(net.eval(), 0.0, frame_size, step)
    regressor.heldout_err_px = point_error(regressor.predict(test_faces), test_mouth)
    log(f"mouth landmarks: {step} steps in {time.monotonic() - started:.0f}s, held-out error "
        f"{regressor.heldout_err_px:.3f} px at {frame_size} px")
    return regressor
