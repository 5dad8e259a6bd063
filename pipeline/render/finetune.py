"""Stage 2 of EMMN training (paper §3.5, Eq. 15): fine-tune the renderer on EmmnNet-predicted keypoints.

The FOMM generator was trained (train_fomm) on keypoints E_k detects in real frames. At inference it
is driven by keypoints EmmnNet predicts from audio, which are smoother and carry their own small
errors. Stage 2 closes that gap: for a frame t of a training clip, the frozen EmmnNet predicts (p^, j^)
from the clip's audio and the actor's neutral reference; the generator renders y^ from the reference
with source keypoints (p_neu, j_neu) and driving (p^, j^); the loss compares y^ with the real frame y.
EmmnNet's predictions for every clip are computed once up front (it is frozen); they are the raw
per-frame keypoints, not one-euro filtered (the filter only smooths them over time, and training
samples single frames). E_k is not trained; the output keeps it so the file is a complete renderer.

Loss: Eq. 15 on VGG19 features (relu1_1 ... relu5_1, FOMM's perceptual layers) when `vgg19` names
torchvision's weight file; without it no pretrained VGG exists here, and the same equation is applied
to the pixels themselves (multi-scale L1): `RenderLoss.kind` says which, and the log and report say it.
Either way over an image pyramid (FOMM's scales), summed. Optionally (`gan_weight` > 0) the discriminator
train_fomm trained joins, as in FOMM's own training: an L1 fit to frames the keypoints only partly explain
averages the appearance it cannot place (wrinkles, eye whites, teeth) into blur, while the adversarial and
feature-matching terms ask for a face the discriminator takes for real.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.audio.prosody import DEFAULT_STORE as DEFAULT_PROSODY_STORE
from pipeline.audio.prosody import ProsodyStore
from pipeline.core.checkpoints import load_training_state
from pipeline.core.config import BaseParams, FinetuneRenderParams
from pipeline.core.errors import InputError
from pipeline.core.image_quality import psnr
from pipeline.core.precision import announce_precision, pick_device, resolve_precision
from pipeline.core.store import open_store, read_index
from pipeline.fomm.adversary import Adversary
from pipeline.fomm.io import detect_keypoints, fomm_from_checkpoint, frames_to_tensor
from pipeline.fomm.losses import MIN_VGG_SIZE
from pipeline.models.fomm import FommConfig, ImagePyramid
from pipeline.models.vgg19 import Vgg19Features, load_vgg19
from pipeline.render.generate import check_keypoint_count, predict_keypoints
from pipeline.training.distributed import shard
from pipeline.training.fit import Fitted, fit
from pipeline.training.loop import (
    LossLog,
    autocast,
    save_training_state,
    seed_all,
    step_rngs,
    torch_threads,
)


def stage2_loss(real_maps: Sequence[torch.Tensor], fake_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eq. 15, L_stage2 = sum_{i=1}^{l} || VGG_i(y^(t)) - VGG_i(y^^(t)) ||_1.

    `real_maps` are the feature maps VGG_i(y) of the ground-truth frame, `fake_maps` those of the rendered
    frame, one per layer i. Each layer's L1 norm is taken as the mean absolute difference over its
    elements (batch, channels, pixels), as FOMM's perceptual loss does, so layers of different sizes
    count alike; the layers' terms are summed. Real maps are constants (no gradient).
    """
    if len(real_maps) != len(fake_maps) or not real_maps:
        raise ValueError(f"need the same, non-zero number of feature maps, got {len(real_maps)} and {len(fake_maps)}")
    total = fake_maps[0].new_zeros((), dtype=torch.float32)
    for real, fake in zip(real_maps, fake_maps):
        total = total + (real.detach().float() - fake.float()).abs().mean()
    return total


def render_loss_kind(with_vgg: bool) -> str:
    """The name logs and reports give Eq. 15's feature space."""
    return "perceptual_vgg19" if with_vgg else "multiscale_l1"


