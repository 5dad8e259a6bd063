"""FOMM's multi-scale discriminator as one trainable part: the renderer's LSGAN + feature-matching terms and
the discriminator's own update on real vs rendered frames. train_fomm (its optional GAN) and finetune_render
(stage 2's optional GAN) both use it; the checkpoint keys stay theirs (`discriminator`, `optimizer_d`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from pipeline.core.checkpoints import load_strict
from pipeline.fomm.losses import discriminator_loss, generator_gan_losses
from pipeline.models.fomm import FommConfig, ImagePyramid, MultiScaleDiscriminator
from pipeline.training.loop import autocast


class Adversary:
    """A fresh discriminator (drawn from torch's global generator, as every module init here) with FOMM's
    Adam betas; `load_state` replaces its weights with a trained one's."""

    def __init__(self, config: FommConfig, device: torch.device, *, gan_weight: float, feature_matching_weight: float,
                 lr: float, bf16: bool):
        self.scales = config.discriminator.scales
        self.gan_weight, self.feature_matching_weight, self.bf16 = gan_weight, feature_matching_weight, bf16
        self.discriminator = MultiScaleDiscriminator(config).to(device)
        self.pyramid = ImagePyramid(self.scales, config.num_channels).to(device)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))  # FOMM's

    def load_state(self, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
        """Strict: a discriminator of another shape is a one-line CheckpointError naming `path`."""
        load_strict(self.discriminator, state, path)

    def generator_losses(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The renderer's terms (`generator_gan`, `feature_matching`), weighted; inside the caller's autocast."""
        fake = self.discriminator(self.pyramid(prediction))
        real = self.discriminator(self.pyramid(target))
        return generator_gan_losses(fake, real, self.scales, self.gan_weight, self.feature_matching_weight)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> float:
        """One discriminator step on real `target` vs the detached `prediction`; its loss."""
        with autocast(prediction.device, self.bf16):
            loss = discriminator_loss(self.discriminator(self.pyramid(prediction.detach())),
                                      self.discriminator(self.pyramid(target)), self.scales, self.gan_weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())
