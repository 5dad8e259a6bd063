"""data/reports/fomm.json: how well the FOMM motion model reconstructs and what its keypoints carry.

* heldout: on test-split (held-out actor) real clips, source = first frame, driving = each later
  frame (the driving frame's own keypoints, as FOMM's reconstruction benchmark): PSNR, SSIM and
  mouth-region L1 (box around GT landmarks 48-67 of the driving frame) of the reconstruction, each next
  to simply copying the source frame.
* probe: ridge probes fitted on training actors and scored (R^2) on held-out actors, from keypoints
  (values + Jacobians, read from keypoints.zarr) to the corpus's mouth-opening control and to the 68
  GT landmarks; the same probes on an UNTRAINED detector (same seed = the training run's start).
  Features are centred per actor (relative motion, as the pipeline uses keypoints); the uncentred
  probes are reported too (`*_uncentred`): across faces they mostly measure identity, not motion.
Plus a side-by-side video (source | driving | reconstruction, keypoints drawn) of one held-out clip and
a PNG strip of it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pipeline.core.config import BaseParams, KeypointsParams
from pipeline.core.errors import InputError
from pipeline.core.image_quality import psnr
from pipeline.core.media import write_mp4
from pipeline.core.probes import centre_per_group, grouped_probe_r2
from pipeline.core.store import (
    open_store,
    read_index,
    report_values,
    write_json,
    write_png,
)
from pipeline.corpus.manifest import select_evenly
from pipeline.fomm.io import (
    FommModel,
    detect_keypoints,
    frames_to_tensor,
    keypoints_dict,
    reconstruct,
)
from pipeline.fomm.train import init_fomm

MOUTH = slice(48, 68)  # dlib 68-point layout: outer + inner lips

# ------------------------------------------------------------------------------------- image metrics


def ssim(prediction: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: Gaussian 11x11 window, sigma 1.5, K1 0.01, K2 0.03), channels averaged."""
    x, y = prediction.float(), target.float()
    channels = x.shape[1]
    window = min(window, x.shape[2], x.shape[3])
    coords = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(channels, 1, window, window).to(x.device)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=channels)

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1)


def mouth_boxes(landmarks: np.ndarray, size: int, margin: float = 0.15) -> np.ndarray:
    """(B,68,2) pixel landmarks -> (B,4) int boxes x0,y0,x1,y1 (exclusive) around points 48-67, widened by
    `margin` of the box's larger side (at least 1 px) on every side, clipped to the image."""
    lips = np.asarray(landmarks, np.float64)[:, MOUTH]
    lo, hi = lips.min(axis=1), lips.max(axis=1)
    pad = np.maximum(margin * (hi - lo).max(axis=1, keepdims=True), 1.0)
    lo = np.clip(np.floor(lo - pad), 0, size - 1)
    hi = np.clip(np.ceil(hi + pad) + 1, lo + 1, size)
    return np.concatenate([lo, hi], axis=1).astype(np.int64)


