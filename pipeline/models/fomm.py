"""First Order Motion Model (Siarohin et al., NeurIPS 2019): keypoint detector, dense motion, generator.

One set of classes for every size: widths, depths, `num_kp`, scale factors come from `FommConfig`.
`FommConfig.vox256()` is the official vox-256 configuration; at that size the state dicts have exactly
the official names and shapes, so `vox-cpk.pth.tar` loads strictly (`load_official_fomm`), and outputs
equal the official code's for the same weights and inputs (tests/test_fomm.py, golden files).

Behaviour kept on purpose from the official code (AliaksandrSiarohin/first-order-model @ c027484):

* `grid_sample` and the bilinear `interpolate` of the deformation are called there WITHOUT
  `align_corners`. The model was trained on torch 1.0 (which behaved like align_corners=True), but on
  any torch >= 1.3 the default is False, so the official repository computes with False today. We pass
  align_corners=False explicitly (bilinear, zero padding) to reproduce what it produces now.
* The keypoint heatmap is the 7x7 unpadded conv output (58x58 on a 64x64 feature map at vox-256). Its
  cells are mapped to [-1,1] with both ends included (x = 2 i / 57 - 1) as if they covered the whole
  image, although they cover only its inner part. Keypoints, the dense-motion Gaussians and the warps
  all use this convention, so it is reproduced, not fixed.
* The anti-alias Gaussians are persistent buffers (they are in the official checkpoints).

Mixed precision: under bf16 autocast the convolutions run in bf16, while keypoint pooling, the sparse
motion geometry (matrix inverse, Gaussians) and every `grid_sample` run in float32: bf16 keeps ~3
significant digits, i.e. keypoints off by up to ~0.004 in [-1,1].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.checkpoints import extract_state_dict, load_file, load_strict
from pipeline.core.errors import CheckpointError, InputError
from pipeline.models.fomm_blocks import (
    AntiAliasInterpolation2d,
    DownBlock2d,
    Hourglass,
    ResBlock2d,
    SameBlock2d,
    UpBlock2d,
    keypoint_gaussians,
    make_coordinate_grid,
)

# --------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class KPDetectorConfig:
    """Keypoint detector: hourglass on the image downsampled by `scale_factor`."""

    block_expansion: int = 32
    max_features: int = 1024
    num_blocks: int = 5
    temperature: float = 0.1
    scale_factor: float = 0.25
    pad: int = 0  # padding of the 7x7 keypoint/jacobian convs (0: heatmap 6 cells smaller than features)
    single_jacobian_map: bool = False


@dataclass(frozen=True)
class DenseMotionConfig:
    """Dense motion network: hourglass on heatmaps + sparsely warped sources at `scale_factor`."""

    block_expansion: int = 64
    max_features: int = 1024
    num_blocks: int = 5
    scale_factor: float = 0.25
    kp_variance: float = 0.01


@dataclass(frozen=True)
class GeneratorConfig:
    """Occlusion-aware generator: encoder, warp of features, residual bottleneck, decoder."""

    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    num_bottleneck_blocks: int = 6
    estimate_occlusion_map: bool = True
    # Not in FOMM (off in vox-256, so official files load and match): `final` gets one more channel, a
    # per-pixel gate between the source image warped at full resolution and the decoder's image. A
    # CPU-budget decoder stays blurry for thousands of steps; warped source pixels are sharp from step 0.
    warped_source_skip: bool = False
    # Not in FOMM (0 = off, as in vox-256): width of an MLP that reads both frames' keypoints (values and
    # jacobians) and scales/shifts every bottleneck block's channels (FiLM). Warping cannot raise a brow or
    # wrinkle a forehead that no keypoint sits on; a modulated decoder can paint them, and its gradient teaches
    # the detector to put expression into the keypoints.
    expression_film: int = 0
    # Not in FOMM (False, as in vox-256): the dense-motion hourglass's features (where each keypoint moved, at
    # the flow's resolution) are added to the occluded warped features through a zero-initialised 1x1 conv, so
    # the decoder knows locally what the expression did (a raised brow, an opened jaw) and can paint what no
    # warp of the source holds (forehead lines, teeth). Zero init: an untrained map leaves the generator as is.
    motion_features: bool = False


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Multi-scale patch discriminator (training only); vox-256 uses one scale with spectral norm."""

    scales: tuple[float, ...] = (1,)
    block_expansion: int = 32
    max_features: int = 512
    num_blocks: int = 4
    sn: bool = True
    use_kp: bool = False
    kp_variance: float = 0.01


