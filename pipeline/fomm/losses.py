"""FOMM training losses: multi-scale reconstruction (perceptual or L1), equivariance, optional LSGAN.

Equivariance (Siarohin et al. 2019, §3.3): warp the driving frame X with a known random transform T
(affine + thin-plate spline), detect keypoints in the warped frame, and ask for consistency:
    value:    p_X  ~  T(p_{T(X)})
    jacobian: J_X  ~  dT/dz(p_{T(X)}) J_{T(X)},  penalised as | I - J_X^-1 dT/dz J_{T(X)} |
Here the warped frame samples X at T(z) (backward warp), so a keypoint found at z in it sits at T(z)
in X. T's Jacobian is analytic (no double backward through autograd).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.judges.mouth_landmarks import MOUTH
from pipeline.models.fomm import ImagePyramid
from pipeline.models.fomm_blocks import make_coordinate_grid
from pipeline.models.vgg19 import Vgg19Features

TPS_EPS = 1e-6
MIN_VGG_SIZE = 16  # relu5_1 sits behind four 2x2 max pools: smaller pyramid levels are skipped


@dataclass
class RandomTransform:
    """z -> A z + b + sum_k U(|z - c_k|) w_k on [-1,1] coordinates, one transform per batch item.

    `affine` [B,2,3] holds [A | b]; `control_points` [K,2] and `weights` [B,K,2] are the thin-plate
    spline; U(r) = r^2 log r, written 0.5 r^2 log(r^2 + eps) so it and its gradient are finite at r = 0.
    """

    affine: torch.Tensor
    control_points: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def random(cls, batch: int, *, sigma_affine: float, sigma_tps: float, points_tps: int,
               generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> RandomTransform:
        """Identity plus Gaussian noise (drawn on the CPU generator, so the draws do not depend on device)."""
        noise = torch.randn(batch, 2, 3, generator=generator) * sigma_affine
        affine = torch.eye(2, 3).unsqueeze(0) + noise
        points = make_coordinate_grid(points_tps, points_tps).view(-1, 2)
        weights = torch.randn(batch, points.shape[0], 2, generator=generator) * sigma_tps
        return cls(affine.to(device), points.to(device), weights.to(device))

    @classmethod
    def identity(cls, batch: int, device: torch.device | str = "cpu") -> RandomTransform:
        return cls(torch.eye(2, 3, device=device).expand(batch, 2, 3).clone(), torch.zeros(1, 2, device=device),
                   torch.zeros(batch, 1, 2, device=device))

    def _radial(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """diff = z - c_k [B,P,K,2] and U(|diff|) [B,P,K]."""
        diff = coords.unsqueeze(2) - self.control_points.to(coords.dtype)
        r2 = (diff ** 2).sum(-1)
        return diff, 0.5 * r2 * torch.log(r2 + TPS_EPS)

    def warp_coordinates(self, coords: torch.Tensor) -> torch.Tensor:
        """T(z) for coords [B,P,2]."""
        affine = self.affine.to(coords.dtype)
        out = torch.matmul(coords, affine[:, :, :2].transpose(1, 2)) + affine[:, None, :, 2]
        _, radial = self._radial(coords)
        return out + torch.matmul(radial, self.weights.to(coords.dtype))

    def jacobian(self, coords: torch.Tensor) -> torch.Tensor:
        """dT/dz at coords [B,P,2] -> [B,P,2,2] (row i: output coordinate, column j: input coordinate)."""
        affine = self.affine.to(coords.dtype)
        diff, _ = self._radial(coords)
        r2 = (diff ** 2).sum(-1, keepdim=True)
        # d/dz of 0.5 r^2 log(r^2 + eps) = diff * (log(r^2 + eps) + r^2 / (r^2 + eps))
        grad_u = diff * (torch.log(r2 + TPS_EPS) + r2 / (r2 + TPS_EPS))  # [B,P,K,2]
        tps = torch.einsum("bki,bpkj->bpij", self.weights.to(coords.dtype), grad_u)
        return affine[:, None, :, :2] + tps

    def transform_frame(self, frame: torch.Tensor) -> torch.Tensor:
        """The frame resampled at T(z) for every pixel z; border pixels reflect.

        align_corners=True because the grid includes both ends (x = 2i/(W-1) - 1): the identity transform
        then returns the frame exactly.
        """
        batch, _, height, width = frame.shape
        grid = make_coordinate_grid(height, width, dtype=frame.dtype, device=frame.device).view(1, -1, 2)
        warped = self.warp_coordinates(grid.expand(batch, -1, 2)).view(batch, height, width, 2)
        return F.grid_sample(frame, warped, mode="bilinear", padding_mode="reflection", align_corners=True)


def equivariance_losses(kp_driving: Mapping[str, torch.Tensor], kp_transformed: Mapping[str, torch.Tensor],
                        transform: RandomTransform) -> dict[str, torch.Tensor]:
    """`equivariance_value` = mean |p_X - T(p_TX)|; `equivariance_jacobian` = mean |I - J_X^-1 dT J_TX|."""
    value_t = kp_transformed["value"].float()
    losses = {"equivariance_value": (kp_driving["value"].float() - transform.warp_coordinates(value_t)).abs().mean()}
    if "jacobian" in kp_driving and "jacobian" in kp_transformed:
        mapped = torch.matmul(transform.jacobian(value_t), kp_transformed["jacobian"].float())
        product = torch.matmul(torch.inverse(kp_driving["jacobian"].float()), mapped)
        eye = torch.eye(2, dtype=product.dtype, device=product.device)
        losses["equivariance_jacobian"] = (eye - product).abs().mean()
    return losses


# Keypoints 0..9 pinned to expressive parts by `landmark_anchor_loss` (dlib 68-point indices, image-left first):
# outer/inner brow, upper eyelid, mouth corner on each side, then the lip centres.
ANCHOR_LANDMARKS = ((17, 18, 19), (20, 21), (22, 23), (24, 25, 26), (37, 38), (43, 44), (48, 60), (54, 64),
                    (51, 62), (57, 66))
# dlib index of each point's mirror image (jaw, brows, nose, eyes, outer and inner lips reversed left-right).
DLIB_MIRROR = np.r_[16:-1:-1, 26:16:-1, 27:31, 35:30:-1, 45:41:-1, 47:45:-1, 39:35:-1, 41:39:-1,
                    54:47:-1, 59:54:-1, 64:59:-1, 67:64:-1]


def normalized_landmarks(landmarks: np.ndarray, landmark_size: int) -> torch.Tensor:
    """Landmarks [B,68,2] in pixels of a `landmark_size` frame -> FOMM's [-1,1] image coordinates (the warp's:
    pixel centres, x = 2 (px + 0.5) / size - 1); NaN stays NaN (frames without landmarks, e.g. MEAD)."""
    return torch.from_numpy(2 * (np.asarray(landmarks, np.float32) + 0.5) / landmark_size - 1)


def mirror_landmarks(points: torch.Tensor) -> torch.Tensor:
    """Normalized landmarks [...,68,2] of the horizontally mirrored frame: x -> -x, and each point takes its
    mirror partner's index, so index 17 is still the image-left brow's outer end."""
    mirrored = points[..., DLIB_MIRROR, :].clone()
    mirrored[..., 0] = -mirrored[..., 0]
    return mirrored


def landmark_anchor_targets(points: torch.Tensor) -> torch.Tensor:
    """Normalized landmarks [B,68,2] -> the anchors' targets [B,A,2] (means of ANCHOR_LANDMARKS' groups)."""
    return torch.stack([points[:, list(group)].mean(1) for group in ANCHOR_LANDMARKS], dim=1)


def landmark_anchor_loss(kp_value: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean |p_a - target_a| of the first A keypoints [B,K,2] over the frames that have landmarks (0 if none).

    Not in FOMM: its keypoints settle on whatever moves most (head, jaw) and none sits on a brow or eyelid,
    so warping cannot carry an expression; pinning some of them to the landmarks puts them where it shows."""
    targets = targets.to(kp_value.device, torch.float32)
    known = torch.isfinite(targets).all(dim=2).all(dim=1)
    if not bool(known.any()):
        return kp_value.new_zeros((), dtype=torch.float32)
    value = kp_value[known, :targets.shape[1]].float()
    return (value - targets[known]).abs().mean()


