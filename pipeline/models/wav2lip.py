"""Wav2Lip generator (Prajwal et al. 2020) with the official state-dict layout, plus its input preparation.

The conv units and the mel encoder defined here are shared with the SyncNet_color expert
(`pipeline.models.syncnet_color`), as in the official code. At `Wav2LipConfig.official()` the
state dict has exactly the names and shapes of `checkpoint-specs/wav2lip.json`, so the released
`wav2lip.pth` / `wav2lip_gan.pth` load strictly; other widths come from the same class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from pipeline.core.checkpoints import extract_state_dict, load_file, load_strict
from pipeline.core.errors import CheckpointError, InputError

# Strides of the mel encoder's four stages: 80x16 -> 80x16 -> 27x16 -> 9x6 -> 3x3, then a 3x3
# unpadded conv reaches 1x1. Fixed by the 80-band, 16-step window, so not configurable.
MEL_STAGE_STRIDES: tuple[tuple[int, int], ...] = ((1, 1), (3, 1), (3, 3), (3, 2))

ConfigT = TypeVar("ConfigT")


def config_from_dict(cls: type[ConfigT], data: dict[str, Any]) -> ConfigT:
    """Rebuild a config dataclass from `to_dict` output (lists back to tuples); unknown or missing keys fail."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    missing = sorted(names - set(data))
    if unknown or missing:
        raise InputError(None, f"{cls.__name__}: unknown fields {unknown}, missing fields {missing}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def scale_channels(channels: tuple[int, ...], width: float) -> tuple[int, ...]:
    """Channel counts times `width`, rounded, at least 1."""
    return tuple(max(1, round(c * width)) for c in channels)


class ConvUnit(nn.Module):
    """conv -> BN (-> + input when residual) -> ReLU; entries `conv_block.0` (conv) and `conv_block.1` (BN)."""

    def __init__(self, cin: int, cout: int, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1,
                 padding: int | tuple[int, int] = 0, residual: bool = False):
        super().__init__()
        if residual and (cin != cout or stride not in (1, (1, 1))):
            raise ValueError(f"a residual unit keeps its shape; got {cin}->{cout} channels, stride {stride}")
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class TransposedConvUnit(nn.Module):
    """Transposed conv -> BN -> ReLU, with the same entry names as `ConvUnit`."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int, padding: int, output_padding: int = 0):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


def mel_encoder(channels: tuple[int, ...], residuals: tuple[int, ...], embed_dim: int) -> nn.Sequential:
    """Encoder of a [B,1,80,16] mel window to [B,embed_dim,1,1] (one flat Sequential, as in the official code).

    Stage i: a 3x3 conv unit with stride MEL_STAGE_STRIDES[i] to channels[i], then residuals[i]
    residual 3x3 units; head: unpadded 3x3 conv unit to embed_dim, then a 1x1 conv unit.
    """
    if len(channels) != len(MEL_STAGE_STRIDES) or len(residuals) != len(MEL_STAGE_STRIDES):
        raise ValueError(f"mel encoder needs {len(MEL_STAGE_STRIDES)} stage channels and residual counts")
    units: list[nn.Module] = []
    cin = 1
    for cout, n_res, stride in zip(channels, residuals, MEL_STAGE_STRIDES):
        units.append(ConvUnit(cin, cout, 3, stride, 1))
        units += [ConvUnit(cout, cout, 3, 1, 1, residual=True) for _ in range(n_res)]
        cin = cout
    units += [ConvUnit(cin, embed_dim, 3, 1, 0), ConvUnit(embed_dim, embed_dim, 1, 1, 0)]
    return nn.Sequential(*units)


@dataclass(frozen=True)
class Wav2LipConfig:
    """Widths and depths of the generator; the spatial layout (96x96 face, 80x16 mel) is fixed.

    face_channels: 7 face-encoder blocks (96, 48, 24, 12, 6, 3, 1 px); face_residuals: residual units
    after the stride-2 conv of blocks 1..5. decoder_channels: 7 decoder blocks (1, 3, 6, ..., 96 px);
    decoder_residuals: residual units in blocks 1..6. Decoder block i>0 reads its predecessor's output
    concatenated with the face feature of the same resolution (U-Net skips).
    """

    face_channels: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 512)
    face_residuals: tuple[int, ...] = (2, 3, 2, 2, 1)
    audio_channels: tuple[int, ...] = (32, 64, 128, 256)
    audio_residuals: tuple[int, ...] = (2, 2, 2, 1)
    audio_embed_dim: int = 512
    decoder_channels: tuple[int, ...] = (512, 512, 512, 384, 256, 128, 64)
    decoder_residuals: tuple[int, ...] = (1, 2, 2, 2, 2, 2)
    output_hidden: int = 32

    def __post_init__(self) -> None:
        expected = {"face_channels": 7, "face_residuals": 5, "audio_channels": 4, "audio_residuals": 4,
                    "decoder_channels": 7, "decoder_residuals": 6}
        for name, length in expected.items():
            value = getattr(self, name)
            if len(value) != length:
                raise InputError(None, f"Wav2LipConfig.{name} needs {length} entries, got {len(value)}")

    @classmethod
    def official(cls) -> Wav2LipConfig:
        """The released model's layout (36,298,035 parameters)."""
        return cls()

    @classmethod
    def scaled(cls, width: float) -> Wav2LipConfig:
        """Official depths with every channel count times `width` (e.g. 0.25 for CPU training)."""
        base = cls()
        return cls(face_channels=scale_channels(base.face_channels, width), face_residuals=base.face_residuals,
                   audio_channels=scale_channels(base.audio_channels, width), audio_residuals=base.audio_residuals,
                   audio_embed_dim=scale_channels((base.audio_embed_dim,), width)[0],
                   decoder_channels=scale_channels(base.decoder_channels, width),
                   decoder_residuals=base.decoder_residuals,
                   output_hidden=scale_channels((base.output_hidden,), width)[0])

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Wav2LipConfig:
        return config_from_dict(cls, data)


class Wav2Lip(nn.Module):
    """Generator: mel window + (masked target, reference) face -> lower-face-synced face, BGR in [0,1].

    forward(mel [B,1,80,16], face [B,6,96,96]) -> [B,3,96,96]; 5-D calls (mel [B,T,1,80,16],
    face [B,6,T,96,96]) fold T into the batch and return [B,3,T,96,96]. Audio first, as officially.
    """

    def __init__(self, config: Wav2LipConfig | None = None):
        super().__init__()
        self.config = config = config or Wav2LipConfig.official()
        fc, dc = config.face_channels, config.decoder_channels

        blocks = [nn.Sequential(ConvUnit(6, fc[0], 7, 1, 3))]
        for i, n_res in enumerate(config.face_residuals, start=1):
            blocks.append(nn.Sequential(ConvUnit(fc[i - 1], fc[i], 3, 2, 1),
                                        *[ConvUnit(fc[i], fc[i], 3, 1, 1, residual=True) for _ in range(n_res)]))
        blocks.append(nn.Sequential(ConvUnit(fc[5], fc[6], 3, 1, 0), ConvUnit(fc[6], fc[6], 1, 1, 0)))
        self.face_encoder_blocks = nn.ModuleList(blocks)

        self.audio_encoder = mel_encoder(config.audio_channels, config.audio_residuals, config.audio_embed_dim)

        decoder = [nn.Sequential(ConvUnit(config.audio_embed_dim, dc[0], 1, 1, 0))]
        for i, n_res in enumerate(config.decoder_residuals, start=1):
            cin = dc[i - 1] + fc[7 - i]  # previous decoder output + same-size face feature
            # 1x1 -> 3x3 needs an unpadded stride-1 kernel; every later block doubles the size.
            up = (TransposedConvUnit(cin, dc[i], 3, 1, 0) if i == 1
                  else TransposedConvUnit(cin, dc[i], 3, 2, 1, output_padding=1))
            decoder.append(nn.Sequential(up, *[ConvUnit(dc[i], dc[i], 3, 1, 1, residual=True) for _ in range(n_res)]))
        self.face_decoder_blocks = nn.ModuleList(decoder)

        self.output_block = nn.Sequential(ConvUnit(dc[6] + fc[0], config.output_hidden, 3, 1, 1),
                                          nn.Conv2d(config.output_hidden, 3, kernel_size=1), nn.Sigmoid())

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        if face.dim() == 5:
            if mel.dim() != 5 or mel.shape[:2] != (face.shape[0], face.shape[2]):
                raise ValueError(f"5-D face [B,6,T,H,W] needs mel [B,T,1,80,16]; got face {tuple(face.shape)}, "
                                 f"mel {tuple(mel.shape)}")
            batch, channels, steps, height, width = face.shape
            # Fold T t-major, like the official torch.cat over T (eval-mode BN makes the order irrelevant).
            flat_mel = mel.transpose(0, 1).reshape(steps * batch, *mel.shape[2:])
            flat_face = face.permute(2, 0, 1, 3, 4).reshape(steps * batch, channels, height, width)
            frames = self._forward_frames(flat_mel, flat_face)
            return frames.reshape(steps, batch, *frames.shape[1:]).permute(1, 2, 0, 3, 4)
        if face.dim() != 4 or mel.dim() != 4:
            raise ValueError(f"expected face [B,6,96,96] and mel [B,1,80,16]; got face {tuple(face.shape)}, "
                             f"mel {tuple(mel.shape)}")
        return self._forward_frames(mel, face)

    def _forward_frames(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        x = self.audio_encoder(mel)
        skips = []
        feature = face
        for block in self.face_encoder_blocks:
            feature = block(feature)
            skips.append(feature)
        for block in self.face_decoder_blocks:
            x = torch.cat((block(x), skips.pop()), dim=1)
        return self.output_block(x)


def wav2lip_face_input(frames_bgr: np.ndarray, ref_frames_bgr: np.ndarray) -> np.ndarray:
    """Generator face input: [T,H,W,3] uint8 BGR targets and references -> [T,6,H,W] float32 in [0,1].

    Channels 0-2: the target with its lower half (rows H//2..H-1, i.e. 48..95 at 96 px) set to 0;
    channels 3-5: the reference, unmasked. At inference the reference is the target frame itself.
    """
    for name, frames in (("frames_bgr", frames_bgr), ("ref_frames_bgr", ref_frames_bgr)):
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise InputError(None, f"{name} must be uint8 [T,H,W,3], got {frames.dtype} {frames.shape}")
    if frames_bgr.shape != ref_frames_bgr.shape:
        raise InputError(None, f"frames {frames_bgr.shape} and references {ref_frames_bgr.shape} differ in shape")
    masked = frames_bgr.copy()
    masked[:, frames_bgr.shape[1] // 2:] = 0
    # float64 division then float32, as the official numpy code does (avoids 1-ulp differences).
    stacked = np.concatenate((masked, ref_frames_bgr), axis=3) / 255.0
    return np.ascontiguousarray(stacked.transpose(0, 3, 1, 2), dtype=np.float32)


def load_official_wav2lip(path: str | Path) -> Wav2Lip:
    """Official `wav2lip.pth`/`wav2lip_gan.pth` (or a bare/`module.`-prefixed state dict) -> eval-mode Wav2Lip."""
    model = Wav2Lip(Wav2LipConfig.official())
    state_dict = extract_state_dict(load_file(path), path)
    try:
        load_strict(model, state_dict, path)
    except CheckpointError as exc:
        raise CheckpointError(path, f"not a Wav2Lip generator checkpoint: {exc.problem}") from None
    return model.eval()
