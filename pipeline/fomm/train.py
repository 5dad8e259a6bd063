"""Self-supervised FOMM training on corpus frames (Siarohin et al. 2019), and the `fomm.pt` format.

A training pair is two frames of one real training-split clip or, with probability `cross_clip`, of two
clips of one actor (another emotion or sentence: EMMN drives a neutral photo into every emotion, and pairs from
one clip never differ in expression): the generator must rebuild the driving
frame from the source frame and both frames' keypoints (reconstruction loss), while the keypoints must
follow a known random warp of the driving frame (equivariance on values and Jacobians). Where the frames have
landmarks (the corpus), two terms FOMM lacks put the expression into the motion: keypoints 0-9 pinned to brows,
lids, mouth corners and lips (`landmark_anchors`), and the dense flow read at the driving landmarks pointing at
the source's (`landmark_flow`). An optional LSGAN discriminator (off by default) adds adversarial and
feature-matching terms.

Checkpoint (`data/models/fomm.pt`, plain dict): {model: {kp_detector, generator}, config:
FommConfig.to_dict(), step, metrics, train_state: {optimizer[, discriminator, optimizer_d]}}.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.core.config import BaseParams, TrainFommParams, deep_merge
from pipeline.core.errors import InputError
from pipeline.core.precision import announce_precision, pick_device, resolve_precision
from pipeline.core.store import open_store
from pipeline.corpus.manifest import training_sets
from pipeline.fomm.adversary import Adversary
from pipeline.fomm.io import frames_to_tensor
from pipeline.fomm.losses import (
    ANCHOR_LANDMARKS,
    RandomTransform,
    ReconstructionLoss,
    equivariance_losses,
    face_part_weights,
    landmark_anchor_loss,
    landmark_anchor_targets,
    landmark_flow_loss,
    mirror_landmarks,
    normalized_landmarks,
)
from pipeline.models.fomm import (
    FommConfig,
    KPDetector,
    OcclusionAwareGenerator,
    load_official_fomm,
)
from pipeline.models.vgg19 import load_vgg19
from pipeline.training.distributed import shard
from pipeline.training.fit import fit
from pipeline.training.loop import (
    LossLog,
    autocast,
    count_parameters,
    save_training_state,
    seed_all,
    step_rngs,
    torch_threads,
)

PRESETS = {"slim": FommConfig.slim, "vox256": FommConfig.vox256}

# ------------------------------------------------------------------------------------ config, models


def fomm_config(p: TrainFommParams) -> FommConfig:
    """The preset at `image_size`/`num_kp`, with `model` overrides (FommConfig.to_dict() layout) on top."""
    if p.preset not in PRESETS:
        raise InputError("params.yaml", f"train_fomm.preset must be one of {sorted(PRESETS)}, not '{p.preset}'")
    if p.landmark_anchors > 0 and p.num_kp < len(ANCHOR_LANDMARKS):
        raise InputError("params.yaml", f"train_fomm.landmark_anchors pins {len(ANCHOR_LANDMARKS)} keypoints: "
                                        f"num_kp must be at least that, not {p.num_kp}")
    values = deep_merge(PRESETS[p.preset]().to_dict(), {"image_size": p.image_size, "num_kp": p.num_kp})
    try:
        return FommConfig.from_dict(deep_merge(values, dict(p.model)))
    except InputError as exc:
        raise InputError("params.yaml", f"train_fomm: {exc.problem}") from None


def init_fomm(config: FommConfig, seed: int) -> tuple[KPDetector, OcclusionAwareGenerator]:
    """Freshly initialised detector and generator; the same seed gives the same weights (the report's
    'untrained detector' is exactly the training run's starting point)."""
    seed_all(seed)
    kp_detector = KPDetector(config)
    generator = OcclusionAwareGenerator(config)
    return kp_detector, generator


# ----------------------------------------------------------------------------------------------- data


class StackedRows:
    """Frame-indexed arrays of several sets read as one: row `offsets[k] + i` is row i of set k."""

    def __init__(self, arrays: Sequence[Any]):
        self.arrays = list(arrays)
        self.offsets = np.cumsum([0] + [a.shape[0] for a in self.arrays]).astype(np.int64)
        self.shape = (int(self.offsets[-1]), *self.arrays[0].shape[1:])

    def __getitem__(self, row: int) -> np.ndarray:
        k = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return self.arrays[k][int(row - self.offsets[k])]


class FramePairSampler:
    """(source, driving) batches: two distinct random frames of one random real clip of a split or, with
    probability `cross_clip`, the source from another real clip of the same actor (the corpus and MEAD film an
    actor's clips in one setting, so only the face differs: expression, mouth, pose).

    `corpus_dirs`: one corpus folder or several (the corpus and the wide set, whose frames must have the same
    size); their clips are drawn from as one pool."""

    def __init__(self, corpus_dirs: str | Path | Sequence[str | Path], image_size: int, split: str = "train",
                 cross_clip: float = 0.0):
        dirs = [Path(corpus_dirs)] if isinstance(corpus_dirs, (str, Path)) else [Path(d) for d in corpus_dirs]
        frames, landmarks, starts, lengths, actors, offset = [], [], [], [], [], 0
        for k, corpus_dir in enumerate(dirs):
            manifest_path = corpus_dir / "manifest.parquet"
            if not manifest_path.is_file():
                raise InputError(manifest_path, "corpus manifest not found (run the corpus stage first)")
            manifest = pd.read_parquet(manifest_path)
            clips = manifest[(manifest.split == split) & (manifest.kind == "real") & (manifest.frames >= 2)]
            if clips.empty:
                raise InputError(manifest_path, f"no {split}-split real clips with 2+ frames to train on")
            root = open_store(corpus_dir / "frames.zarr")
            if frames and root["frames"].shape[1:] != frames[0].shape[1:]:
                raise InputError(corpus_dir / "frames.zarr", f"frames of {tuple(root['frames'].shape[1:])} differ "
                                 f"from {dirs[0]}'s {tuple(frames[0].shape[1:])}: render both sets at one size")
            if int(clips.stop.max()) > root["frames"].shape[0]:
                raise InputError(corpus_dir / "frames.zarr", "manifest start/stop run past the frames array")
            frames.append(root["frames"])
            landmarks.append(root["landmarks"])
            starts.append(clips.start.to_numpy(np.int64) + offset)
            lengths.append((clips.stop - clips.start).to_numpy(np.int64))
            actors.append(np.asarray([f"{k}/{a}" for a in clips.actor]) if k else clips.actor.to_numpy())
            offset += root["frames"].shape[0]
        # one set: its arrays themselves (the reads, and so the model, of single-set runs stay as they were)
        self.frames, self.landmarks = ((frames[0], landmarks[0]) if len(dirs) == 1
                                       else (StackedRows(frames), StackedRows(landmarks)))
        self.starts, self.lengths = np.concatenate(starts), np.concatenate(lengths)
        actors = np.concatenate(actors)
        # For each clip, the other clips of its actor (empty: an actor with one clip keeps same-clip pairs).
        self.same_actor = [np.flatnonzero((actors == a) & (np.arange(len(actors)) != i))
                           for i, a in enumerate(actors)]
        self.cross_clip = float(cross_clip)
        self.image_size = image_size
        self.num_clips = len(self.starts)
        self.num_frames = int(self.lengths.sum())

    def sample(self, rng: np.random.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.load(self.sample_rows(rng, batch))

    def load(self, rows: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Source and driving frames of `rows` as float tensors at the model's size."""
        # One frame at a time: a frame is one small chunk read; fancy indexing over shards is slower.
        source = np.stack([self.frames[s] for s, _ in rows])
        driving = np.stack([self.frames[d] for _, d in rows])
        return frames_to_tensor(source, self.image_size), frames_to_tensor(driving, self.image_size)

    def sample_rows(self, rng: np.random.Generator, batch: int) -> list[tuple[int, int]]:
        """(source, driving) frame indices into frames.zarr."""
        clips = rng.integers(self.num_clips, size=batch)
        # No extra draw without cross-clip pairs: the same stream (and model) as same-clip-only sampling.
        cross = rng.random(batch) < self.cross_clip if self.cross_clip > 0 else np.zeros(batch, bool)
        rows = []
        for c, other in zip(clips, cross):
            if other and len(self.same_actor[c]):
                s = int(rng.choice(self.same_actor[c]))
                i, j = int(rng.integers(self.lengths[s])), int(rng.integers(self.lengths[c]))
                rows.append((int(self.starts[s] + i), int(self.starts[c] + j)))
                continue
            i, j = rng.choice(int(self.lengths[c]), size=2, replace=False)
            rows.append((int(self.starts[c] + i), int(self.starts[c] + j)))
        return rows

    def part_weights(self, rows: list[tuple[int, int]], part_weight: float) -> torch.Tensor:
        """face_part_weights of the driving frames (the frames the loss compares with)."""
        landmarks = np.stack([self.landmarks[d] for _, d in rows])
        return face_part_weights(landmarks, self.frames.shape[2], self.image_size, part_weight)

    def landmark_points(self, rows: list[tuple[int, int]]) -> torch.Tensor:
        """normalized_landmarks of the source and driving frames: [2,B,68,2]."""
        return torch.stack([normalized_landmarks(np.stack([self.landmarks[row[k]] for row in rows]),
                                                 self.frames.shape[2]) for k in (0, 1)])


# YIQ: luma + two chroma axes; rotating the chroma plane shifts hue.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def augment_pair(source: torch.Tensor, driving: torch.Tensor, generator: torch.Generator, *, flip: bool,
                 jitter: float, pixel_weights: torch.Tensor | None = None, landmarks: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """FOMM's augmentation, identical for both frames of a pair: random horizontal flip, and brightness,
    contrast, saturation (factors 1 +- jitter) and hue (+- jitter of a full turn) jitter. `pixel_weights`
    (the loss's, [B,1,H,W]) and normalized `landmarks` ([2,B,68,2]) are mirrored with their pair.

    Unseen identities are the test: recolouring and mirroring the few training faces widens what the
    generator must carry over from the source image instead of memorising.
    """
    batch = source.shape[0]
    draws = torch.rand(batch, 5, generator=generator)
    pair = torch.stack([source, driving])  # [2,B,3,H,W]
    if flip:
        mirrored = draws[:, 0] < 0.5
        pair[:, mirrored] = pair[:, mirrored].flip(-1)
        if pixel_weights is not None:
            pixel_weights = pixel_weights.clone()
            pixel_weights[mirrored] = pixel_weights[mirrored].flip(-1)
        if landmarks is not None:
            landmarks = landmarks.clone()
            landmarks[:, mirrored] = mirror_landmarks(landmarks[:, mirrored])
    if jitter > 0:
        brightness, contrast, saturation = (1 + (2 * draws[:, 1:4] - 1) * jitter).T.reshape(3, 1, batch, 1, 1, 1)
        hue = (2 * draws[:, 4] - 1) * jitter * 2 * torch.pi
        luma = _RGB_TO_YIQ[0].view(1, 1, 3, 1, 1)
        pair = pair * brightness
        mean = (pair * luma).sum(2, keepdim=True).mean(dim=(3, 4), keepdim=True)
        pair = (pair - mean) * contrast + mean
        gray = (pair * luma).sum(2, keepdim=True)
        pair = gray + (pair - gray) * saturation
        rotation = torch.zeros(batch, 3, 3)
        rotation[:, 0, 0] = 1
        rotation[:, 1, 1], rotation[:, 1, 2] = torch.cos(hue), -torch.sin(hue)
        rotation[:, 2, 1], rotation[:, 2, 2] = torch.sin(hue), torch.cos(hue)
        colour = _YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ  # [B,3,3]
        pair = torch.einsum("bij,pbjhw->pbihw", colour, pair)
    pair = pair.clamp(0, 1)
    return pair[0], pair[1], pixel_weights, landmarks


# ------------------------------------------------------------------------------------------- training


class FommTrainer:
    """Modules, losses and optimizers of one FOMM training run; `train_step` does one update."""

    def __init__(self, config: FommConfig, p: TrainFommParams, device: torch.device, seed: int,
                 vgg: torch.nn.Module | None = None, *, bf16: bool = False):
        self.config, self.p, self.device, self.bf16 = config, p, device, bf16
        kp_detector, generator = init_fomm(config, seed)
        self.kp_detector, self.generator = kp_detector.to(device), generator.to(device)
        self.reconstruction = ReconstructionLoss(p.reconstruction_scales, p.reconstruction_weight, vgg,
                                                 config.num_channels).to(device)
        params = list(self.kp_detector.parameters()) + list(self.generator.parameters())
        self.optimizer = torch.optim.Adam(params, lr=p.lr, betas=(0.5, 0.999))  # FOMM's betas
        self.adversary = (Adversary(config, device, gan_weight=p.gan_weight,
                                    feature_matching_weight=p.feature_matching_weight, lr=p.lr, bf16=bf16)
                          if p.gan_weight > 0 else None)

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"kp_detector": self.kp_detector, "generator": self.generator}

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        out = {"optimizer": self.optimizer}
        if self.adversary is not None:
            out["optimizer_d"] = self.adversary.optimizer
        return out

    @property
    def extra_modules(self) -> dict[str, torch.nn.Module]:
        return {} if self.adversary is None else {"discriminator": self.adversary.discriminator}

    def losses(self, source: torch.Tensor, driving: torch.Tensor, gen: torch.Generator,
               pixel_weights: torch.Tensor | None = None, landmarks: torch.Tensor | None = None, *,
               gan: bool = True) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Weighted loss terms for one batch (train mode) and the prediction; the adversarial ones when there is
        a discriminator and `gan`."""
        p = self.p
        use_equivariance = p.equivariance_value_weight > 0 or p.equivariance_jacobian_weight > 0
        if use_equivariance:
            # The warp is data augmentation: outside autocast and the graph (grid_sample in float32).
            transform = RandomTransform.random(driving.shape[0], sigma_affine=p.sigma_affine, sigma_tps=p.sigma_tps,
                                               points_tps=p.points_tps, generator=gen, device=self.device)
            with torch.no_grad():
                transformed = transform.transform_frame(driving)
        with autocast(self.device, self.bf16):
            kp_source = self.kp_detector(source)
            kp_driving = self.kp_detector(driving)
            out = self.generator(source, kp_driving=kp_driving, kp_source=kp_source)
            prediction = out["prediction"]
            losses = {"reconstruction": self.reconstruction(prediction, driving, pixel_weights)}
            kp_transformed = self.kp_detector(transformed) if use_equivariance else None
            if self.adversary is not None and gan:
                losses.update(self.adversary.generator_losses(prediction, driving))
        zero = prediction.new_zeros((), dtype=torch.float32)
        equivariance = equivariance_losses(kp_driving, kp_transformed, transform) if use_equivariance else {}
        losses["equivariance_value"] = p.equivariance_value_weight * equivariance.get("equivariance_value", zero)
        losses["equivariance_jacobian"] = (p.equivariance_jacobian_weight
                                           * equivariance.get("equivariance_jacobian", zero))
        if landmarks is not None and p.landmark_anchors > 0:
            losses["landmark_anchors"] = p.landmark_anchors * 0.5 * sum(
                landmark_anchor_loss(kp["value"], landmark_anchor_targets(points))
                for kp, points in ((kp_source, landmarks[0]), (kp_driving, landmarks[1])))
        if landmarks is not None and p.landmark_flow > 0:
            losses["landmark_flow"] = p.landmark_flow * landmark_flow_loss(out["deformation"], landmarks[1],
                                                                           landmarks[0])
        return losses, prediction

    def train_step(self, source: torch.Tensor, driving: torch.Tensor, gen: torch.Generator,
                   pixel_weights: torch.Tensor | None = None, landmarks: torch.Tensor | None = None, *,
                   gan: bool = True) -> dict[str, float]:
        """One update of E_k + the generator, then of the discriminator (when there is one and `gan`)."""
        self.kp_detector.train()
        self.generator.train()
        source, driving = source.to(self.device), driving.to(self.device)
        if pixel_weights is not None:
            pixel_weights = pixel_weights.to(self.device)
        losses, prediction = self.losses(source, driving, gen, pixel_weights, landmarks, gan=gan)
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        logged = {"total": float(total.detach()), **{k: float(v.detach()) for k, v in losses.items()}}
        if self.adversary is not None and gan:
            logged["discriminator"] = self.adversary.update(prediction, driving)
        return logged


def fresh_discriminator_allowed(ckpt: Mapping[str, Any], p: TrainFommParams) -> bool:
    """Resuming a GAN-less checkpoint with the GAN on: fine while it has not reached `gan_start`, since an unbroken
    run's discriminator would still be untouched there."""
    has_discriminator = "discriminator" in (ckpt.get("train_state") or {})
    return p.gan_weight > 0 and not has_discriminator and int(ckpt["step"]) <= p.gan_start


def train_fomm_model(corpus_dir: str | Path, model_out: str | Path, losses_csv: str | Path, base: BaseParams,
                     p: TrainFommParams, *, log=print, wide: str | Path | None = None) -> dict:
    """Train (or import, with `pretrained`) FOMM and write `model_out` + the loss log; return a summary.
    With `p.pretrain_wide` the wide set's training identities (folder `wide`) join the corpus's: identity
    breadth for one-shot animation of unseen faces (LRW's role in the paper)."""
    model_out = Path(model_out)
    config = fomm_config(p)
    if p.pretrained:
        return import_pretrained(p.pretrained, model_out, losses_csv, log=log)
    sets = training_sets(corpus_dir, wide, p.pretrain_wide)
    with torch_threads(p.threads):
        return _train(config, sets, model_out, losses_csv, base, p, log)


def _train(config: FommConfig, sets: list[str | Path], model_out: Path, losses_csv: str | Path, base: BaseParams,
           p: TrainFommParams, log) -> dict:
    device = pick_device(base.device)
    # bad corpus input fails before any model work
    sampler = FramePairSampler(sets, config.image_size, cross_clip=p.cross_clip)
    vgg = load_vgg19(p.vgg19).to(device) if p.vgg19 else None
    precision = resolve_precision(base.precision, device)
    announce_precision(precision, "train_fomm", log)
    trainer = FommTrainer(config, p, device, base.seed, vgg, bf16=precision.bf16)
    kind = trainer.reconstruction.kind
    log(f"train_fomm: reconstruction loss = {kind}"
        + (f" (VGG19 weights {p.vgg19})" if vgg is not None else " (no train_fomm.vgg19 weights given)")
        + f"; GAN {'on' if trainer.adversary is not None else 'off'}; device {device}")
    log(f"train_fomm: {sampler.num_clips} training clips, {sampler.num_frames} frames from {len(sets)} set(s); "
        f"{count_parameters(trainer.kp_detector, trainer.generator) / 1e6:.2f}M parameters at {config.image_size}px")

    def fresh_on_resume(ckpt: Mapping[str, Any]) -> tuple[str, ...]:
        """GAN switched on after a GAN-less checkpoint: the discriminator starts fresh at gan_start."""
        if not fresh_discriminator_allowed(ckpt, p):
            return ()
        log(f"train_fomm: {model_out} has no discriminator (step {ckpt['step']} <= gan_start {p.gan_start}): "
            "it starts fresh")
        return ("optimizer_d", "discriminator")

    def step_fn(step: int) -> dict[str, float]:
        rng, gen = step_rngs(base.seed, step)
        rows = shard(sampler.sample_rows(rng, p.batch_size))  # this rank's pairs (augmentation draws per rank)
        source, driving = sampler.load(rows)
        weights = sampler.part_weights(rows, p.part_weight) if p.part_weight > 0 else None
        landmarks = sampler.landmark_points(rows) if p.landmark_anchors > 0 or p.landmark_flow > 0 else None
        source, driving, weights, landmarks = augment_pair(source, driving, gen, flip=p.augment_flip,
                                                           jitter=p.augment_jitter, pixel_weights=weights,
                                                           landmarks=landmarks)
        return trainer.train_step(source, driving, gen, weights, landmarks, gan=step >= p.gan_start)

    def metrics(step: int, recent: dict[str, float]) -> dict[str, Any]:
        return {"reconstruction_loss": kind, "steps": step, "precision": precision.resolved,
                "parameters": count_parameters(trainer.kp_detector, trainer.generator),
                **{f"final_{k}": round(v, 6) for k, v in recent.items()}}

    return fit(step_fn, stage="train_fomm", out=model_out, losses_csv=losses_csv, config=config.to_dict(),
               modules=trainer.modules, optimizers=trainer.optimizers, extra_modules=trainer.extra_modules, p=p,
               metrics=metrics, fresh_on_resume=fresh_on_resume, log=log).metrics


def import_pretrained(path: str | Path, model_out: str | Path, losses_csv: str | Path, *, log=print) -> dict:
    """Official weights (vox-256 layout) -> fomm.pt in the pipeline format; an empty loss log."""
    config = FommConfig.vox256()
    kp_detector, generator = load_official_fomm(path, config)
    metrics = {"pretrained": str(path), "steps": 0, "parameters": count_parameters(kp_detector, generator)}
    save_training_state(model_out, modules={"kp_detector": kp_detector, "generator": generator},
                        config=config.to_dict(), step=0, metrics=metrics)
    LossLog(losses_csv)  # header-less empty log: the DVC plot output exists, with no curve
    log(f"train_fomm: imported official weights {path} (vox-256) -> {model_out}; no training")
    return metrics


__all__ = [
    "FommTrainer", "FramePairSampler", "augment_pair", "fomm_config", "import_pretrained", "init_fomm",
    "train_fomm_model",
]
