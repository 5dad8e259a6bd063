"""Wav2Lip's lip-sync expert SyncNet_color, with the official state-dict layout, plus its face-window helper.

At `SyncNetColorConfig.official()` the state dict equals `checkpoint-specs/wav2lip_syncnet.json`,
so the released `lipsync_expert.pth` loads strictly; smaller widths come from the same class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.checkpoints import extract_state_dict, load_file, load_strict
from pipeline.core.errors import CheckpointError, InputError
from pipeline.models.wav2lip import (
    ConvUnit,
    config_from_dict,
    mel_encoder,
    scale_channels,
)

WINDOW_FRAMES = 5  # the expert sees 5 consecutive frames (0.2 s at 25 fps) against 16 mel steps


@dataclass(frozen=True)
class SyncNetColorConfig:
    """Widths and depths; input sizes (15x48x96 faces, 1x80x16 mel) are fixed.

    face_channels: stem (7x7) then five stride-2 stages (the first strides only the width, 5x5
    kernel), 48x96 -> 46x47 -> 23x24 -> 12x12 -> 6x6 -> 3x3; face_residuals: residual units per stage.
    Both encoders end with an unpadded 3x3 and a 1x1 conv unit to `embed_dim`.
    """

    face_channels: tuple[int, ...] = (32, 64, 128, 256, 512, 512)
    face_residuals: tuple[int, ...] = (2, 3, 2, 2, 0)
    audio_channels: tuple[int, ...] = (32, 64, 128, 256)
    audio_residuals: tuple[int, ...] = (2, 2, 2, 2)
    embed_dim: int = 512

    def __post_init__(self) -> None:
        expected = {"face_channels": 6, "face_residuals": 5, "audio_channels": 4, "audio_residuals": 4}
        for name, length in expected.items():
            if len(getattr(self, name)) != length:
                raise InputError(None, f"SyncNetColorConfig.{name} needs {length} entries, "
                                       f"got {len(getattr(self, name))}")

    @classmethod
    def official(cls) -> SyncNetColorConfig:
        """The released expert's layout (16,435,072 parameters)."""
        return cls()

    @classmethod
    def scaled(cls, width: float) -> SyncNetColorConfig:
        """Official depths with every channel count times `width`."""
        base = cls()
        return cls(face_channels=scale_channels(base.face_channels, width), face_residuals=base.face_residuals,
                   audio_channels=scale_channels(base.audio_channels, width), audio_residuals=base.audio_residuals,
                   embed_dim=scale_channels((base.embed_dim,), width)[0])

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SyncNetColorConfig:
        return config_from_dict(cls, data)


class SyncNetColor(nn.Module):
    """forward(mel [B,1,80,16], faces [B,15,48,96]) -> (audio, face) L2-normalised [B,embed_dim] embeddings."""

    def __init__(self, config: SyncNetColorConfig | None = None):
        super().__init__()
        self.config = config = config or SyncNetColorConfig.official()
        fc = config.face_channels
        units: list[nn.Module] = [ConvUnit(3 * WINDOW_FRAMES, fc[0], 7, 1, 3)]
        for i, n_res in enumerate(config.face_residuals, start=1):
            # The first stage halves only the width: 48x96 lower halves become square.
            kernel, stride = (5, (1, 2)) if i == 1 else (3, 2)
            units.append(ConvUnit(fc[i - 1], fc[i], kernel, stride, 1))
            units += [ConvUnit(fc[i], fc[i], 3, 1, 1, residual=True) for _ in range(n_res)]
        units += [ConvUnit(fc[-1], config.embed_dim, 3, 1, 0), ConvUnit(config.embed_dim, config.embed_dim, 1, 1, 0)]
        self.face_encoder = nn.Sequential(*units)
        self.audio_encoder = mel_encoder(config.audio_channels, config.audio_residuals, config.embed_dim)

    def forward(self, mel: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        audio = self.audio_encoder(mel).flatten(1)
        face = self.face_encoder(faces).flatten(1)
        return F.normalize(audio, p=2, dim=1), F.normalize(face, p=2, dim=1)

    def sync_score(self, mel: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of the two embeddings, [B] in [0,1] (post-ReLU features); BCE target of training."""
        audio, face = self(mel, faces)
        return F.cosine_similarity(audio, face)


def syncnet_color_face_window(frames_bgr: np.ndarray) -> np.ndarray:
    """Expert face input: 5 consecutive [5,H,W,3] uint8 BGR faces -> [15,H//2,W] float32 in [0,1].

    Keeps the lower half (rows H//2.., 48..95 at 96 px) and stacks frame-major on the channel
    axis: f0 B,G,R, f1 B,G,R, ... (the official np.concatenate over the colour axis).
    """
    if (frames_bgr.dtype != np.uint8 or frames_bgr.ndim != 4 or frames_bgr.shape[0] != WINDOW_FRAMES
            or frames_bgr.shape[3] != 3):
        raise InputError(None, f"expected {WINDOW_FRAMES} uint8 BGR frames [5,H,W,3], "
                               f"got {frames_bgr.dtype} {frames_bgr.shape}")
    lower = frames_bgr[:, frames_bgr.shape[1] // 2:]
    stacked = lower.transpose(0, 3, 1, 2).reshape(3 * WINDOW_FRAMES, *lower.shape[1:3]) / 255.0
    return stacked.astype(np.float32)


def load_official_syncnet_color(path: str | Path) -> SyncNetColor:
    """Official `lipsync_expert.pth` (or a bare/`module.`-prefixed state dict) -> eval-mode SyncNetColor."""
    model = SyncNetColor(SyncNetColorConfig.official())
    state_dict = extract_state_dict(load_file(path), path)
    try:
        load_strict(model, state_dict, path)
    except CheckpointError as exc:
        raise CheckpointError(path, f"not a Wav2Lip SyncNet_color checkpoint: {exc.problem}") from None
    return model.eval()
