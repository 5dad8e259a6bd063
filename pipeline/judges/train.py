"""Training and held-out measurement of the judges (`train_evaluator`): emotion classifier + face landmarks.

Both nets learn from the real clips of the TRAIN actors only (every `frame_stride`-th frame), in one
loop: each step draws one batch of frames, augments it once (a random shift of up to `shift` px that
moves the landmark targets with the image; a per-channel colour gain and a brightness offset of up to
`jitter`, for unseen skin and background colours; a 2x down/up blur of the first `soften_fraction` of
the batch, so a generator's softer frames read like real ones) and takes one Adam step for each net. Learning
rates decay on a cosine over `steps`, so the judges (and every score they give) are reproducible;
`max_minutes` only guards the wall clock (a run it stops is logged as such).

A third net, the expression judge (`ControlNet`), learns the render controls of the same frames (standardised
smooth L1) when the corpus stores them.

Held-out numbers (TEST actors' real clips, never seen in training):
* emotion: per-frame accuracy, per-clip accuracy by mean logits (what `evaluate` uses) and by majority
  vote, per level and per emotion; this is the ceiling a generated clip can reach.
* landmarks: mean point error in corpus pixels over the 68 points and over the 20 mouth points, and
  the F-LMD / M-LMD of the regressor's points against the exact ones under the metric's protocol
  (mean-centred, clip means averaged): the floor of the LMD columns.
* expression: per-control R^2 and mean absolute error of the expression judge (`expression_r2`,
  `expression_mae`): how well each control can be read off a frame at all (the floor of the expr_err columns).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pipeline.core.config import MEAD_EMOTIONS, BaseParams, TrainEvaluatorParams
from pipeline.core.errors import InputError
from pipeline.core.media import faces_bgr
from pipeline.core.precision import announce_precision, pick_device, resolve_precision
from pipeline.core.store import open_store
from pipeline.corpus.manifest import read_manifest
from pipeline.judges.evaluator import (
    JUDGED_CONTROLS,
    ControlNet,
    EmotionNet,
    Evaluator,
    control_columns,
    evaluator_config,
    face_landmark_net,
)
from pipeline.judges.mouth_landmarks import (
    LandmarkRegressor,
    face_input,
    landmark_loss,
    point_error,
    set_cosine_lr,
    soften,
)
from pipeline.judges.scores import (
    MOUTH,
    clip_emotion,
    confusion_matrix,
    f_lmd,
    m_lmd,
    write_confusion_png,
)
from pipeline.training.distributed import shard
from pipeline.training.fit import fit
from pipeline.training.loop import (
    autocast,
    count_parameters,
    seed_all,
    step_rngs,
    torch_threads,
)


@dataclass
class FrameSet:
    """Real frames of some clips held in memory at the judges' size."""

    clips: pd.DataFrame  # manifest rows, in order
    faces: np.ndarray  # (N,S,S,3) uint8 BGR
    labels: np.ndarray  # (N,) class index
    clip_index: np.ndarray  # (N,) row of `clips`
    landmarks: np.ndarray | None  # (N,68,2) corpus px, None when the corpus has none
    controls: np.ndarray | None = None  # (N,C) render controls (JUDGED_CONTROLS), None when the corpus has none

    def joined(self, other: FrameSet, landmark_scale: float = 1.0) -> FrameSet:
        """This set followed by `other` (its landmarks scaled by `landmark_scale` into this set's pixels)."""
        landmarks = (None if self.landmarks is None or other.landmarks is None
                     else np.concatenate([self.landmarks, other.landmarks * landmark_scale]))
        controls = (None if self.controls is None or other.controls is None
                    else np.concatenate([self.controls, other.controls]))
        return FrameSet(pd.concat([self.clips, other.clips], ignore_index=True),
                        np.concatenate([self.faces, other.faces]), np.concatenate([self.labels, other.labels]),
                        np.concatenate([self.clip_index, other.clip_index + len(self.clips)]), landmarks, controls)


def class_order(manifest: pd.DataFrame) -> tuple[str, ...]:
    """Emotions of the real clips, MEAD order first, any others sorted after."""
    present = set(manifest[manifest.kind == "real"].emotion)
    return tuple([e for e in MEAD_EMOTIONS if e in present] + sorted(present - set(MEAD_EMOTIONS)))