class RenderLoss(nn.Module):
    """Eq. 15 summed over an image pyramid: VGG19 feature maps per level, or the level's pixels (L1)."""

    def __init__(self, scales: Sequence[float], vgg: Vgg19Features | None = None, num_channels: int = 3):
        super().__init__()
        self.pyramid = ImagePyramid(tuple(scales), num_channels)
        self.vgg = vgg
        self.kind = render_loss_kind(vgg is not None)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred_levels, real_levels = self.pyramid(prediction.float()), self.pyramid(target.float())
        total = prediction.new_zeros((), dtype=torch.float32)
        for key, pred in pred_levels.items():
            real = real_levels[key]
            if self.vgg is None:
                total = total + stage2_loss([real], [pred])
            elif min(pred.shape[-2:]) >= MIN_VGG_SIZE:  # relu5_1 needs 16 px after four 2x2 pools
                with torch.no_grad():
                    real_maps = self.vgg(real)
                total = total + stage2_loss(real_maps, self.vgg(pred))
        return total


# ----------------------------------------------------------------------------------------------- data


@dataclass
class PredictedClips:
    """Real clips with EmmnNet's keypoints for each frame: where their frames are, and their actors."""

    clip_ids: list[str]
    actors: list[str]
    starts: np.ndarray  # first corpus frame of each clip
    lengths: np.ndarray
    value: list[np.ndarray]  # per clip (T,N,2) predicted p^
    jacobian: list[np.ndarray]  # per clip (T,N,2,2) predicted j^

    @property
    def num_frames(self) -> int:
        return int(self.lengths.sum())


@dataclass
class References:
    """Each actor's neutral reference frame as a [1,3,S,S] tensor and its (p_neu, j_neu)."""

    images: dict[str, torch.Tensor]
    keypoints: dict[str, dict[str, np.ndarray]]


def actor_references(corpus_dir: Path, kp_detector: nn.Module, image_size: int) -> References:
    root = open_store(corpus_dir / "frames.zarr")
    if "reference_frames" not in root or "reference_actor" not in root:
        raise InputError(corpus_dir / "frames.zarr", "no reference_frames / reference_actor (re-run the corpus stage)")
    frames, actors = root["reference_frames"][:], [str(a) for a in root["reference_actor"][:]]
    value, jacobian = detect_keypoints(kp_detector, frames, image_size)
    images = {a: frames_to_tensor(frames[i:i + 1], image_size) for i, a in enumerate(actors)}
    keypoints = {a: {"value": value[i:i + 1], "jacobian": jacobian[i:i + 1]} for i, a in enumerate(actors)}
    return References(images, keypoints)


def real_clips(corpus_dir: Path, split: str, limit: int = 0) -> pd.DataFrame:
    manifest_path = corpus_dir / "manifest.parquet"
    if not manifest_path.is_file():
        raise InputError(manifest_path, "corpus manifest not found (run the corpus stage first)")
    manifest = pd.read_parquet(manifest_path)
    clips = manifest[(manifest.split == split) & (manifest.kind == "real")].sort_values("clip_id")
    if clips.empty:
        raise InputError(manifest_path, f"no {split}-split real clips")
    if limit > 0 and len(clips) > limit:  # evenly spread over the (sorted) clips: every actor and emotion
        clips = clips.iloc[np.linspace(0, len(clips) - 1, limit).round().astype(int)]
    return clips


