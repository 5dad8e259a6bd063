"""Motion Reconstruction (paper §3.2): Expression Encoder E_e, Mouth Encoder E_m, Motion Decoder D_{e,m}.

A frame's FOMM motion representation (p, j) — N keypoints (N,2) and their Jacobians (N,2,2) — is split
into an expression motion feature f_e (emotion, head pose, blinks: everything but the spoken content) and
a mouth motion feature f_m (the spoken content). D_{e,m} rebuilds (p, j) from (f_e, f_m) and the
keypoints of the same person's neutral reference frame (p_neu, j_neu).

Design choices (the paper gives no architecture):
* Per frame, no temporal context, so any frame can be encoded alone (later stages encode single frames).
* Each network is an MLP on the flattened 6N numbers (N values x 2, then N Jacobians x 4). Inputs are
  standardised with the training frames' mean and std (buffers saved in the checkpoint).
* Identity stays out of the features (`relative_input`, default): both encoders read (p - p_neu, j - j_neu),
  so E_e / E_m also take the actor's neutral keypoints. With 8 training faces, encoders of absolute
  keypoints map an unseen face's geometry to features the decoder never saw: on held-out actors of our
  proxy runs the self-reconstruction error was twice as high as with relative input.
* Features are normalised without affine parameters. The consistency losses (Eq. 3-4) pull features of
  two frames together with an L2 norm, which an encoder can satisfy without disentangling anything: by
  shrinking its features towards zero, or by making them constant (a collapsed f_m: the mouth then
  travels through f_e). `feature_norm: batch` (default) standardises each feature dimension over the
  training batch (BatchNorm without affine; running statistics at inference), so no dimension can be
  constant or small; `layer` (LayerNorm without affine, ||f||_2 = sqrt(dim)) only rules out shrinking:
  in our runs f_m collapsed with it at lr 3e-3.
  Both norms use a negligible eps (FEATURE_NORM_EPS). With BatchNorm's default 1e-5 the shrinking route
  stays open: the consistency loss falls as the pre-norm variance sinks below eps, and on the default run
  E_m's pre-norm variance went to ~1e-9, so every f_m in motion.zarr had std ~0.006 instead of 1.
  A second route: when a batch mixes real frames with pseudo labels, an encoder that spreads the labels'
  features far apart inflates the batch variance and so squeezes the real frames' features together (f_m
  std 0.01 on real frames with the eps fixed). So the statistics come from the real frames only
  (`stats_rows` of `encode`; `SubsetBatchNorm`), and every row is normalised with them.
* D_{e,m} predicts the motion RELATIVE to (p_neu, j_neu): out = neutral + residual_scale * MLP(f_e, f_m),
  the last layer initialised to zero (an untrained decoder returns the neutral frame). Identity (face
  shape) is thus carried by p_neu; the features only say how this frame departs from it. The MLP does
  not read the neutral keypoints by default (`neutral_to_decoder: false`): 8 training faces are 8 distinct
  neutral inputs, which it memorises; reading them, it was worse than the neutral frame itself on
  held-out actors in our proxy runs, and 3x worse than without them.

Checkpoint (`data/models/motion.pt`, plain dict): {model: {motion: state_dict}, config: MotionConfig.as_dict(),
step, metrics[, train_state: {optimizer}]}.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.checkpoints import load_strict
from pipeline.core.errors import CheckpointError, InputError

FEATURE_NORMS = ("batch", "layer")


@dataclass(frozen=True)
class MotionConfig:
    num_kp: int = 10  # FOMM keypoints N
    expression_dim: int = 32  # f_e size
    mouth_dim: int = 16  # f_m size
    hidden: int = 128  # width of every hidden layer
    layers: int = 2  # hidden layers per MLP
    relative_input: bool = True  # encoders see (p, j) minus the actor's (p_neu, j_neu), not absolute keypoints
    neutral_to_decoder: bool = False  # D_em's MLP also reads (p_neu, j_neu) (not only adds its output to them)
    feature_norm: str = "batch"  # batch | layer: how f_e, f_m are normalised (see the module docstring)

    def __post_init__(self) -> None:
        for name in ("num_kp", "expression_dim", "mouth_dim", "hidden", "layers"):
            if int(getattr(self, name)) < 1:
                raise InputError(None, f"motion config: {name} must be >= 1, not {getattr(self, name)}")
        if self.feature_norm not in FEATURE_NORMS:
            raise InputError(None, f"motion config: feature_norm must be one of {FEATURE_NORMS}, not "
                                   f"'{self.feature_norm}'")

    @property
    def motion_size(self) -> int:
        """Numbers per frame: N values x 2 + N Jacobians x 4."""
        return 6 * self.num_kp

    def as_dict(self) -> dict[str, int | bool]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MotionConfig:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise InputError(None, f"motion config: unknown key(s) {unknown}")
        cast = {"bool": bool, "int": int, "str": str}
        return cls(**{k: cast[str(fields[k].type)](v) for k, v in data.items()})


def flatten_motion(value: torch.Tensor, jacobian: torch.Tensor) -> torch.Tensor:
    """(B,N,2) + (B,N,2,2) -> (B, 6N): the N values, then the N Jacobians (row-major)."""
    return torch.cat([value.flatten(1), jacobian.flatten(1)], dim=1)


def unflatten_motion(flat: torch.Tensor, num_kp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `flatten_motion`."""
    value = flat[:, : 2 * num_kp].reshape(-1, num_kp, 2)
    jacobian = flat[:, 2 * num_kp:].reshape(-1, num_kp, 2, 2)
    return value, jacobian


