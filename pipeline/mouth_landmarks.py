"""A small CNN that reads the 20 mouth landmarks (dlib 48..67) off a face, to score generated mouths.

Generated frames have no ground-truth landmarks, so pseudo clips are measured with a regressor trained
on the corpus's real frames, whose landmarks are exact. Input: the lower 5/8 of a 96x96 BGR face
(rows 36..95, the whole mouth with margin); output: the 20 points as fractions of the frame side
(multiply by the corpus frame size for pixels). Half of each batch is blurred by a 2x down/up resize,
so Wav2Lip's softer output reads like a real frame. Its own held-out error is reported alongside.
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


class MouthLandmarkNet(nn.Module):
    """[B,3,60,96] BGR in [0,1] -> [B,20,2] mouth points (x, y) as fractions of the face side."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.width = width
        chans = (3, width, 2 * width, 4 * width, 6 * width)
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.ReLU(),
                       nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU()]
        self.features = nn.Sequential(*layers)  # 60x96 -> 4x6
        self.head = nn.Linear(chans[-1] * 4 * 6, 2 * MOUTH_POINTS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1)).view(-1, MOUTH_POINTS, 2) + 0.5


def mouth_input(faces_bgr: np.ndarray) -> torch.Tensor:
    """uint8 BGR faces [T,96,96,3] -> network input [T,3,60,96] in [0,1]."""
    crop = np.ascontiguousarray(faces_bgr[:, CROP_TOP:].transpose(0, 3, 1, 2))
    return torch.from_numpy(crop).float().div_(255.0)


def soften(x: torch.Tensor) -> torch.Tensor:
    """2x bilinear down and up: about the sharpness of a generated 96 px face."""
    small = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(small, size=x.shape[2:], mode="bilinear", align_corners=False)


@dataclass
class MouthRegressor:
    net: MouthLandmarkNet
    heldout_err_px: float  # mean point error on held-out real frames, corpus pixels
    frame_size: int  # corpus frame side the landmarks are measured in
    steps: int

    @torch.inference_mode()
    def predict(self, faces_bgr: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """[T,20,2] mouth points in corpus pixels."""
        self.net.eval()
        out = [self.net(mouth_input(faces_bgr[i:i + batch_size])).numpy() for i in range(0, len(faces_bgr), batch_size)]
        return (np.concatenate(out) if out else np.zeros((0, MOUTH_POINTS, 2), np.float32)) * self.frame_size

    def state(self) -> dict:
        return {"net": {k: v.cpu() for k, v in self.net.state_dict().items()}, "width": self.net.width,
                "heldout_err_px": self.heldout_err_px, "frame_size": self.frame_size, "steps": self.steps}

    @classmethod
    def from_state(cls, state: dict) -> MouthRegressor:
        net = MouthLandmarkNet(int(state["width"]))
        net.load_state_dict(state["net"])
        return cls(net.eval(), float(state["heldout_err_px"]), int(state["frame_size"]), int(state["steps"]))


def point_error(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean Euclidean distance over frames and points."""
    return float(np.linalg.norm(pred - truth, axis=-1).mean())


def _progress(step: int, max_steps: int, seconds: float, max_minutes: float) -> float:
    """Fraction of the training budget used: steps or wall-clock minutes, whichever is further along."""
    by_time = seconds / (max_minutes * 60) if max_minutes > 0 else 0.0
    return max(step / max(max_steps, 1), by_time)


def train_mouth_regressor(train_faces: np.ndarray, train_mouth: np.ndarray, test_faces: np.ndarray,
                          test_mouth: np.ndarray, frame_size: int, *, seed: int, max_steps: int,
                          max_minutes: float, batch_size: int = 64, lr: float = 1e-3, width: int = 16,
                          log=print) -> MouthRegressor:
    """Fit on (faces [N,96,96,3] BGR, mouth points [N,20,2] in corpus px); report held-out error in px."""
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 303])
    net = MouthLandmarkNet(width)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    target = torch.from_numpy(np.asarray(train_mouth, np.float32) / frame_size)
    started, step = time.monotonic(), 0
    net.train()
    while (progress := _progress(step, max_steps, time.monotonic() - started, max_minutes)) < 1.0:
        for group in optimizer.param_groups:  # cosine decay over whichever budget runs out first
            group["lr"] = lr * 0.5 * (1.0 + np.cos(np.pi * progress))
        idx = rng.integers(len(train_faces), size=batch_size)
        x = mouth_input(train_faces[idx])
        x[: batch_size // 2] = soften(x[: batch_size // 2])
        loss = F.smooth_l1_loss(net(x), target[idx], beta=0.01)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
    regressor = MouthRegressor(net.eval(), 0.0, frame_size, step)
    regressor.heldout_err_px = point_error(regressor.predict(test_faces), test_mouth)
    log(f"mouth landmarks: {step} steps in {time.monotonic() - started:.0f}s, held-out error "
        f"{regressor.heldout_err_px:.3f} px at {frame_size} px")
    return regressor