def predict_clips(emmn: nn.Module, clips: pd.DataFrame, audio_store: Path, refs: References,
                  prosody_store: Path | None = None) -> PredictedClips:
    """EmmnNet's (p^, j^) for every frame of the clips (emotion from each clip's audio, as at inference; prosody
    relative to each actor's voice baseline when the emotion encoder hears it)."""
    audio_index = read_index(audio_store).set_index("clip_id")
    mfcc = open_store(audio_store)["mfcc"]
    mel = open_store(audio_store)["mel"] if getattr(emmn, "needs_mel", False) else None
    voices = ProsodyStore(prosody_store or DEFAULT_PROSODY_STORE) if getattr(emmn, "needs_prosody", False) else None
    values, jacobians = [], []
    for row in clips.itertuples():
        if row.clip_id not in audio_index.index:
            raise InputError(audio_store, f"clip '{row.clip_id}' has no audio features (re-run audio_features)")
        a = audio_index.loc[row.clip_id]
        windows = np.asarray(mfcc[int(a.start):int(a.stop)], np.float32)
        mel_windows = None if mel is None else np.asarray(mel[int(a.start):int(a.stop)], np.float32)
        value, jacobian = predict_keypoints(emmn, refs.images[row.actor], windows, refs.keypoints[row.actor],
                                            mel=mel_windows,
                                            prosody=None if voices is None else voices.clip(row.clip_id),
                                            voice=None if voices is None else voices.voice(row.actor))
        values.append(value)
        jacobians.append(jacobian)
    lengths = np.array([len(v) for v in values], np.int64)
    if not np.array_equal(lengths, clips.frames.to_numpy(np.int64)):
        raise InputError(audio_store, "audio features and corpus clips differ in length (re-run audio_features)")
    return PredictedClips(list(clips.clip_id), list(clips.actor), clips.start.to_numpy(np.int64), lengths,
                          values, jacobians)


def detected_keypoints(store: Path, clips: PredictedClips) -> tuple:
    """keypoints.zarr's (value, jacobian) arrays, checked to hold the clips at their corpus rows."""
    index = read_index(store).set_index("clip_id")
    for clip_id, start in zip(clips.clip_ids, clips.starts):
        if clip_id not in index.index or int(index.loc[clip_id, "start"]) != int(start):
            raise InputError(store, f"clip '{clip_id}' is not at its corpus rows (re-run keypoints)")
    root = open_store(store)
    return root["value"], root["jacobian"]


class FrameSampler:
    """Random (clip, frame) batches: references, their keypoints, predicted driving keypoints, real frames; with
    `detected` (keypoints.zarr's value and jacobian arrays, row = corpus frame), a frame can instead be driven by
    the keypoints E_k detected in it."""

    def __init__(self, corpus_dir: Path, clips: PredictedClips, refs: References, image_size: int,
                 detected: tuple | None = None):
        self.frames = open_store(corpus_dir / "frames.zarr")["frames"]
        self.clips, self.refs, self.image_size, self.detected = clips, refs, image_size, detected

    def batch(self, picks: Sequence[tuple[int, int]], use_detected: Sequence[bool] = ()) -> dict[str, torch.Tensor]:
        c = self.clips
        kp_src = [self.refs.keypoints[c.actors[i]] for i, _ in picks]
        use_detected = list(use_detected) or [False] * len(picks)

        def driving(which: int, i: int, t: int, real: bool) -> np.ndarray:
            if real:
                return np.asarray(self.detected[which][int(c.starts[i]) + t], np.float32)
            return (c.value, c.jacobian)[which][i][t]

        # contiguous: frames_to_tensor's permuted (channels-last) view under bf16 autocast sends the loss pyramid's
        # interpolate down a CPU path minutes slow per step
        return {
            "source": torch.cat([self.refs.images[c.actors[i]] for i, _ in picks]).contiguous(),
            "target": frames_to_tensor(np.stack([self.frames[int(c.starts[i]) + t] for i, t in picks]),
                                       self.image_size).contiguous(),
            "kp_source_value": torch.from_numpy(np.concatenate([k["value"] for k in kp_src])),
            "kp_source_jacobian": torch.from_numpy(np.concatenate([k["jacobian"] for k in kp_src])),
            "kp_driving_value": torch.from_numpy(np.stack([driving(0, i, t, r)
                                                           for (i, t), r in zip(picks, use_detected)])),
            "kp_driving_jacobian": torch.from_numpy(np.stack([driving(1, i, t, r)
                                                              for (i, t), r in zip(picks, use_detected)])),
        }

    def sample(self, rng: np.random.Generator, size: int, detected_share: float = 0.0) -> dict[str, torch.Tensor]:
        clips = rng.integers(len(self.clips.clip_ids), size=size)
        picks = [(int(i), int(rng.integers(self.clips.lengths[i]))) for i in clips]
        use_detected = rng.random(size) < detected_share if detected_share > 0 else ()  # drawn last: same picks
        return self.batch(picks, use_detected)

    def clip_batches(self, index: int, batch_size: int):
        for start in range(0, int(self.clips.lengths[index]), batch_size):
            stop = min(start + batch_size, int(self.clips.lengths[index]))
            yield self.batch([(index, t) for t in range(start, stop)])