def has_landmarks(store) -> bool:
    """The built-in corpus stores exact landmarks; MEAD ingest leaves NaN."""
    lms = store["landmarks"]
    return lms.shape[0] > 0 and bool(np.isfinite(lms[0]).all())


def load_frame_set(corpus_dir: Path, clips: pd.DataFrame, emotions: tuple[str, ...], size: int, stride: int,
                   with_landmarks: bool, with_controls: bool = False) -> FrameSet:
    store = open_store(Path(corpus_dir) / "frames.zarr")
    frames, lms = store["frames"], store["landmarks"]
    columns = control_columns(store) if with_controls else None
    index = {e: i for i, e in enumerate(emotions)}
    faces, labels, owner, points, controls = [], [], [], [], []
    for i, row in enumerate(clips.itertuples()):
        rows = slice(int(row.start), int(row.stop))
        block = np.asarray(frames[rows])[::stride]
        faces.append(faces_bgr(block, size))
        labels.append(np.full(len(block), index[row.emotion], np.int64))
        owner.append(np.full(len(block), i, np.int64))
        if with_landmarks:
            points.append(np.asarray(lms[rows], np.float32)[::stride])
        if columns is not None:
            controls.append(np.asarray(store["render_params"][rows], np.float32)[::stride][:, columns])
    return FrameSet(clips.reset_index(drop=True), np.concatenate(faces), np.concatenate(labels),
                    np.concatenate(owner), np.concatenate(points) if with_landmarks else None,
                    np.concatenate(controls) if columns is not None else None)