def landmark_flow_loss(deformation: torch.Tensor, driving_points: torch.Tensor,
                       source_points: torch.Tensor) -> torch.Tensor:
    """Mean |D(l_d) - l_s| over the landmarks of frames that have them (0 if none): the backward flow D
    [B,h,w,2] read at each driving landmark must point at the same landmark in the source.

    Not in FOMM: the reconstruction loss alone teaches the flow to move head and jaw long before it moves a
    brow or lid by two pixels; the landmarks say directly where each part went. D is read as the image warp
    reads it (bilinear, align_corners=False at the pixel-centre coordinates of `normalized_landmarks`)."""
    known = torch.isfinite(driving_points).all(dim=2).all(dim=1) & torch.isfinite(source_points).all(dim=2).all(dim=1)
    if not bool(known.any()):
        return deformation.new_zeros((), dtype=torch.float32)
    field = deformation[known].float().permute(0, 3, 1, 2)
    grid = driving_points[known].to(field.device, torch.float32).unsqueeze(2)  # [b,68,1,2]
    sampled = F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=False)
    flow = sampled.squeeze(3).permute(0, 2, 1)  # [b,68,2]
    return (flow - source_points[known].to(field.device, torch.float32)).abs().mean()


# dlib 68-point order: brows and eyes (17-21, 22-26, 36-47); with MOUTH (48-67) the parts weighed; nose, jaw not.
_UPPER_PARTS = np.r_[17:27, 36:48]