# Far below any pre-norm variance worth keeping, so the features stay unit-scale whatever the encoder's scale
# (see the module docstring); well above float32's smallest normal number.
FEATURE_NORM_EPS = 1e-20


def mlp(inputs: int, hidden: int, layers: int, outputs: int) -> nn.Sequential:
    """Linear-SiLU blocks then a linear output layer."""
    blocks: list[nn.Module] = []
    width = inputs
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    blocks.append(nn.Linear(width, outputs))
    return nn.Sequential(*blocks)


class SubsetBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics may come from a subset of the batch's rows (`stats_rows`), applied
    to every row; the running statistics follow that subset too. Without `stats_rows`, or in eval mode, it is
    plain BatchNorm1d (same state dict)."""

    def forward(self, x: torch.Tensor, stats_rows: torch.Tensor | None = None) -> torch.Tensor:
        if stats_rows is None or not self.training:
            return super().forward(x)
        ref = x[stats_rows]
        mean, var = ref.mean(dim=0), ref.var(dim=0, unbiased=False)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (len(ref) / max(len(ref) - 1, 1))  # as BatchNorm keeps it
                self.running_mean.mul_(1 - factor).add_(factor * mean)
                self.running_var.mul_(1 - factor).add_(factor * unbiased)
        return (x - mean) / torch.sqrt(var + self.eps)


class MotionEncoder(nn.Module):
    """(p, j) -> a normalised feature (E_e or E_m; the two differ only in what training teaches them)."""

    def __init__(self, config: MotionConfig, dim: int):
        super().__init__()
        self.net = mlp(config.motion_size, config.hidden, config.layers, dim)
        batch_norm = config.feature_norm == "batch"
        self.norm = SubsetBatchNorm(dim, affine=False, eps=FEATURE_NORM_EPS) if batch_norm else None

    def forward(self, standardized: torch.Tensor, stats_rows: torch.Tensor | None = None) -> torch.Tensor:
        """`stats_rows` (bool (B,) or indices): the rows whose batch statistics normalise all (training only)."""
        out = self.net(standardized)
        if self.norm is not None:
            return self.norm(out, stats_rows)
        return F.layer_norm(out, out.shape[-1:], eps=FEATURE_NORM_EPS)


class MotionDecoder(nn.Module):
    """D_{e,m}: (f_e, f_m[, standardised neutral motion]) -> residual (standardised units) on the neutral."""

    def __init__(self, config: MotionConfig):
        super().__init__()
        self.neutral_input = config.neutral_to_decoder
        inputs = config.expression_dim + config.mouth_dim + (config.motion_size if self.neutral_input else 0)
        self.net = mlp(inputs, config.hidden, config.layers, config.motion_size)
        nn.init.zeros_(self.net[-1].weight)  # start as "the neutral frame"
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, f_e: torch.Tensor, f_m: torch.Tensor, neutral_standardized: torch.Tensor) -> torch.Tensor:
        parts = [f_e, f_m, neutral_standardized] if self.neutral_input else [f_e, f_m]
        return self.net(torch.cat(parts, dim=1))


class MotionNet(nn.Module):
    """E_e, E_m and D_{e,m} with the input / residual scalings as buffers (see the module docstring)."""

    def __init__(self, config: MotionConfig):
        super().__init__()
        self.config = config
        size = config.motion_size
        self.register_buffer("input_mean", torch.zeros(size))  # absolute (p, j): the decoder's neutral input
        self.register_buffer("input_scale", torch.ones(size))
        self.register_buffer("encoder_mean", torch.zeros(size))  # what the encoders read (absolute or relative)
        self.register_buffer("encoder_scale", torch.ones(size))
        self.register_buffer("residual_scale", torch.ones(size))  # std of (p, j) - (p_neu, j_neu)
        self.expression_encoder = MotionEncoder(config, config.expression_dim)
        self.mouth_encoder = MotionEncoder(config, config.mouth_dim)
        self.decoder = MotionDecoder(config)

    @torch.no_grad()
    def set_normalization(self, motion: np.ndarray, residual: np.ndarray) -> None:
        """Statistics from flattened training frames (M, 6N) and their offsets to their actor's neutral frame
        (M, 6N): mean/std of each, the encoders' pair chosen by `relative_input`; constant dimensions get 1."""
        def stats(a: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            a = np.asarray(a, np.float64)
            std = a.std(axis=0)
            return torch.from_numpy(a.mean(axis=0)).float(), torch.from_numpy(np.where(std > 1e-8, std, 1.0)).float()

        (m_mean, m_scale), (r_mean, r_scale) = stats(motion), stats(residual)
        self.input_mean.copy_(m_mean)
        self.input_scale.copy_(m_scale)
        self.encoder_mean.copy_(r_mean if self.config.relative_input else m_mean)
        self.encoder_scale.copy_(r_scale if self.config.relative_input else m_scale)
        self.residual_scale.copy_(r_scale)

    def encoder_input(self, value: torch.Tensor, jacobian: torch.Tensor, value_neu: torch.Tensor | None = None,
                      jacobian_neu: torch.Tensor | None = None) -> torch.Tensor:
        """Standardised (p, j) (absolute) or (p - p_neu, j - j_neu) (relative_input): what both encoders read."""
        x = flatten_motion(value, jacobian)
        if self.config.relative_input:
            if value_neu is None or jacobian_neu is None:
                raise ValueError("this MotionNet encodes motion relative to the actor's neutral keypoints: "
                                 "pass value_neu and jacobian_neu")
            x = x - flatten_motion(value_neu.expand_as(value), jacobian_neu.expand_as(jacobian))
        return (x - self.encoder_mean) / self.encoder_scale

    def encode_expression(self, value: torch.Tensor, jacobian: torch.Tensor, value_neu: torch.Tensor | None = None,
                          jacobian_neu: torch.Tensor | None = None) -> torch.Tensor:
        """E_e: (B,N,2), (B,N,2,2) [, p_neu (B,N,2), j_neu (B,N,2,2) when relative_input] -> f_e (B, expression_dim)."""
        return self.expression_encoder(self.encoder_input(value, jacobian, value_neu, jacobian_neu))

    def encode_mouth(self, value: torch.Tensor, jacobian: torch.Tensor, value_neu: torch.Tensor | None = None,
                     jacobian_neu: torch.Tensor | None = None) -> torch.Tensor:
        """E_m: (B,N,2), (B,N,2,2) [, p_neu, j_neu when relative_input] -> f_m (B, mouth_dim)."""
        return self.mouth_encoder(self.encoder_input(value, jacobian, value_neu, jacobian_neu))

    def encode(self, value: torch.Tensor, jacobian: torch.Tensor, value_neu: torch.Tensor | None = None,
               jacobian_neu: torch.Tensor | None = None, stats_rows: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(f_e, f_m) of the same frames, preparing the input once; `stats_rows`: see MotionEncoder.forward."""
        x = self.encoder_input(value, jacobian, value_neu, jacobian_neu)
        return self.expression_encoder(x, stats_rows), self.mouth_encoder(x, stats_rows)

    def decode(self, f_e: torch.Tensor, f_m: torch.Tensor, value_neu: torch.Tensor, jacobian_neu: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """D_{e,m}: (f_e, f_m, p_neu (B,N,2), j_neu (B,N,2,2)) -> (value (B,N,2), jacobian (B,N,2,2)).
        A neutral batch of one (1,N,2), (1,N,2,2) serves every row."""
        batch = f_e.shape[0]
        neutral = flatten_motion(value_neu.expand(batch, -1, -1), jacobian_neu.expand(batch, -1, -1, -1))
        residual = self.decoder(f_e, f_m, (neutral - self.input_mean) / self.input_scale)
        return unflatten_motion(neutral + residual * self.residual_scale, self.config.num_kp)

    def forward(self, value: torch.Tensor, jacobian: torch.Tensor, value_neu: torch.Tensor,
                jacobian_neu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Self-reconstruction D(E_e(p, j), E_m(p, j), p_neu, j_neu)."""
        f_e, f_m = self.encode(value, jacobian, value_neu, jacobian_neu)
        return self.decode(f_e, f_m, value_neu, jacobian_neu)


def init_motion(config: MotionConfig, seed: int) -> MotionNet:
    """A freshly initialised MotionNet; the same seed gives the same weights."""
    torch.manual_seed(seed)
    return MotionNet(config)


def load_motion(path: str | Path) -> MotionNet:
    """`motion.pt` from train_motion -> MotionNet in eval mode on the CPU (weights_only load, strict);
    `step` and `metrics` of the checkpoint are set as attributes."""
    from pipeline.core.checkpoints import load_training_state

    ckpt = load_training_state(path)
    model = ckpt["model"]
    if not isinstance(model, Mapping) or "motion" not in model:
        raise CheckpointError(path, "not a motion checkpoint: model needs a 'motion' state dict")
    try:
        config = MotionConfig.from_dict(ckpt["config"])
    except (InputError, TypeError, ValueError) as exc:
        raise CheckpointError(path, f"bad motion config ({getattr(exc, 'problem', exc)})") from None
    net = MotionNet(config)
    load_strict(net, model["motion"], path)
    net.step = int(ckpt["step"])
    net.metrics = dict(ckpt.get("metrics") or {})
    return net.eval()


def _batch(a: np.ndarray, start: int, size: int, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.array(a[start:start + size], np.float32)).to(device)


@torch.inference_mode()
def encode_frames(net: MotionNet, value: np.ndarray, jacobian: np.ndarray, value_neu: np.ndarray | None = None,
                  jacobian_neu: np.ndarray | None = None, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Numpy (T,N,2), (T,N,2,2) [+ neutral keypoints: (T,N,2), (T,N,2,2) or one (N,2), (N,2,2) for all]
    -> f_e (T, expression_dim), f_m (T, mouth_dim) float32 (computed on the net's device)."""
    device = next(net.parameters()).device
    n = len(value)
    if net.training:  # batch statistics would make a frame's features depend on its batch-mates
        raise ValueError("encode_frames needs the MotionNet in eval mode (load_motion returns it so)")
    if value_neu is not None:
        value_neu = np.broadcast_to(value_neu, (n, *np.shape(value_neu)[-2:]))
        jacobian_neu = np.broadcast_to(jacobian_neu, (n, *np.shape(jacobian_neu)[-3:]))
    f_e = np.zeros((n, net.config.expression_dim), np.float32)
    f_m = np.zeros((n, net.config.mouth_dim), np.float32)
    for s in range(0, n, batch_size):
        neutral = (None, None) if value_neu is None else (_batch(value_neu, s, batch_size, device),
                                                          _batch(jacobian_neu, s, batch_size, device))
        e, m = net.encode(_batch(value, s, batch_size, device), _batch(jacobian, s, batch_size, device), *neutral)
        f_e[s:s + len(e)] = e.float().cpu().numpy()
        f_m[s:s + len(e)] = m.float().cpu().numpy()
    return f_e, f_m


@torch.inference_mode()
def decode_frames(net: MotionNet, f_e: np.ndarray, f_m: np.ndarray, value_neu: np.ndarray, jacobian_neu: np.ndarray,
                  batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Numpy features (T,De), (T,Dm) and neutral keypoints ((T,N,2), (T,N,2,2), or one (N,2), (N,2,2) for all)
    -> value (T,N,2), jacobian (T,N,2,2) float32."""
    device = next(net.parameters()).device
    n = len(f_e)
    value_neu = np.broadcast_to(value_neu, (n, *np.shape(value_neu)[-2:]))
    jacobian_neu = np.broadcast_to(jacobian_neu, (n, *np.shape(jacobian_neu)[-3:]))
    k = net.config.num_kp
    value = np.zeros((n, k, 2), np.float32)
    jacobian = np.zeros((n, k, 2, 2), np.float32)
    for s in range(0, n, batch_size):
        v, j = net.decode(*(_batch(a, s, batch_size, device) for a in (f_e, f_m, value_neu, jacobian_neu)))
        value[s:s + len(v)] = v.float().cpu().numpy()
        jacobian[s:s + len(v)] = j.float().cpu().numpy()
    return value, jacobian


__all__ = ["MotionConfig", "MotionNet", "MotionEncoder", "MotionDecoder", "SubsetBatchNorm", "decode_frames", "encode_frames",
           "flatten_motion", "init_motion", "load_motion", "unflatten_motion"]