def augment(x: torch.Tensor, targets: torch.Tensor | None, rng: np.random.Generator, shift: int, jitter: float,
            soften_count: int, compress_count: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shift (targets follow, in frame-side fractions), per-channel gain + brightness offset, blur the first images,
    JPEG-compress the last `compress_count` (as a real protocol's videos are)."""
    b, _, h, w = x.shape
    if shift > 0:
        padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
        d = rng.integers(-shift, shift + 1, size=(b, 2))  # content moves by (dx, dy) px
        x = torch.stack([padded[i, :, shift - d[i, 1]:shift - d[i, 1] + h, shift - d[i, 0]:shift - d[i, 0] + w]
                         for i in range(b)])
        if targets is not None:
            targets = targets + torch.from_numpy(d / np.array([w, h], np.float64)).float()[:, None, :]
    if jitter > 0:
        gain = torch.from_numpy(rng.uniform(1 - jitter, 1 + jitter, size=(b, 3, 1, 1))).float()
        offset = torch.from_numpy(rng.uniform(-jitter, jitter, size=(b, 1, 1, 1))).float()
        x = (x * gain + offset).clamp_(0.0, 1.0)
    if soften_count > 0:
        x = torch.cat([soften(x[:soften_count]), x[soften_count:]])
    if compress_count > 0:
        k, qualities = b - compress_count, rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1, compress_count)
        x = torch.cat([x[:k], jpeg_roundtrip(x[k:], qualities)])
    return x, targets


JPEG_QUALITY = (20, 70)  # random quality range of the compression augmentation (web video: ~30-70)


def jpeg_roundtrip(x: torch.Tensor, qualities: np.ndarray) -> torch.Tensor:
    """Images [B,3,H,W] in [0,1] through JPEG at the given qualities (8-bit, OpenCV's encoder) and back."""
    out = []
    for image, quality in zip(x, qualities):
        pixels = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        ok, data = cv2.imencode(".jpg", np.ascontiguousarray(pixels), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if ok else pixels
        out.append(torch.from_numpy(decoded.reshape(pixels.shape)).permute(2, 0, 1).float() / 255.0)
    return torch.stack(out).to(x.dtype)


def train_evaluator_models(corpus_dir: Path, model_out: Path, losses_csv: Path, confusion_png: Path,
                           base: BaseParams, p: TrainEvaluatorParams, log=print,
                           wide: Path | None = None) -> dict[str, Any]:
    """Train both judges on TRAIN actors' real frames, measure them on the TEST actors; save; return metrics.
    With `p.pretrain_wide` the wide set's training identities (folder `wide`) join the training actors: judges
    that have seen hundreds of faces, never the held-out actors."""
    for name in ("soften_fraction", "compress_fraction"):
        if not 0.0 <= getattr(p, name) <= 1.0:
            raise InputError("params.yaml", f"train_evaluator.{name} must be in [0, 1], not {getattr(p, name)}")
    if p.image_size < 16 or p.frame_stride < 1 or p.eval_stride < 1:
        raise InputError("params.yaml", "train_evaluator: image_size >= 16, frame_stride and eval_stride >= 1")
    with torch_threads(p.threads):
        return _train(Path(corpus_dir), Path(model_out), losses_csv, confusion_png, base, p, log,
                      Path(wide) if p.pretrain_wide and wide else None)


def _wide_frames(wide: Path, emotions: tuple[str, ...], p: TrainEvaluatorParams, with_landmarks: bool,
                 frame_size: int, log, with_controls: bool = False) -> tuple[FrameSet | None, float]:
    """The wide set's training frames of the corpus's emotions, and the scale of its landmarks into corpus px;
    None when its landmarks cannot join the corpus's (one set has them, the other not)."""
    manifest = read_manifest(wide)
    clips = manifest[(manifest.kind == "real") & (manifest.split == "train") & manifest.emotion.isin(emotions)]
    store = open_store(wide / "frames.zarr")
    if clips.empty or has_landmarks(store) != with_landmarks:
        why = "no usable clips" if clips.empty else "landmarks in one set only"
        log(f"train_evaluator: the wide set {wide} is left out ({why})")
        return None, 1.0
    if with_controls and control_columns(store) is None:
        log(f"train_evaluator: the wide set {wide} is left out (no render controls, the corpus has them)")
        return None, 1.0
    frames = load_frame_set(wide, clips, emotions, p.image_size, p.frame_stride, with_landmarks, with_controls)
    return frames, frame_size / int(store["frames"].shape[1])


def _train(corpus_dir: Path, model_out: Path, losses_csv: Path, confusion_png: Path, base: BaseParams,
           p: TrainEvaluatorParams, log, wide: Path | None) -> dict[str, Any]:
    started = time.monotonic()
    manifest = read_manifest(corpus_dir)
    real = manifest[manifest.kind == "real"]
    train_clips, test_clips = real[real.split == "train"], real[real.split == "test"]
    for name, clips in (("train", train_clips), ("test", test_clips)):
        if clips.empty:
            raise InputError(corpus_dir / "manifest.parquet", f"no real {name}-split clips for the evaluator")
    store = open_store(corpus_dir / "frames.zarr")
    frame_size = int(store["frames"].shape[1])
    with_landmarks = has_landmarks(store)
    with_controls = control_columns(store) is not None
    emotions = class_order(manifest)
    train = load_frame_set(corpus_dir, train_clips, emotions, p.image_size, p.frame_stride, with_landmarks,
                           with_controls)
    if wide is not None:
        extra, scale = _wide_frames(wide, emotions, p, with_landmarks, frame_size, log, with_controls)
        if extra is not None:
            train = train.joined(extra, scale)
            train_clips = train.clips
    log(f"train_evaluator: {len(train.faces)} training frames from {len(train_clips)} clips, {len(emotions)} emotions,"
        f" landmarks {'yes' if with_landmarks else 'no'}, expression controls {'yes' if with_controls else 'no'}"
        f" ({time.monotonic() - started:.0f}s to load)")

    device = pick_device(base.device)
    precision = resolve_precision(base.precision, device)
    announce_precision(precision, "train_evaluator", log)
    seed_all(base.seed)
    emotion_net = EmotionNet(p.width, len(emotions)).to(device)
    landmark_net = face_landmark_net(p.width, p.image_size).to(device) if with_landmarks else None
    control_net = None
    if with_controls:
        control_net = ControlNet(p.width, len(JUDGED_CONTROLS), (p.image_size, p.image_size))
        control_net.mean.copy_(torch.from_numpy(train.controls.mean(0)))
        control_net.std.copy_(torch.from_numpy(np.maximum(train.controls.std(0), 1e-3)))
        control_net.to(device)
    nets = [n for n in (emotion_net, landmark_net, control_net) if n is not None]
    optimizers = {name: torch.optim.Adam(n.parameters(), lr=p.lr)
                  for name, n in (("emotion", emotion_net), ("landmarks", landmark_net), ("controls", control_net))
                  if n is not None}
    targets = torch.from_numpy(train.landmarks / frame_size) if with_landmarks else None
    control_targets = torch.from_numpy(train.controls) if with_controls else None
    labels = torch.from_numpy(train.labels)
    by_class = [np.flatnonzero(train.labels == c) for c in range(len(emotions))] if p.balance_classes else []
    by_class = [rows for rows in by_class if len(rows)]
    soften_count = int(round(p.soften_fraction * p.batch_size))
    compress_count = int(round(p.compress_fraction * p.batch_size))
    for net in nets:
        net.train()

    def step_fn(step: int) -> dict[str, float]:
        rng, _ = step_rngs(base.seed, step)
        for opt in optimizers.values():  # over steps only, so a run that reaches `steps` is reproducible
            set_cosine_lr(opt, p.lr, step / p.steps)
        idx = draw_frames(rng, by_class, p.batch_size) if by_class else rng.integers(len(train.faces),
                                                                                     size=p.batch_size)
        idx = shard(idx)  # this rank's frames (augmentation draws per rank)
        x, target = augment(face_input(train.faces[idx]), targets[idx] if targets is not None else None, rng,
                            p.shift, p.jitter, soften_count, compress_count)
        x = x.to(device)
        with autocast(device, precision.bf16):
            logits = emotion_net(x)
        ce = F.cross_entropy(logits, labels[idx].to(device))
        losses = {"emotion_ce": ce, "train_accuracy": (logits.argmax(1).cpu() == labels[idx]).float().mean()}
        total = ce
        if landmark_net is not None:
            with autocast(device, precision.bf16):
                lm_loss = landmark_loss(landmark_net, x, target.to(device))
            total = total + lm_loss
            losses["landmark_smooth_l1"] = lm_loss
        if control_net is not None:  # standardised controls: every control weighs alike whatever its unit
            with autocast(device, precision.bf16):
                predicted = control_net.standardized(x)
            wanted = (control_targets[idx].to(device) - control_net.mean) / control_net.std
            control_loss = F.smooth_l1_loss(predicted.float(), wanted)
            total = total + control_loss
            losses["controls_smooth_l1"] = control_loss
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        total.backward()  # the nets share no parameters: one backward gives each its own gradient
        for opt in optimizers.values():
            opt.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    heldout: dict[str, Any] = {}

    def finish(step: int) -> None:
        """Measure the trained judges on the held-out actors' real frames (the final checkpoint's metrics)."""
        emotion_net.eval().cpu()
        landmarks = None
        if landmark_net is not None:
            landmarks = LandmarkRegressor(landmark_net.eval().cpu(), 0.0, frame_size, step, crop_top=0)
        test = load_frame_set(corpus_dir, test_clips, emotions, p.image_size, p.eval_stride, with_landmarks,
                              with_controls)
        controls = None if control_net is None else control_net.eval().cpu()
        judges = Evaluator(emotion_net, emotions, p.image_size, landmarks, controls=controls,
                           control_names=JUDGED_CONTROLS if controls is not None else ())
        heldout.update(heldout_metrics(judges, test, frame_size, confusion_png,
                                       reference_faces(corpus_dir, sorted(set(test_clips.actor)), p.image_size)))

    def metrics(step: int, recent: dict[str, float]) -> dict[str, Any]:
        return {**heldout, "steps": int(step), "stopped_by": "steps" if step >= p.steps else "max_minutes",
                "precision": precision.resolved, "train_frames": int(len(train.faces)),
                "train_clips": int(len(train_clips)), "image_size": p.image_size, "frame_size": frame_size,
                "parameters": count_parameters(*nets), "final_losses": recent}

    modules = {"emotion": emotion_net, **({"landmarks": landmark_net} if landmark_net is not None else {}),
               **({"controls": control_net} if control_net is not None else {})}
    config = evaluator_config(emotions, p.image_size, p.width, frame_size if with_landmarks else 0,
                              JUDGED_CONTROLS if with_controls else ())
    fitted = fit(step_fn, stage="train_evaluator", out=model_out, losses_csv=losses_csv, config=config,
                 modules=modules, optimizers=optimizers, p=p, metrics=metrics, finish=finish, log=log)
    log(f"train_evaluator: held-out clip accuracy {fitted.metrics['emotion_clip_accuracy']:.3f} (chance "
        f"{fitted.metrics['chance_accuracy']:.3f}), landmark error {fitted.metrics['landmark_error_px']} px")
    return fitted.metrics


def reference_faces(corpus_dir: Path, actors: list[str], size: int) -> np.ndarray | None:
    """The neutral reference photos of `actors` (the frame every generated row starts from) at the judges' size;
    None when the corpus stores none."""
    store = open_store(Path(corpus_dir) / "frames.zarr")
    if "reference_frames" not in store or "reference_actor" not in store:
        return None
    names = [str(a) for a in store["reference_actor"][:]]
    rows = [names.index(a) for a in actors if a in names]
    return faces_bgr(np.asarray(store["reference_frames"][:])[rows], size) if rows else None


def draw_frames(rng: np.random.Generator, by_class: list[np.ndarray], count: int) -> np.ndarray:
    """`count` frame indices: a class drawn uniformly, then a frame of it (every emotion alike in a batch)."""
    classes = rng.integers(len(by_class), size=count)
    return np.array([by_class[c][rng.integers(len(by_class[c]))] for c in classes], np.int64)


def heldout_metrics(evaluator: Evaluator, test: FrameSet, frame_size: int, confusion_png: Path,
                    references: np.ndarray | None = None) -> dict[str, Any]:
    """Emotion accuracy (frame, clip by mean logits, clip by majority) and landmark errors on `test`; with the
    held-out actors' neutral reference photos, the share of them judged neutral (the static row's honesty)."""
    emotions = evaluator.emotions
    logits = evaluator.emotion_logits_of_faces(test.faces)
    frame_pred = logits.argmax(axis=1)
    clip_pred, clip_vote, clip_true = [], [], []
    for i, row in enumerate(test.clips.itertuples()):
        mine = test.clip_index == i
        clip_pred.append(clip_emotion(logits[mine], emotions))
        clip_vote.append(emotions[int(np.bincount(frame_pred[mine], minlength=len(emotions)).argmax())])
        clip_true.append(row.emotion)
    clips = test.clips.assign(pred=clip_pred, correct=np.array(clip_pred) == np.array(clip_true))
    counts = clips.emotion.value_counts()
    write_confusion_png(confusion_matrix(clip_true, clip_pred, emotions), emotions, confusion_png,
                        title="held-out real clips")
    out: dict[str, Any] = {
        "emotion_frame_accuracy": round(float((frame_pred == test.labels).mean()), 4),
        "emotion_clip_accuracy": round(float(clips.correct.mean()), 4),
        "emotion_clip_accuracy_majority": round(float(np.mean(np.array(clip_vote) == np.array(clip_true))), 4),
        "chance_accuracy": round(float(counts.max() / counts.sum()), 4),
        "emotion_clip_accuracy_by_level": {str(k): round(float(v), 4)
                                           for k, v in clips.groupby("level").correct.mean().items()},
        "emotion_clip_accuracy_by_emotion": {str(k): round(float(v), 4)
                                             for k, v in clips.groupby("emotion").correct.mean().items()},
        "test_clips": int(len(clips)), "test_frames": int(len(test.faces)),
        "landmark_error_px": None, "mouth_error_px": None, "f_lmd_floor": None, "m_lmd_floor": None,
        "expression_r2": None, "expression_mae": None, "reference_judged_neutral": None,
    }
    if references is not None and "neutral" in emotions:
        judged = evaluator.emotion_logits_of_faces(references).argmax(axis=1)
        out["reference_judged_neutral"] = round(float(np.mean(judged == emotions.index("neutral"))), 4)
    if evaluator.controls is not None and test.controls is not None:
        pred = evaluator.expression_controls_of_faces(test.faces)
        truth = test.controls
        residual = ((pred - truth) ** 2).sum(0)
        spread = ((truth - truth.mean(0)) ** 2).sum(0)
        out["expression_r2"] = {name: round(float(1 - r / s), 4) if s > 1e-12 else None
                                for name, r, s in zip(evaluator.control_names, residual, spread)}
        out["expression_mae"] = {name: round(float(e), 4)
                                 for name, e in zip(evaluator.control_names, np.abs(pred - truth).mean(0))}
    if evaluator.landmarks is not None and test.landmarks is not None:
        pred = evaluator.landmarks.predict(test.faces)  # corpus px
        owners = [test.clip_index == i for i in range(len(clips))]
        per_clip = [(f_lmd(pred[o], test.landmarks[o]), m_lmd(pred[o], test.landmarks[o])) for o in owners]
        out.update({"landmark_error_px": round(point_error(pred, test.landmarks), 4),
                    "mouth_error_px": round(point_error(pred[:, MOUTH], test.landmarks[:, MOUTH]), 4),
                    "f_lmd_floor": round(float(np.mean([f for f, _ in per_clip])), 4),
                    "m_lmd_floor": round(float(np.mean([m for _, m in per_clip])), 4)})
    return out