_SECTIONS = {
    "kp_detector": KPDetectorConfig,
    "dense_motion": DenseMotionConfig,
    "generator": GeneratorConfig,
    "discriminator": DiscriminatorConfig,
}


@dataclass(frozen=True)
class FommConfig:
    """Every size parameter of FOMM. Defaults = official vox-256 (`config/vox-256.yaml`)."""

    image_size: int = 256
    num_kp: int = 10
    num_channels: int = 3
    estimate_jacobian: bool = True
    kp_detector: KPDetectorConfig = field(default_factory=KPDetectorConfig)
    dense_motion: DenseMotionConfig = field(default_factory=DenseMotionConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)

    def __post_init__(self) -> None:
        self._check_sizes()

    @classmethod
    def vox256(cls) -> FommConfig:
        """The official vox-256 model (`vox-cpk.pth.tar`, `vox-adv-cpk.pth.tar` for kp detector/generator)."""
        return cls()

    @classmethod
    def slim(cls, image_size: int = 128, num_kp: int = 10) -> FommConfig:
        """CPU-sized model, same architecture plus the warped-source skip: 9.7M parameters (kp detector 4.2M,
        dense motion 4.2M, rest 1.4M)."""
        return cls(
            image_size=image_size,
            num_kp=num_kp,
            kp_detector=KPDetectorConfig(block_expansion=32, max_features=256, num_blocks=5, scale_factor=0.25),
            dense_motion=DenseMotionConfig(block_expansion=32, max_features=256, num_blocks=5, scale_factor=0.25),
            generator=GeneratorConfig(block_expansion=32, max_features=128, num_down_blocks=2,
                                      num_bottleneck_blocks=4, warped_source_skip=True),
            discriminator=DiscriminatorConfig(block_expansion=32, max_features=256),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-friendly dict; `from_dict(to_dict())` rebuilds an equal config."""
        data = dataclasses.asdict(self)
        data["discriminator"]["scales"] = list(self.discriminator.scales)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FommConfig:
        """Inverse of `to_dict`; missing keys take the vox-256 defaults, unknown keys are refused."""
        values = _known_keys(cls, data, "")
        for name, section in _SECTIONS.items():
            if name in values:
                section_values = _known_keys(section, values[name], f"{name}.")
                if "scales" in section_values:
                    section_values["scales"] = tuple(section_values["scales"])
                values[name] = section(**section_values)
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise InputError(None, f"invalid FOMM config: {exc}") from None

    def to_official(self) -> dict[str, dict[str, Any]]:
        """The official YAML `model_params` (common, kp_detector, generator, discriminator) for this config."""
        kp, dm, gen, disc = self.kp_detector, self.dense_motion, self.generator, self.discriminator
        return {
            "common_params": {"num_kp": self.num_kp, "num_channels": self.num_channels,
                              "estimate_jacobian": self.estimate_jacobian},
            "kp_detector_params": dataclasses.asdict(kp),
            "generator_params": {**dataclasses.asdict(gen), "dense_motion_params": dataclasses.asdict(dm)},
            "discriminator_params": {**dataclasses.asdict(disc), "scales": list(disc.scales)},
        }

    @classmethod
    def from_official(cls, model_params: Mapping[str, Any], image_size: int = 256) -> FommConfig:
        """Config from an official YAML's `model_params` (e.g. config/vox-256.yaml, taichi-256.yaml)."""
        common = dict(model_params.get("common_params", {}))
        generator = dict(model_params.get("generator_params", {}))
        dense_motion = generator.pop("dense_motion_params", {})
        return cls.from_dict({
            "image_size": image_size, **common,
            "kp_detector": dict(model_params.get("kp_detector_params", {})),
            "dense_motion": dict(dense_motion),
            "generator": generator,
            "discriminator": dict(model_params.get("discriminator_params", {})),
        })

    @property
    def keypoint_map_size(self) -> int:
        """Side of the keypoint heatmap (58 at vox-256)."""
        kp = self.kp_detector
        return int(self.image_size * kp.scale_factor) - 6 + 2 * kp.pad

    @property
    def motion_size(self) -> int:
        """Side of the dense motion field, mask and occlusion map (64 at vox-256)."""
        return int(self.image_size * self.dense_motion.scale_factor)

    def _check_sizes(self) -> None:
        kp_input = int(self.image_size * self.kp_detector.scale_factor)
        if kp_input % 2 ** self.kp_detector.num_blocks:
            raise ValueError(f"keypoint detector input {kp_input} (image_size x scale_factor) is not divisible "
                             f"by 2^num_blocks = {2 ** self.kp_detector.num_blocks}")
        if self.keypoint_map_size < 1:
            raise ValueError(f"keypoint heatmap would be empty at image_size {self.image_size}")
        if self.motion_size % 2 ** self.dense_motion.num_blocks:
            raise ValueError(f"dense motion input {self.motion_size} is not divisible by "
                             f"2^num_blocks = {2 ** self.dense_motion.num_blocks}")
        if self.image_size % 2 ** self.generator.num_down_blocks:
            raise ValueError(f"image_size {self.image_size} is not divisible by "
                             f"2^num_down_blocks = {2 ** self.generator.num_down_blocks}")


def _known_keys(klass: type, data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise InputError(None, f"FOMM config section '{where or 'root'}' must be a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(klass)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(None, f"unknown FOMM config key '{where}{unknown[0]}'")
    return dict(data)


# ---------------------------------------------------------------------------------------------- modules


def _no_autocast(tensor: torch.Tensor) -> torch.autocast:
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def warp(image: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
    """Backward-warp `image` [B,C,H,W] with a sampling grid [B,h,w,2] (x,y in [-1,1]), float32.

    A grid of another size is first resized bilinearly (align_corners=False, as the official code on
    torch >= 1.3 does).
    """
    with _no_autocast(image):
        deformation = deformation.float()
        if deformation.shape[1:3] != image.shape[2:]:
            deformation = F.interpolate(deformation.permute(0, 3, 1, 2), size=image.shape[2:], mode="bilinear",
                                        align_corners=False).permute(0, 2, 3, 1)
        return F.grid_sample(image.float(), deformation, mode="bilinear", padding_mode="zeros", align_corners=False)


class KPDetector(nn.Module):
    """Image [B,C,H,W] in [0,1] -> keypoints.

    Returns `value` [B,N,2] (x,y in [-1,1]), `jacobian` [B,N,2,2] (when `estimate_jacobian`) and
    `heatmap` [B,N,h,w] (softmax over cells, 58x58 at vox-256).
    """

    def __init__(self, config: FommConfig):
        super().__init__()
        cfg = config.kp_detector
        self.config = config
        self.temperature = cfg.temperature
        self.predictor = Hourglass(cfg.block_expansion, config.num_channels, cfg.num_blocks, cfg.max_features)
        self.kp = nn.Conv2d(self.predictor.out_filters, config.num_kp, kernel_size=7, padding=cfg.pad)
        if config.estimate_jacobian:
            self.num_jacobian_maps = 1 if cfg.single_jacobian_map else config.num_kp
            self.jacobian = nn.Conv2d(self.predictor.out_filters, 4 * self.num_jacobian_maps, kernel_size=7,
                                      padding=cfg.pad)
            # Start from identity jacobians: zero weights, bias [1, 0, 0, 1] per map.
            with torch.no_grad():
                self.jacobian.weight.zero_()
                self.jacobian.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0] * self.num_jacobian_maps))
        else:
            self.jacobian = None
        self.down = (AntiAliasInterpolation2d(config.num_channels, cfg.scale_factor)
                     if cfg.scale_factor != 1 else None)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.down(image) if self.down is not None else image
        features = self.predictor(x)
        logits = self.kp(features).float()
        batch, num_kp, height, width = logits.shape
        heatmap = F.softmax(logits.view(batch, num_kp, -1) / self.temperature, dim=2).view(logits.shape)
        grid = make_coordinate_grid(height, width, dtype=heatmap.dtype, device=heatmap.device)
        out = {"value": (heatmap.unsqueeze(-1) * grid).sum(dim=(2, 3)), "heatmap": heatmap}
        if self.jacobian is not None:
            maps = self.jacobian(features).float().view(batch, self.num_jacobian_maps, 4, height, width)
            # Heatmap-weighted average of each keypoint's four maps, read row-major as [[a, b], [c, d]].
            jacobian = (heatmap.unsqueeze(2) * maps).view(batch, num_kp, 4, -1).sum(dim=-1)
            out["jacobian"] = jacobian.view(batch, num_kp, 2, 2)
        return out


class DenseMotionNetwork(nn.Module):
    """Keypoints of source and driving -> dense backward flow, its mask over K+1 motions, occlusion map."""

    def __init__(self, config: FommConfig):
        super().__init__()
        cfg = config.dense_motion
        self.num_kp = config.num_kp
        self.kp_variance = cfg.kp_variance
        in_features = (config.num_kp + 1) * (config.num_channels + 1)
        self.hourglass = Hourglass(cfg.block_expansion, in_features, cfg.num_blocks, cfg.max_features)
        self.mask = nn.Conv2d(self.hourglass.out_filters, config.num_kp + 1, kernel_size=7, padding=3)
        self.occlusion = (nn.Conv2d(self.hourglass.out_filters, 1, kernel_size=7, padding=3)
                          if config.generator.estimate_occlusion_map else None)
        self.down = (AntiAliasInterpolation2d(config.num_channels, cfg.scale_factor)
                     if cfg.scale_factor != 1 else None)

    def heatmap_representation(self, height: int, width: int, kp_driving: Mapping, kp_source: Mapping) -> torch.Tensor:
        """Gaussians of driving minus source keypoints, zero background first: [B, K+1, 1, h, w]."""
        heatmap = (keypoint_gaussians(kp_driving["value"].float(), height, width, self.kp_variance)
                   - keypoint_gaussians(kp_source["value"].float(), height, width, self.kp_variance))
        background = heatmap.new_zeros(heatmap.shape[0], 1, height, width)
        return torch.cat([background, heatmap], dim=1).unsqueeze(2)

    def sparse_motions(self, height: int, width: int, kp_driving: Mapping, kp_source: Mapping) -> torch.Tensor:
        """Per-keypoint first-order motions z -> J_s J_d^-1 (z - p_d) + p_s, identity first: [B, K+1, h, w, 2]."""
        value_d = kp_driving["value"].float()
        value_s = kp_source["value"].float()
        grid = make_coordinate_grid(height, width, dtype=value_d.dtype, device=value_d.device)
        coords = grid - value_d[:, :, None, None, :]
        if "jacobian" in kp_driving:
            jacobian = torch.matmul(kp_source["jacobian"].float(), torch.inverse(kp_driving["jacobian"].float()))
            coords = torch.matmul(jacobian[:, :, None, None], coords.unsqueeze(-1)).squeeze(-1)
        driving_to_source = coords + value_s[:, :, None, None, :]
        identity = grid.expand(value_d.shape[0], 1, height, width, 2)
        return torch.cat([identity, driving_to_source], dim=1)

    def forward(self, source_image: torch.Tensor, kp_driving: Mapping, kp_source: Mapping) -> dict[str, torch.Tensor]:
        with _no_autocast(source_image):
            source = source_image.float()
            source = self.down(source) if self.down is not None else source
            batch, channels, height, width = source.shape
            heatmaps = self.heatmap_representation(height, width, kp_driving, kp_source)
            motions = self.sparse_motions(height, width, kp_driving, kp_source)
            per_motion_source = source.unsqueeze(1).expand(batch, self.num_kp + 1, channels, height, width)
            sparse_deformed = F.grid_sample(
                per_motion_source.reshape(-1, channels, height, width),
                motions.reshape(-1, height, width, 2),
                mode="bilinear", padding_mode="zeros", align_corners=False,
            ).view(batch, self.num_kp + 1, channels, height, width)
        # Keypoint-major channels: [heatmap_0, rgb_0, heatmap_1, rgb_1, ...].
        features = self.hourglass(torch.cat([heatmaps, sparse_deformed], dim=2).view(batch, -1, height, width))
        mask = F.softmax(self.mask(features).float(), dim=1)
        out = {
            "sparse_deformed": sparse_deformed,
            "mask": mask,
            "deformation": (motions * mask.unsqueeze(-1)).sum(dim=1),
        }
        if self.occlusion is not None:
            out["occlusion_map"] = torch.sigmoid(self.occlusion(features).float())
        out["features"] = features
        return out


class KeypointFilm(nn.Module):
    """Source + driving keypoints -> per-block channel scale and shift of the generator's bottleneck (FiLM).

    Input: values and jacobians of both frames, flattened ([B, 2K(2+4)]); output: `num_blocks` pairs
    (scale [B,C,1,1], shift [B,C,1,1]). The last layer starts at zero, so an untrained FiLM is the identity.
    """

    def __init__(self, num_kp: int, jacobian: bool, hidden: int, channels: int, num_blocks: int):
        super().__init__()
        self.num_blocks, self.channels = num_blocks, channels
        in_features = 2 * num_kp * (6 if jacobian else 2)
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 2 * channels * num_blocks))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    @staticmethod
    def keypoint_vector(kp: Mapping) -> torch.Tensor:
        parts = [kp["value"].float().flatten(1)]
        if "jacobian" in kp:
            parts.append(kp["jacobian"].float().flatten(1))
        return torch.cat(parts, dim=1)

    def forward(self, kp_driving: Mapping, kp_source: Mapping) -> list[tuple[torch.Tensor, torch.Tensor]]:
        vector = torch.cat([self.keypoint_vector(kp_driving), self.keypoint_vector(kp_source)], dim=1)
        film = self.mlp(vector).view(-1, self.num_blocks, 2, self.channels, 1, 1)
        return [(film[:, i, 0], film[:, i, 1]) for i in range(self.num_blocks)]