def face_part_weights(landmarks: np.ndarray, landmark_size: int, image_size: int, part_weight: float,
                      margin: float = 0.25) -> torch.Tensor:
    """Per-pixel weights [B,1,S,S] for the reconstruction loss: 1 + `part_weight` inside the boxes around the
    brows-and-eyes and mouth landmarks (each box grown by `margin` of its larger side), 1 elsewhere. The parts
    that show an expression are a few percent of the frame; a plain mean lets pose and background swamp them.
    Frames without landmarks (NaN, e.g. MEAD) get uniform weights."""
    batch = len(landmarks)
    weights = np.ones((batch, 1, image_size, image_size), np.float32)
    scale = image_size / landmark_size
    for b in range(batch):
        if not np.isfinite(landmarks[b]).all():
            continue
        for part in (_UPPER_PARTS, MOUTH):
            points = landmarks[b, part] * scale
            low, high = points.min(0), points.max(0)
            grow = margin * float((high - low).max())
            x0, y0 = np.floor(np.maximum(low - grow, 0)).astype(int)
            x1, y1 = np.ceil(np.minimum(high + grow, image_size)).astype(int)
            weights[b, 0, y0:y1, x0:x1] = 1.0 + part_weight
    return torch.from_numpy(weights)


class ReconstructionLoss(nn.Module):
    """Sum over pyramid scales of weight x mean |f(prediction) - f(target)|.

    f = the five VGG19 feature maps (FOMM's perceptual loss) when `vgg` is given, else the pixels
    themselves (multi-scale L1). Target features are constants (no gradient through the real image).
    With VGG, levels under 16 px (e.g. 1/8 of a 64 px image) are skipped.
    """

    def __init__(self, scales: Sequence[float], weight: float, vgg: Vgg19Features | None = None,
                 num_channels: int = 3):
        super().__init__()
        self.pyramid = ImagePyramid(tuple(scales), num_channels)
        self.scales = tuple(scales)
        self.weight = weight
        self.vgg = vgg
        self.kind = "perceptual_vgg19" if vgg is not None else "multiscale_l1"

    def forward(self, prediction: torch.Tensor, target: torch.Tensor, pixel_weights: torch.Tensor | None = None
                ) -> torch.Tensor:
        """`pixel_weights` [B,1,H,W] (multi-scale L1 only): a weighted mean per scale instead of the plain mean."""
        # The pyramid's large depthwise blur kernels (29x29 at scale 1/8) crawl in bf16 on CPU: float32 always.
        with torch.autocast(device_type=prediction.device.type, enabled=False):
            pred_pyramid, real_pyramid = self.pyramid(prediction.float()), self.pyramid(target.float())
        total = prediction.new_zeros((), dtype=torch.float32)
        for key in pred_pyramid:
            pred, real = pred_pyramid[key], real_pyramid[key].detach()
            if self.vgg is None:
                error = (pred.float() - real.float()).abs()
                if pixel_weights is not None:
                    w = F.interpolate(pixel_weights.float(), size=error.shape[-2:], mode="area")
                    total = total + self.weight * (error * w).mean() / w.mean()
                else:
                    total = total + self.weight * error.mean()
                continue
            if min(pred.shape[-2:]) < MIN_VGG_SIZE:
                continue
            with torch.no_grad():
                real_maps = self.vgg(real)
            for pred_map, real_map in zip(self.vgg(pred), real_maps):
                total = total + self.weight * (pred_map.float() - real_map.float()).abs().mean()
        return total


def generator_gan_losses(disc_fake: Mapping[str, object], disc_real: Mapping[str, object], scales: Sequence[float],
                         gan_weight: float, feature_matching_weight: float) -> dict[str, torch.Tensor]:
    """LSGAN generator loss (1 - D(fake))^2 and feature matching |D_l(real) - D_l(fake)| per scale."""
    gan, matching = 0.0, 0.0
    for scale in scales:
        key = str(scale)
        gan = gan + ((1 - disc_fake["prediction_map_" + key].float()) ** 2).mean()
        for real_map, fake_map in zip(disc_real["feature_maps_" + key], disc_fake["feature_maps_" + key]):
            matching = matching + (real_map.detach().float() - fake_map.float()).abs().mean()
    return {"generator_gan": gan_weight * gan, "feature_matching": feature_matching_weight * matching}


def discriminator_loss(disc_fake: Mapping[str, object], disc_real: Mapping[str, object], scales: Sequence[float],
                       gan_weight: float) -> torch.Tensor:
    """LSGAN discriminator loss (1 - D(real))^2 + D(fake)^2 summed over scales."""
    total = 0.0
    for scale in scales:
        key = str(scale)
        real, fake = disc_real["prediction_map_" + key].float(), disc_fake["prediction_map_" + key].float()
        total = total + ((1 - real) ** 2 + fake ** 2).mean()
    return gan_weight * total
