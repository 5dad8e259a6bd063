"""FOMM inference plumbing shared by stages: load `fomm.pt`, frames -> tensors, keypoints, reconstruction.

`fomm.pt` is what the train_fomm stage writes: {model: {kp_detector, generator}, config:
FommConfig.to_dict(), step, metrics[, train_state]}; `config` rebuilds the modules without params.yaml.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.checkpoints import load_strict, load_training_state
from pipeline.core.errors import CheckpointError, InputError
from pipeline.models.fomm import FommConfig, KPDetector, OcclusionAwareGenerator


@dataclass
class FommModel:
    """A loaded fomm.pt: config, eval-mode modules on the CPU, training step and metrics."""

    config: FommConfig
    kp_detector: KPDetector
    generator: OcclusionAwareGenerator
    step: int = 0
    metrics: dict = field(default_factory=dict)


def load_fomm(path: str | Path) -> FommModel:
    """A `fomm.pt` written by the train_fomm stage, strictly loaded; one-line CheckpointError otherwise."""
    return fomm_from_checkpoint(load_training_state(path), path)


def fomm_from_checkpoint(ckpt: Mapping[str, Any], path: str | Path) -> FommModel:
    """`load_fomm` on a checkpoint already read (load_training_state) from `path`, for callers that need its
    train_state too."""
    model = ckpt["model"]
    if not isinstance(model, Mapping) or not {"kp_detector", "generator"} <= set(model):
        raise CheckpointError(path, "not an FOMM checkpoint: model needs kp_detector and generator")
    try:
        config = FommConfig.from_dict(ckpt["config"])
    except InputError as exc:
        raise CheckpointError(path, exc.problem) from None
    kp_detector, generator = KPDetector(config), OcclusionAwareGenerator(config)
    for name, module in (("kp_detector", kp_detector), ("generator", generator)):
        try:
            load_strict(module, model[name], path)
        except CheckpointError as exc:
            raise CheckpointError(path, f"[{name}] {exc.problem}") from None
    return FommModel(config, kp_detector.eval(), generator.eval(), int(ckpt["step"]), dict(ckpt.get("metrics") or {}))


def frames_to_tensor(frames: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (B,H,W,3) -> float [B,3,size,size] in [0,1]; resized (antialiased bilinear) if H,W != size."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
    return x


def module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


@torch.inference_mode()
def detect_keypoints(kp_detector: KPDetector, frames: np.ndarray, image_size: int, batch_size: int = 64,
                     bf16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames (T,H,W,3) -> value (T,N,2) and jacobian (T,N,2,2) float32 (computed on the detector's
    device); NaN jacobian if the model estimates none. `bf16`: the convs under bf16 autocast, as train_fomm
    trains them (CPU: 4.5 -> 1.7 ms a frame; keypoints move by ~1% of their spread over a clip)."""
    num_kp, device = kp_detector.kp.out_channels, module_device(kp_detector)
    values = np.full((len(frames), num_kp, 2), np.nan, np.float32)
    jacobians = np.full((len(frames), num_kp, 2, 2), np.nan, np.float32)
    for start in range(0, len(frames), batch_size):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = kp_detector(frames_to_tensor(frames[start:start + batch_size], image_size).to(device))
        stop = start + out["value"].shape[0]
        values[start:stop] = out["value"].float().cpu().numpy()
        if "jacobian" in out:
            jacobians[start:stop] = out["jacobian"].float().cpu().numpy()
    return values, jacobians


def keypoints_dict(value: np.ndarray, jacobian: np.ndarray) -> dict[str, torch.Tensor]:
    """Numpy keypoints (B,N,2)/(B,N,2,2) -> the dict the generator takes (jacobian left out if NaN)."""
    kp = {"value": torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))}
    if not np.isnan(jacobian).any():
        kp["jacobian"] = torch.from_numpy(np.ascontiguousarray(jacobian, dtype=np.float32))
    return kp


@torch.inference_mode()
def reconstruct(generator: OcclusionAwareGenerator, source: torch.Tensor, kp_source: Mapping[str, torch.Tensor],
                kp_driving: Mapping[str, torch.Tensor], batch_size: int = 16) -> torch.Tensor:
    """Source image [1,3,S,S] animated by each driving keypoint set (B of them) -> predictions [B,3,S,S] on
    the CPU (computed on the generator's device)."""
    device = module_device(generator)
    count = kp_driving["value"].shape[0]
    source = source.to(device)
    outputs = []
    for start in range(0, count, batch_size):
        driving = {k: v[start:start + batch_size].to(device) for k, v in kp_driving.items()}
        b = driving["value"].shape[0]
        kp_src = {k: v[:1].to(device).expand(b, *v.shape[1:]) for k, v in kp_source.items()}
        out = generator(source.expand(b, -1, -1, -1), kp_driving=driving, kp_source=kp_src)["prediction"]
        outputs.append(out.float().cpu())
    return torch.cat(outputs) if outputs else torch.zeros(0, *source.shape[1:])