def mouth_l1(prediction: torch.Tensor, target: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
    """Mean |prediction - target| inside each image's box, [B]."""
    out = []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        out.append((prediction[i, :, y0:y1, x0:x1].float() - target[i, :, y0:y1, x0:x1].float()).abs().mean())
    return torch.stack(out)


# ------------------------------------------------------------------------------------------- held-out


def clip_keypoints(kp_root: Any, kp_index: pd.DataFrame, clip_id: str) -> tuple[np.ndarray, np.ndarray]:
    row = kp_index.loc[clip_id]
    start, stop = int(row.start), int(row.stop)
    return kp_root["value"][start:stop], kp_root["jacobian"][start:stop]


def heldout_reconstruction(model: FommModel, corpus_dir: Path, kp_store: Path, clips: pd.DataFrame,
                           batch_size: int = 16, from_reference: bool = False
                           ) -> tuple[dict[str, float], dict[str, np.ndarray] | None]:
    """Frame-weighted means over `clips` and the first clip's frames for the video. The source is each clip's
    first frame (driving = frames 1..T-1: FOMM's own test) or, `from_reference`, the actor's neutral reference
    frame (driving = every frame: what EMMN asks of the renderer, expression and mouth changes included)."""
    size = model.config.image_size
    frames_root = open_store(corpus_dir / "frames.zarr")
    corpus_size = frames_root["frames"].shape[2]
    kp_root, kp_index = open_store(kp_store), read_index(kp_store).set_index("clip_id")
    if from_reference:
        reference_actors = [str(a) for a in kp_root["reference_actor"][:]]
    sums: dict[str, float] = {}
    count = 0
    first = None
    for clip in clips.itertuples():
        frames = frames_root["frames"][clip.start:clip.stop]
        landmarks = frames_root["landmarks"][clip.start:clip.stop] * (size / corpus_size)
        value, jacobian = clip_keypoints(kp_root, kp_index, clip.clip_id)
        images = frames_to_tensor(frames, size)
        kp_all = keypoints_dict(value, jacobian)
        if from_reference:
            a = reference_actors.index(str(clip.actor))
            source_image = frames_to_tensor(frames_root["reference_frames"][a][None], size)
            kp_source = keypoints_dict(kp_root["reference_value"][a][None], kp_root["reference_jacobian"][a][None])
            skip = 0
        else:
            source_image, kp_source, skip = images[:1], {k: v[:1] for k, v in kp_all.items()}, 1
        prediction = reconstruct(model.generator, source_image, kp_source, kp_all, batch_size)
        driving, pred = images[skip:], prediction[skip:]
        source = source_image.expand_as(driving)
        if len(driving):
            boxes = mouth_boxes(landmarks[skip:], size) if np.isfinite(landmarks).all() else None
            values = {"psnr": psnr(pred, driving, data_range=1.0, mse_floor=1e-10),
                      "psnr_copy_source": psnr(source, driving, data_range=1.0, mse_floor=1e-10),
                      "ssim": ssim(pred, driving), "ssim_copy_source": ssim(source, driving)}
            if boxes is not None:
                values["mouth_l1"] = mouth_l1(pred, driving, boxes)
                values["mouth_l1_copy_source"] = mouth_l1(source, driving, boxes)
            for key, v in values.items():
                sums[key] = sums.get(key, 0.0) + float(v.sum())
            count += len(driving)
        if first is None:
            first = {"clip_id": clip.clip_id, "images": images, "prediction": prediction, "value": value,
                     "wav_path": getattr(clip, "wav_path", None)}
    keys = ("psnr", "psnr_copy_source", "mouth_l1", "mouth_l1_copy_source", "ssim", "ssim_copy_source")
    metrics = {key: (sums[key] / count if count and key in sums else math.nan) for key in keys}
    metrics["psnr_gain_db"] = metrics["psnr"] - metrics["psnr_copy_source"]
    metrics["mouth_l1_reduction"] = 1.0 - metrics["mouth_l1"] / metrics["mouth_l1_copy_source"]
    metrics["clips"] = int(len(clips))
    metrics["frames"] = int(count)
    return metrics, first


# --------------------------------------------------------------------------------------------- probes


def probe_rows(clips: pd.DataFrame, stride: int) -> list[tuple[str, int, int, np.ndarray]]:
    """(clip_id, start, stop, offsets) with every `stride`-th frame of each clip."""
    return [(c.clip_id, int(c.start), int(c.stop), np.arange(0, int(c.stop - c.start), max(stride, 1)))
            for c in clips.itertuples()]


def keypoint_features(value: np.ndarray, jacobian: np.ndarray) -> np.ndarray:
    """(T,N,2) + (T,N,2,2) -> (T, 6N): values then Jacobians, flattened."""
    return np.concatenate([value.reshape(len(value), -1), jacobian.reshape(len(jacobian), -1)], axis=1)


def gather_probe_data(corpus_dir: Path, kp_store: Path, clips: pd.DataFrame, stride: int, untrained: Any,
                      image_size: int, mouth_column: int | None) -> dict[str, np.ndarray]:
    """Per probe row: trained features (from the store), untrained features (recomputed), mouth-opening
    target, flattened landmark targets, actor (the cross-validation group)."""
    frames_root = open_store(corpus_dir / "frames.zarr")
    kp_root, kp_index = open_store(kp_store), read_index(kp_store).set_index("clip_id")
    actors = dict(zip(clips.clip_id, clips.actor))
    parts: dict[str, list[np.ndarray]] = {"trained": [], "untrained": [], "mouth": [], "landmarks": [], "actor": []}
    for clip_id, start, stop, offsets in probe_rows(clips, stride):
        value, jacobian = clip_keypoints(kp_root, kp_index, clip_id)
        parts["trained"].append(keypoint_features(value[offsets], jacobian[offsets]))
        frames = frames_root["frames"][start:stop][offsets]
        parts["untrained"].append(keypoint_features(*detect_keypoints(untrained, frames, image_size)))
        parts["landmarks"].append(frames_root["landmarks"][start:stop][offsets].reshape(len(offsets), -1))
        parts["actor"].append(np.full(len(offsets), actors[clip_id], dtype=object))
        if mouth_column is not None:
            parts["mouth"].append(frames_root["render_params"][start:stop][offsets][:, mouth_column])
    return {k: (np.concatenate(v) if v else np.zeros((0,))) for k, v in parts.items()}


def keypoint_probes(model: FommModel, seed: int, corpus_dir: Path, kp_store: Path, manifest: pd.DataFrame,
                    p: KeypointsParams) -> dict[str, float]:
    """R^2 on held-out actors of ridge probes from keypoints to mouth opening and to the GT landmarks,
    for the trained detector and the untrained one (same seed); the chosen ridge penalties beside them."""
    real = manifest[manifest.kind == "real"]
    names = list(open_store(corpus_dir / "frames.zarr").attrs.get("render_params", []))
    mouth_column = names.index(p.mouth_open_param) if p.mouth_open_param in names else None
    untrained = init_fomm(model.config, seed)[0].eval()
    data = {split: gather_probe_data(corpus_dir, kp_store, real[real.split == split], p.probe_stride, untrained,
                                     model.config.image_size, mouth_column)
            for split in ("train", "test")}
    train, test = data["train"], data["test"]
    out: dict[str, float] = {}
    targets = {"mouth_open": "mouth", "landmarks": "landmarks"}
    for detector in ("trained", "untrained"):
        suffix = "" if detector == "trained" else "_untrained"
        for centred in (True, False):
            tag = "" if centred else "_uncentred"
            train_x, test_x = train[detector], test[detector]
            if centred:  # the features as the pipeline uses them: relative to the same face
                train_x, test_x = centre_per_group(train_x, train["actor"]), centre_per_group(test_x, test["actor"])
            for name, key in targets.items():
                if key == "mouth" and mouth_column is None:
                    r2, alpha = math.nan, math.nan
                else:
                    r2, alpha = grouped_probe_r2(train_x, train[key], train["actor"], test_x, test[key],
                                                 tuple(p.probe_alphas))
                out[f"r2_{name}{suffix}{tag}"] = r2
                out[f"alpha_{name}{suffix}{tag}"] = alpha
    out["r2_mouth_open_gain"] = out["r2_mouth_open"] - out["r2_mouth_open_untrained"]
    out["train_frames"] = int(len(train["trained"]))
    out["test_frames"] = int(len(test["trained"]))
    out["train_actors"] = int(len(set(train["actor"])))
    out["test_actors"] = int(len(set(test["actor"])))
    return out


# ---------------------------------------------------------------------------------------------- video


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def draw_keypoints(image: np.ndarray, value: np.ndarray, model_size: int) -> np.ndarray:
    """Keypoints ([-1,1], ends-included grid) as coloured dots on an RGB uint8 image of any size."""
    out = np.ascontiguousarray(image).copy()
    scale = out.shape[0] / model_size
    radius = max(2, out.shape[0] // 80)
    for k, (x, y) in enumerate(value):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        px = (x + 1) / 2 * (model_size - 1) * scale
        py = (y + 1) / 2 * (model_size - 1) * scale
        hue = int(180 * k / max(len(value), 1))
        colour = cv2.cvtColor(np.uint8([[[hue, 255, 255]]]), cv2.COLOR_HSV2RGB)[0, 0].tolist()
        cv2.circle(out, (int(round(px)), int(round(py))), radius, colour, -1, cv2.LINE_AA)
    return out


def side_by_side(first: dict[str, Any], model_size: int, panel: int = 256) -> np.ndarray:
    """(T, panel, 3*panel, 3): source | driving | reconstruction; keypoints on driving and reconstruction."""
    images, prediction, value = _to_uint8(first["images"]), _to_uint8(first["prediction"]), first["value"]

    def up(img: np.ndarray) -> np.ndarray:
        return cv2.resize(img, (panel, panel), interpolation=cv2.INTER_LINEAR) if img.shape[0] != panel else img

    source = draw_keypoints(up(images[0]), value[0], model_size)
    rows = [np.concatenate([source, draw_keypoints(up(images[t]), value[t], model_size),
                            draw_keypoints(up(prediction[t]), value[t], model_size)], axis=1)
            for t in range(len(images))]
    return np.stack(rows)


def write_pictures(first: dict[str, Any] | None, corpus_dir: Path, model_size: int, fps: float,
                   video_path: Path, strip_png: Path) -> None:
    """The held-out clip as an mp4 (with its audio when the wav exists) and a 4-row PNG strip."""
    if first is None:
        return
    frames = side_by_side(first, model_size)
    wav = corpus_dir / first["wav_path"] if first.get("wav_path") else None
    write_mp4(video_path, frames, fps, audio=wav if wav is not None and wav.is_file() else None)
    picks = np.unique(np.linspace(0, len(frames) - 1, 4).round().astype(int))
    strip = np.concatenate([frames[i] for i in picks], axis=0)
    write_png(strip_png, strip)


# --------------------------------------------------------------------------------------------- report


def build_fomm_report(model: FommModel, corpus_dir: str | Path, kp_store: str | Path, base: BaseParams,
                      p: KeypointsParams, *, video_path: Path, strip_png: Path) -> dict[str, Any]:
    """Every number of fomm.json (NaN where the corpus lacks the ground truth, e.g. MEAD has no controls)."""
    corpus_dir, kp_store = Path(corpus_dir), Path(kp_store)
    manifest_path = corpus_dir / "manifest.parquet"
    if not manifest_path.is_file():
        raise InputError(manifest_path, "corpus manifest not found")
    manifest = pd.read_parquet(manifest_path)
    test = manifest[(manifest.split == "test") & (manifest.kind == "real") & (manifest.frames >= 2)]
    chosen = test[test.clip_id.isin(select_evenly(list(test.clip_id), p.report_clips))]
    heldout, first = heldout_reconstruction(model, corpus_dir, kp_store, chosen)
    write_pictures(first, corpus_dir, model.config.image_size, base.fps, video_path, strip_png)
    from_reference, _ = heldout_reconstruction(model, corpus_dir, kp_store, chosen, from_reference=True)
    report = {
        "heldout": heldout,
        "heldout_from_reference": from_reference,
        "probe": keypoint_probes(model, base.seed, corpus_dir, kp_store, manifest, p),
        "model": {"step": model.step, "image_size": model.config.image_size, "num_kp": model.config.num_kp,
                  "precision": model.metrics.get("precision")},
        "info": {"reconstruction_loss": str(model.metrics.get("reconstruction_loss",
                                                              model.metrics.get("pretrained", "unknown"))),
                 "video_clip": first["clip_id"] if first else None},
    }
    return report_values(report)


def write_report(report: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    write_json(path, report)
