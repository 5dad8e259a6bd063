"""syncnet_python's SyncNet (Chung & Zisserman 2016, `SyncNetModel.S`), the LSE-C/LSE-D scorer.

Sequential indices (ReLU and pooling included) follow the official module, so at
`SyncNetV2Config.official()` the state dict equals `checkpoint-specs/syncnet_v2.json` and the
released `syncnet_v2.model` (a bare state dict) loads strictly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.core.checkpoints import extract_state_dict, load_file, load_strict
from pipeline.core.errors import CheckpointError, InputError
from pipeline.models.wav2lip import config_from_dict, scale_channels

WINDOW_FRAMES = 5  # video frames per window; the audio window is the matching 20 MFCC steps


@dataclass(frozen=True)
class SyncNetV2Config:
    """Widths; input sizes (MFCC 1x13x20, video 3x5x224x224) are fixed.

    audio_channels / lip_channels: the six conv layers of each stream (the last one reduces to
    1x1 and feeds the FC head); fc_hidden: the FC heads' hidden width; embed_dim: output size
    (`num_layers_in_fc_layers`, 1024 for the released model).
    """

    audio_channels: tuple[int, ...] = (64, 192, 384, 256, 256, 512)
    lip_channels: tuple[int, ...] = (96, 256, 256, 256, 256, 512)
    fc_hidden: int = 512
    embed_dim: int = 1024

    def __post_init__(self) -> None:
        for name in ("audio_channels", "lip_channels"):
            if len(getattr(self, name)) != 6:
                raise InputError(None, f"SyncNetV2Config.{name} needs 6 entries, got {len(getattr(self, name))}")

    @classmethod
    def official(cls) -> SyncNetV2Config:
        """`S(num_layers_in_fc_layers=1024)`, 13,631,616 parameters."""
        return cls()

    @classmethod
    def scaled(cls, width: float) -> SyncNetV2Config:
        """Every width (embedding included) times `width`."""
        base = cls()
        fc_hidden, embed_dim = scale_channels((base.fc_hidden, base.embed_dim), width)
        return cls(audio_channels=scale_channels(base.audio_channels, width),
                   lip_channels=scale_channels(base.lip_channels, width), fc_hidden=fc_hidden, embed_dim=embed_dim)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SyncNetV2Config:
        return config_from_dict(cls, data)


def _audio_stream(c: tuple[int, ...]) -> nn.Sequential:
    """13x20 MFCC -> 1x1: 3x3 convs; max-pools 3x3/(1,2) (-> 11x9) and 3x3/2 (-> 5x4); 5x4 conv."""
    def unit(cin: int, cout: int, kernel: tuple[int, int] = (3, 3), padding: tuple[int, int] = (1, 1)) -> list:
        return [nn.Conv2d(cin, cout, kernel, padding=padding), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *unit(1, c[0]), nn.Identity(),  # index 3 holds a 1x1 max-pool (a no-op) in the official module
        *unit(c[0], c[1]), nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),
        *unit(c[1], c[2]),
        *unit(c[2], c[3]),
        *unit(c[3], c[4]), nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
        *unit(c[4], c[5], kernel=(5, 4), padding=(0, 0)),
    )


def _lip_stream(c: tuple[int, ...]) -> nn.Sequential:
    """5x224x224 -> 1x1x1: a 5x7x7 conv fuses time, then per-frame 2-D convs (as 1xkxk 3-D convs)."""
    def unit(cin: int, cout: int, kernel: tuple[int, int, int], stride: tuple[int, int, int] = (1, 1, 1),
             padding: tuple[int, int, int] = (0, 1, 1)) -> list:
        return [nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding), nn.BatchNorm3d(cout), nn.ReLU()]

    return nn.Sequential(
        *unit(3, c[0], (5, 7, 7), stride=(1, 2, 2), padding=(0, 0, 0)),                     # 109x109
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),                                # 54x54
        *unit(c[0], c[1], (1, 5, 5), stride=(1, 2, 2)),                                       # 26x26
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),             # 13x13
        *unit(c[1], c[2], (1, 3, 3)),
        *unit(c[2], c[3], (1, 3, 3)),
        *unit(c[3], c[4], (1, 3, 3)), nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),  # 6x6
        *unit(c[4], c[5], (1, 6, 6), padding=(0, 0, 0)),                                      # 1x1
    )


def _fc_head(cin: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out))


class SyncNetV2(nn.Module):
    """Two-stream SyncNet: `forward_aud` (MFCC [B,1,13,20]) and `forward_lip` (video [B,3,5,224,224],
    BGR 0..255, no normalisation) give [B,embed_dim] features, not normalised; `forward_lipfeat`
    the [B,lip_channels[-1]] conv feature. `forward(mfcc, video)` returns (audio, lip)."""

    def __init__(self, config: SyncNetV2Config | None = None):
        super().__init__()
        self.config = config = config or SyncNetV2Config.official()
        self.netcnnaud = _audio_stream(config.audio_channels)
        self.netfcaud = _fc_head(config.audio_channels[-1], config.fc_hidden, config.embed_dim)
        self.netfclip = _fc_head(config.lip_channels[-1], config.fc_hidden, config.embed_dim)
        self.netcnnlip = _lip_stream(config.lip_channels)

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lipfeat(self, video: torch.Tensor) -> torch.Tensor:
        return self.netcnnlip(video).flatten(1)

    def forward_lip(self, video: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.forward_lipfeat(video))

    def forward(self, mfcc: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_aud(mfcc), self.forward_lip(video)


def syncnet_v2_video_window(frames_bgr: np.ndarray) -> np.ndarray:
    """Scorer video input: [5,H,W,3] uint8 BGR crops (224 px) -> [3,5,H,W] float32, raw 0..255 values."""
    if (frames_bgr.dtype != np.uint8 or frames_bgr.ndim != 4 or frames_bgr.shape[0] != WINDOW_FRAMES
            or frames_bgr.shape[3] != 3):
        raise InputError(None, f"expected {WINDOW_FRAMES} uint8 BGR frames [5,H,W,3], "
                               f"got {frames_bgr.dtype} {frames_bgr.shape}")
    return np.ascontiguousarray(frames_bgr.transpose(3, 0, 1, 2), dtype=np.float32)


def load_official_syncnet_v2(path: str | Path) -> SyncNetV2:
    """Official `syncnet_v2.model` (bare state dict) -> eval-mode SyncNetV2."""
    model = SyncNetV2(SyncNetV2Config.official())
    state_dict = extract_state_dict(load_file(path), path)
    try:
        load_strict(model, state_dict, path)
    except CheckpointError as exc:
        raise CheckpointError(path, f"not a syncnet_python SyncNet (v2) checkpoint: {exc.problem}") from None
    return model.eval()