def render_batch(generator: nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """The generator's prediction for a sampler batch (source = reference, driving = predicted keypoints)."""
    b = {k: v.to(device) for k, v in batch.items()}
    return generator(b["source"], kp_driving={"value": b["kp_driving_value"], "jacobian": b["kp_driving_jacobian"]},
                     kp_source={"value": b["kp_source_value"], "jacobian": b["kp_source_jacobian"]})["prediction"]


def sharpness(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute 4-neighbour Laplacian of each image (B, C, H, W) -> (B,): high-frequency energy, which an L1
    fit to mismatched targets removes first (PSNR rises while the face blurs)."""
    lap = (4 * images[..., 1:-1, 1:-1] - images[..., :-2, 1:-1] - images[..., 2:, 1:-1]
           - images[..., 1:-1, :-2] - images[..., 1:-1, 2:])
    return lap.abs().flatten(1).mean(1)


@torch.inference_mode()
def evaluate(generator: nn.Module, sampler: FrameSampler, device: torch.device, batch_size: int = 16) -> dict:
    """Mean L1, PSNR (dB) and sharpness ratio (rendered / real, 1 = as sharp as the real frames) of rendered vs
    real frames over every frame of the sampler's clips."""
    was_training = generator.training
    generator.eval()
    l1, db, sharp, count = 0.0, 0.0, 0.0, 0
    for i in range(len(sampler.clips.clip_ids)):
        for batch in sampler.clip_batches(i, batch_size):
            pred = render_batch(generator, batch, device).float().cpu()
            target = batch["target"]
            l1 += float((pred - target).abs().flatten(1).mean(1).sum())
            db += float(psnr(pred, target, data_range=1.0, mse_floor=1e-10).sum())
            sharp += float((sharpness(pred) / sharpness(target).clamp_min(1e-8)).sum())
            count += len(pred)
    generator.train(was_training)
    n = max(count, 1)
    return {"l1": round(l1 / n, 6), "psnr": round(db / n, 4), "sharpness": round(sharp / n, 4), "frames": count}


# ------------------------------------------------------------------------------------------- training


def stage2_adversary(fomm_ckpt: Mapping[str, Any], fomm_path: str | Path, config: FommConfig,
                     p: FinetuneRenderParams, device: torch.device, bf16: bool = False) -> tuple[Adversary, str]:
    """The discriminator of stage 2's GAN and where it came from: fomm.pt's (train_state) when train_fomm's GAN
    left one, since it already knows this corpus's faces ("fomm.pt"), else a fresh one ("fresh")."""
    adversary = Adversary(config, device, gan_weight=p.gan_weight, feature_matching_weight=p.feature_matching_weight,
                          lr=p.lr, bf16=bf16)
    state = (fomm_ckpt.get("train_state") or {}).get("discriminator")
    if state is None:
        return adversary, "fresh"
    adversary.load_state(state, fomm_path)
    return adversary, "fomm.pt"


def finetune_render(corpus_dir: str | Path, audio_store: str | Path, emmn_path: str | Path, fomm_path: str | Path,
                    model_out: str | Path, losses_csv: str | Path, base: BaseParams, p: FinetuneRenderParams,
                    *, log=print, prosody_store: str | Path = DEFAULT_PROSODY_STORE,
                    keypoints_store: str | Path = Path("data/features/keypoints.zarr")) -> dict:
    """Fine-tune fomm.pt's generator (+ dense motion) with Eq. 15 on EmmnNet-driven renders of training
    clips; write `model_out` (fomm.pt layout: the unchanged E_k + the fine-tuned generator) and the loss
    log; return metrics (held-out L1/PSNR before and after, loss kind, steps). `p.steps` 0: no fine-tuning,
    `model_out` is fomm.pt's renderer as it is (still measured on the held-out clips), the log empty."""
    from pipeline.models.emmn import load_emmn

    corpus_dir, audio_store = Path(corpus_dir), Path(audio_store)
    if p.steps > 0 and not (p.train_generator or p.train_dense_motion):
        raise InputError("params.yaml", "finetune_render.train_generator and train_dense_motion are both false: "
                                        "nothing to fine-tune")
    with torch_threads(p.threads):
        device = pick_device(base.device)
        precision = resolve_precision(base.precision, device)
        seed_all(base.seed)
        fomm_ckpt = load_training_state(fomm_path)
        fomm = fomm_from_checkpoint(fomm_ckpt, fomm_path)
        emmn = load_emmn(emmn_path).to(device)
        check_keypoint_count(emmn, emmn_path, fomm.config.num_kp, fomm_path)
        kp_detector, generator = fomm.kp_detector.to(device), fomm.generator.to(device)
        size = fomm.config.image_size
        refs = actor_references(corpus_dir, kp_detector, size)
        train = (predict_clips(emmn, real_clips(corpus_dir, "train"), audio_store, refs, Path(prosody_store))
                 if p.steps > 0 else None)
        heldout = predict_clips(emmn, real_clips(corpus_dir, "test", p.eval_clips), audio_store, refs,
                                Path(prosody_store))
        del emmn  # frozen: its predictions are all stage 2 needs
        eval_sampler = FrameSampler(corpus_dir, heldout, refs, size)
        # the loss's VGG19 file and the discriminator are read before any rendering, and only when used
        loss_fn = (RenderLoss(p.scales, load_vgg19(p.vgg19).to(device) if p.vgg19 else None,
                              fomm.config.num_channels).to(device) if train is not None else None)
        adversary, origin = (stage2_adversary(fomm_ckpt, fomm_path, fomm.config, p, device, precision.bf16)
                             if train is not None and p.gan_weight > 0 else (None, None))
        del fomm_ckpt
        before = evaluate(generator, eval_sampler, device)
        log(f"finetune_render: held-out ({len(heldout.clip_ids)} clips) before: L1 {before['l1']:.4f}, "
            f"PSNR {before['psnr']:.2f} dB, sharpness {before['sharpness']:.3f}")
        def report(steps: int, recent: Mapping[str, float], after: Mapping[str, Any]) -> dict[str, Any]:
            return {
                "loss": render_loss_kind(bool(p.vgg19)), "vgg19": p.vgg19, "train_dense_motion": p.train_dense_motion,
                "train_generator": p.train_generator, "real_keypoint_share": p.real_keypoint_share,
                "gan_weight": p.gan_weight, "feature_matching_weight": p.feature_matching_weight,
                "discriminator": origin, "precision": precision.resolved if train is not None else None,
                "steps": steps, "train_clips": 0 if train is None else len(train.clip_ids),
                "heldout_clips": len(heldout.clip_ids), "heldout_frames": after["frames"],
                "heldout_l1_before": before["l1"], "heldout_l1_after": after["l1"],
                "heldout_psnr_before": before["psnr"], "heldout_psnr_after": after["psnr"],
                "heldout_sharpness_before": before["sharpness"], "heldout_sharpness_after": after["sharpness"],
                "fomm": str(fomm_path), "fomm_step": fomm.step, "emmn": str(emmn_path),
                **{f"final_{k}": round(v, 6) for k, v in recent.items()},
            }

        if train is None:
            log("finetune_render: steps 0: no fine-tuning, the renderer is fomm.pt's as it is")
            LossLog(losses_csv).flush()
            metrics = report(0, {}, before)
            save_training_state(model_out, modules={"kp_detector": kp_detector, "generator": generator.eval()},
                                config=fomm.config.to_dict(), step=0, metrics=metrics)
            return metrics
        log(f"finetune_render: loss = Eq. 15 on {loss_fn.kind}"
            + (f" (VGG19 weights {p.vgg19})" if p.vgg19
               else " (no finetune_render.vgg19 weights given: no pretrained VGG here, so the equation is "
                    "applied to the pixels of an image pyramid)")
            + f"; image generator {'fine-tuned' if p.train_generator else 'frozen'}"
            + f"; dense motion {'fine-tuned' if p.train_dense_motion else 'frozen'}; device {device}"
            + (f"; {p.real_keypoint_share:.0%} of frames driven by their own detected keypoints"
               if p.real_keypoint_share > 0 else "")
            + (f"; + LSGAN ({p.gan_weight}) and feature matching ({p.feature_matching_weight}) of the "
               f"{origin} discriminator" if adversary is not None else ""))
        announce_precision(precision, "finetune_render", log)
        log(f"finetune_render: {len(train.clip_ids)} training clips ({train.num_frames} frames), "
            f"{1 - p.real_keypoint_share:.0%} of their frames driven by EmmnNet keypoints")
        detected = detected_keypoints(Path(keypoints_store), train) if p.real_keypoint_share > 0 else None
        train_sampler = FrameSampler(corpus_dir, train, refs, size, detected)
        after: dict[str, Any] = {}

        def finish(step: int) -> None:
            after.update(evaluate(generator.eval(), eval_sampler, device))
            log(f"finetune_render: held-out after {step} steps: L1 {after['l1']:.4f}, PSNR {after['psnr']:.2f} dB, "
                f"sharpness {after['sharpness']:.3f}")

        return fine_tune(generator, kp_detector, fomm.config, train_sampler, loss_fn, adversary, Path(model_out),
                         Path(losses_csv), base, p, device, precision.bf16, log, finish=finish,
                         metrics=lambda step, recent: report(step, recent, after) if after else {"steps": step}).metrics


def fine_tune(generator: nn.Module, kp_detector: nn.Module, config: FommConfig, sampler: FrameSampler,
              loss_fn: RenderLoss, adversary: Adversary | None, model_out: Path, losses_csv: Path, base: BaseParams,
              p: FinetuneRenderParams, device: torch.device, bf16: bool = False, log=print, *,
              finish: Callable[[int], None], metrics: Callable[[int, Mapping[str, float]], dict[str, Any]]) -> Fitted:
    """The stage-2 loop on the generator (the parts `p` names) in place, through `fit` (checkpoints of
    `model_out` in fomm.pt's layout, with the optimizer and discriminator states a resumed run reads)."""
    generator.requires_grad_(p.train_generator)
    generator.dense_motion_network.requires_grad_(p.train_dense_motion)
    trainable = [q for q in generator.parameters() if q.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=p.lr, betas=(0.5, 0.999))  # FOMM's betas

    def step_fn(step: int) -> dict[str, float]:
        rng, _ = step_rngs(base.seed, step)
        batch = shard(sampler.sample(rng, p.batch_size, p.real_keypoint_share))
        # frozen parts stay in eval mode, so their BatchNorm statistics do not drift either
        generator.train(p.train_generator)
        generator.dense_motion_network.train(p.train_dense_motion)
        target = batch["target"].to(device)
        with autocast(device, bf16):
            prediction = render_batch(generator, batch, device)
            losses = {"stage2": loss_fn(prediction, target)}
            if adversary is not None:
                losses.update(adversary.generator_losses(prediction, target))
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        logged = {k: float(v.detach()) for k, v in losses.items()}
        if adversary is not None:
            logged["discriminator"] = adversary.update(prediction, target)
        return logged

    optimizers = {"optimizer": optimizer, **({"optimizer_d": adversary.optimizer} if adversary is not None else {})}
    extra = {"discriminator": adversary.discriminator} if adversary is not None else {}
    return fit(step_fn, stage="finetune_render", out=model_out, losses_csv=losses_csv, config=config.to_dict(),
               modules={"kp_detector": kp_detector, "generator": generator}, optimizers=optimizers,
               extra_modules=extra, p=p, metrics=metrics, finish=finish, log=log)