def apply_film(features: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """features * (1 + scale) + shift, channel-wise (zero scale and shift: unchanged)."""
    return features * (1 + scale.to(features.dtype)) + shift.to(features.dtype)


class OcclusionAwareGenerator(nn.Module):
    """Source image + source/driving keypoints -> `prediction` [B,C,H,W] in [0,1] and motion diagnostics.

    Output keys: `mask`, `sparse_deformed`, `occlusion_map` (if estimated), `deformation` [B,h,w,2],
    `deformed` (source warped by the upsampled flow), `skip_gate` (with `warped_source_skip`: weight of
    `deformed` in the prediction) and `prediction`.
    """

    def __init__(self, config: FommConfig):
        super().__init__()
        cfg = config.generator
        self.config = config
        width = lambda level: min(cfg.max_features, cfg.block_expansion * 2 ** level)  # noqa: E731
        self.dense_motion_network = DenseMotionNetwork(config)
        self.first = SameBlock2d(config.num_channels, cfg.block_expansion, kernel_size=7, padding=3)
        self.down_blocks = nn.ModuleList(DownBlock2d(width(i), width(i + 1)) for i in range(cfg.num_down_blocks))
        self.up_blocks = nn.ModuleList(
            UpBlock2d(width(cfg.num_down_blocks - i), width(cfg.num_down_blocks - i - 1))
            for i in range(cfg.num_down_blocks)
        )
        self.bottleneck = nn.Sequential()
        for i in range(cfg.num_bottleneck_blocks):
            self.bottleneck.add_module(f"r{i}", ResBlock2d(width(cfg.num_down_blocks)))
        self.film = (KeypointFilm(config.num_kp, config.estimate_jacobian, cfg.expression_film,
                                  width(cfg.num_down_blocks), cfg.num_bottleneck_blocks)
                     if cfg.expression_film else None)
        self.motion_map = None
        if cfg.motion_features:
            self.motion_map = nn.Conv2d(self.dense_motion_network.hourglass.out_filters, width(cfg.num_down_blocks),
                                        kernel_size=1)
            nn.init.zeros_(self.motion_map.weight)
            nn.init.zeros_(self.motion_map.bias)
        self.warped_source_skip = cfg.warped_source_skip
        self.final = nn.Conv2d(cfg.block_expansion, config.num_channels + int(cfg.warped_source_skip), kernel_size=7,
                               padding=3)

    def encode(self, source_image: torch.Tensor) -> torch.Tensor:
        """Encoder features of the source (first conv + down blocks); a video computes them once."""
        out = self.first(source_image)
        for block in self.down_blocks:
            out = block(out)
        return out

    def decode(self, source_image: torch.Tensor, source_features: torch.Tensor, kp_driving: Mapping,
               kp_source: Mapping) -> dict[str, torch.Tensor]:
        """Dense motion -> warp the features -> occlusion -> bottleneck -> up blocks -> image (+ skip gate)."""
        motion = self.dense_motion_network(source_image, kp_driving=kp_driving, kp_source=kp_source)
        result = {"mask": motion["mask"], "sparse_deformed": motion["sparse_deformed"],
                  "deformation": motion["deformation"]}
        out = warp(source_features, motion["deformation"])
        if "occlusion_map" in motion:
            occlusion = motion["occlusion_map"]
            result["occlusion_map"] = occlusion
            if occlusion.shape[2:] != out.shape[2:]:
                occlusion = F.interpolate(occlusion, size=out.shape[2:], mode="bilinear", align_corners=False)
            out = out * occlusion
        if self.motion_map is not None:
            features = motion["features"]
            if features.shape[2:] != out.shape[2:]:
                features = F.interpolate(features, size=out.shape[2:], mode="bilinear", align_corners=False)
            out = out + self.motion_map(features).to(out.dtype)
        result["deformed"] = warp(source_image, motion["deformation"])

        if self.film is None:
            out = self.bottleneck(out)
        else:
            for block, (scale, shift) in zip(self.bottleneck, self.film(kp_driving, kp_source)):
                out = apply_film(block(out), scale, shift)
        for block in self.up_blocks:
            out = block(out)
        final = self.final(out).float()
        if self.warped_source_skip:
            gate = torch.sigmoid(final[:, -1:])
            result["skip_gate"] = gate
            result["prediction"] = gate * result["deformed"] + (1 - gate) * torch.sigmoid(final[:, :-1])
        else:
            result["prediction"] = torch.sigmoid(final)
        return result

    def forward(self, source_image: torch.Tensor, kp_driving: Mapping, kp_source: Mapping) -> dict[str, torch.Tensor]:
        return self.decode(source_image, self.encode(source_image), kp_driving, kp_source)


# -------------------------------------------------------------------------------------- discriminator


class DiscriminatorBlock2d(nn.Module):
    """Unpadded 4x4 conv (optionally spectral-normalised) -> instance norm -> leaky ReLU 0.2 -> avg pool."""

    def __init__(self, in_features: int, out_features: int, *, norm: bool, pool: bool, sn: bool):
        super().__init__()
        conv = nn.Conv2d(in_features, out_features, kernel_size=4)
        # Old-style spectral norm: its state names (weight_orig/_u/_v) are those of the official files.
        self.conv = nn.utils.spectral_norm(conv) if sn else conv
        self.norm = nn.InstanceNorm2d(out_features, affine=True) if norm else None
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.norm is not None:
            out = self.norm(out)
        out = F.leaky_relu(out, 0.2)
        return F.avg_pool2d(out, 2) if self.pool else out


class Discriminator(nn.Module):
    """Pix2Pix-style patch discriminator; with `use_kp` the keypoint Gaussians are extra input channels."""

    def __init__(self, config: FommConfig):
        super().__init__()
        cfg = config.discriminator
        self.use_kp = cfg.use_kp
        self.kp_variance = cfg.kp_variance
        width = lambda level: min(cfg.max_features, cfg.block_expansion * 2 ** level)  # noqa: E731
        first_in = config.num_channels + (config.num_kp if cfg.use_kp else 0)
        self.down_blocks = nn.ModuleList(
            DiscriminatorBlock2d(first_in if i == 0 else width(i), width(i + 1),
                                 norm=i != 0, pool=i != cfg.num_blocks - 1, sn=cfg.sn)
            for i in range(cfg.num_blocks)
        )
        conv = nn.Conv2d(width(cfg.num_blocks), 1, kernel_size=1)
        self.conv = nn.utils.spectral_norm(conv) if cfg.sn else conv

    def forward(self, image: torch.Tensor, kp: Mapping | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Returns every block's feature map (for feature matching) and the patch prediction map."""
        out = image
        if self.use_kp:
            if kp is None:
                raise ValueError("this discriminator uses keypoints (use_kp=True): pass kp")
            gaussians = keypoint_gaussians(kp["value"].float(), image.shape[2], image.shape[3], self.kp_variance)
            out = torch.cat([out, gaussians.to(out.dtype)], dim=1)
        feature_maps = []
        for block in self.down_blocks:
            out = block(out)
            feature_maps.append(out)
        return feature_maps, self.conv(out)


def _scale_key(scale: float) -> str:
    return str(scale).replace(".", "-")  # ModuleDict keys cannot contain dots


class MultiScaleDiscriminator(nn.Module):
    """One Discriminator per scale; input is an image pyramid {'prediction_<scale>': image}."""

    def __init__(self, config: FommConfig):
        super().__init__()
        self.scales = tuple(config.discriminator.scales)
        self.discs = nn.ModuleDict({_scale_key(scale): Discriminator(config) for scale in self.scales})

    def forward(self, pyramid: Mapping[str, torch.Tensor], kp: Mapping | None = None) -> dict[str, Any]:
        """Returns 'feature_maps_<scale>' (list) and 'prediction_map_<scale>' per scale."""
        out: dict[str, Any] = {}
        for key, disc in self.discs.items():
            scale = key.replace("-", ".")
            feature_maps, prediction_map = disc(pyramid["prediction_" + scale], kp)
            out["feature_maps_" + scale] = feature_maps
            out["prediction_map_" + scale] = prediction_map
        return out


class ImagePyramid(nn.Module):
    """Anti-aliased downscaled copies of an image: {'prediction_<scale>': image at that scale}."""

    def __init__(self, scales: tuple[float, ...], num_channels: int = 3):
        super().__init__()
        self.downs = nn.ModuleDict({_scale_key(s): AntiAliasInterpolation2d(num_channels, s) for s in scales})

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"prediction_" + key.replace("-", "."): down(image) for key, down in self.downs.items()}


# ------------------------------------------------------------------------------------- official import


def _official_component(container: Any, name: str, path: str | Path) -> dict[str, torch.Tensor]:
    if not isinstance(container, Mapping):
        raise CheckpointError(path, f"not an FOMM checkpoint: expected a dict, got {type(container).__name__}")
    if name not in container:
        found = ", ".join(sorted(map(str, container))[:8])
        raise CheckpointError(path, f"not an FOMM checkpoint: no '{name}' entry (found: {found})")
    try:
        return extract_state_dict(container[name], path)
    except CheckpointError as exc:
        raise CheckpointError(path, f"[{name}] {exc.problem}") from None


def _load_component(module: nn.Module, container: Any, name: str, path: str | Path) -> None:
    state_dict = _official_component(container, name, path)
    try:
        load_strict(module, state_dict, path)
    except CheckpointError as exc:
        raise CheckpointError(path, f"[{name}] {exc.problem}") from None


def load_official_fomm(path: str | Path, config: FommConfig | None = None
                       ) -> tuple[KPDetector, OcclusionAwareGenerator]:
    """Read an official FOMM checkpoint (e.g. `vox-cpk.pth.tar`) into (kp_detector, generator), eval mode.

    Strict: any missing, unexpected or mis-shaped key raises CheckpointError naming it (prefixed with the
    component); `num_batches_tracked` may be absent; a DataParallel `module.` prefix is accepted.
    `config` defaults to vox-256.
    """
    config = config or FommConfig.vox256()
    container = load_file(path)
    kp_detector, generator = KPDetector(config), OcclusionAwareGenerator(config)
    _load_component(kp_detector, container, "kp_detector", path)
    _load_component(generator, container, "generator", path)
    return kp_detector.eval(), generator.eval()


def load_official_fomm_discriminator(path: str | Path, config: FommConfig | None = None) -> MultiScaleDiscriminator:
    """The `discriminator` entry of an official training checkpoint (vox-256 layout: spectral norm)."""
    config = config or FommConfig.vox256()
    discriminator = MultiScaleDiscriminator(config)
    _load_component(discriminator, load_file(path), "discriminator", path)
    return discriminator.eval()
