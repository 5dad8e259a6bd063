"""How much of an emotion a renderer that animates the neutral photo can show at best.

For every held-out clip of the corpus, the evaluator's emotion judge (clip = argmax of mean logits, as Table 1)
reads four versions of its frames:
* `real`: the frames themselves (the judge's own ceiling);
* `reference`: the actor's neutral reference frame copied (chance for an unmoving face);
* `landmark_warp`: the reference warped piecewise-affinely onto the frame's TRUE 68 landmarks: perfect
  geometry, no new appearance (teeth, wrinkles, eye whites). No warping renderer does better than this.
  Only where the corpus knows them (the built-in one; a MEAD corpus has none: the row is left out and named);
* `fomm_keypoints`: the reference driven by the detector's keypoints (E_k) of the frame, through FOMM;
* `emmn`, with an `EmmnRow`: the reference driven by the keypoints EmmnNet predicts from the clip's audio
  (unfiltered), through a renderer (fomm.pt or emmn_render.pt): what the product shows, on all held-out clips.
`run_emotion_ceiling` (the emotion_ceiling stage's work) writes the report and the contact sheet.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from pipeline.core.config import EmotionCeilingParams
from pipeline.core.errors import InputError
from pipeline.core.parallel import progress_bar
from pipeline.core.store import open_store, write_json, write_png
from pipeline.fomm.io import (
    detect_keypoints,
    frames_to_tensor,
    keypoints_dict,
    load_fomm,
    reconstruct,
)
from pipeline.judges.evaluator import load_evaluator
from pipeline.judges.scores import clip_emotion
from pipeline.render.frames import to_uint8_frames
from pipeline.render.generate_set import sheet_clips
from pipeline.training.loop import torch_threads


def border_points(size: int) -> np.ndarray:
    """Corners and edge midpoints of a size x size frame: they stay put and close the triangulation."""
    last, mid = size - 1, (size - 1) / 2
    return np.array([[0, 0], [mid, 0], [last, 0], [last, mid], [last, last], [mid, last], [0, last], [0, mid]],
                    np.float32)


def delaunay_triangles(points: np.ndarray, size: int) -> list[tuple[int, int, int]]:
    """Delaunay triangles of `points` (N,2) inside a size x size frame, as index triples into `points`."""
    subdiv = cv2.Subdiv2D((-1, -1, size + 2, size + 2))
    for x, y in points:
        subdiv.insert((float(x), float(y)))
    triangles = []
    for corners in subdiv.getTriangleList().reshape(-1, 3, 2):
        index = tuple(int(np.argmin(((points - corner) ** 2).sum(1))) for corner in corners)
        if len(set(index)) == 3:
            triangles.append(index)
    return triangles


def piecewise_affine_warp(image: np.ndarray, source_points: np.ndarray, target_points: np.ndarray,
                          triangles: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """The image (H,W,C) whose points sit at `source_points` (N,2, pixels) redrawn with them at `target_points`:
    each triangle filled through the affine map between its two positions (bilinear, edges reflected)."""
    height, width = image.shape[:2]
    out = np.zeros_like(image)
    for triangle in triangles:
        source = np.ascontiguousarray(source_points[list(triangle)], np.float32)
        target = np.ascontiguousarray(target_points[list(triangle)], np.float32)
        x, y, w, h = cv2.boundingRect(target)
        if w <= 0 or h <= 0:
            continue
        offset = np.float32([x, y])
        patch = cv2.warpAffine(image, cv2.getAffineTransform(source, target - offset), (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT)
        mask = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(mask, np.int32(np.round(target - offset)), 1)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        inside = mask[y0 - y:y1 - y, x0 - x:x1 - x].astype(bool)
        out[y0:y1, x0:x1][inside] = patch[y0 - y:y1 - y, x0 - x:x1 - x][inside]
    return out


def landmark_warps(reference: np.ndarray, reference_landmarks: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The reference frame warped onto each frame's landmarks (T,68,2) -> (T,H,W,3); triangles fixed by the
    reference's landmarks plus the frame border."""
    size = reference.shape[0]
    border = border_points(size)
    source = np.concatenate([reference_landmarks, border])
    triangles = delaunay_triangles(source, size)
    return np.stack([piecewise_affine_warp(reference, source, np.concatenate([points, border]), triangles)
                     for points in landmarks])


class EmmnRow:
    """Held-out clips rendered as the product does: EmmnNet's keypoints from each clip's audio drive the actor's
    neutral reference through `renderer` (a fomm.pt-layout file); `read_temperature` overrides Eq. 10's inference
    tau stored in emmn.pt."""

    def __init__(self, emmn_path: Path, renderer_path: Path, corpus_dir: Path, audio_store: Path,
                 prosody_store: Path, read_temperature: float | None = None):
        import dataclasses

        from pipeline.models.emmn import load_emmn
        from pipeline.render.finetune import actor_references
        from pipeline.render.generate import check_keypoint_count

        self.renderer = load_fomm(renderer_path)
        self.emmn = load_emmn(emmn_path)
        if read_temperature is not None:
            self.emmn.config = dataclasses.replace(self.emmn.config, read_temperature=read_temperature)
        check_keypoint_count(self.emmn, emmn_path, self.renderer.config.num_kp, renderer_path)
        self.refs = actor_references(Path(corpus_dir), self.renderer.kp_detector, self.renderer.config.image_size)
        self.audio_store, self.prosody_store = Path(audio_store), Path(prosody_store)

    def __call__(self, clip, stride: int, frame_size: int) -> np.ndarray:
        from pipeline.render.finetune import predict_clips

        predicted = predict_clips(self.emmn, pd.DataFrame([clip._asdict()]), self.audio_store, self.refs,
                                  self.prosody_store)
        kp = keypoints_dict(predicted.value[0][::stride], predicted.jacobian[0][::stride])
        actor = str(clip.actor)
        kp_source = {k: torch.from_numpy(v) for k, v in self.refs.keypoints[actor].items()}
        images = to_uint8_frames(reconstruct(self.renderer.generator, self.refs.images[actor], kp_source, kp))
        return to_frame_size(images, frame_size, frame_size)


def emotion_ceilings(corpus_dir: Path, evaluator, fomm_path: Path | None = None, stride: int = 3,
                     sheet_actor: str | None = None, sheet_sentence: int | None = None,
                     progress: Callable[[int, int], None] | None = None,
                     emmn_row: EmmnRow | None = None) -> tuple[dict, np.ndarray | None]:
    """Judge accuracy of real / reference / landmark_warp / fomm_keypoints [/ emmn] over all held-out real clips,
    every `stride`-th frame, overall and per emotion; and a sheet (one row per emotion of `sheet_actor`,
    `sheet_sentence`, strongest level: real | landmark warp | FOMM | [EMMN |] reference, the middle frame). The
    sheet's actor and sentence default to the first held-out actor and its first sentence."""
    manifest_path = Path(corpus_dir) / "manifest.parquet"
    if not manifest_path.is_file():
        raise InputError(manifest_path, "corpus manifest not found (run the corpus stage first)")
    manifest = pd.read_parquet(manifest_path)
    clips = manifest[(manifest.split == "test") & (manifest.kind == "real")]
    if clips.empty:
        raise InputError(manifest_path, "no held-out real clips")
    sheet = sheet_clips(clips, sheet_actor, sheet_sentence, section="emotion_ceiling")
    sheet_ids = set(sheet.clip_id)
    root = open_store(Path(corpus_dir) / "frames.zarr")
    actors = [str(a) for a in root["reference_actor"][:]]
    model = load_fomm(fomm_path) if fomm_path is not None else None
    warp = "reference_landmarks" in root  # the built-in corpus's exact landmarks; MEAD has none
    hits: dict[str, list[bool]] = defaultdict(list)  # per version, in the order the loop makes them
    rows: dict[str, np.ndarray] = {}
    emotions, frames_seen = [], 0
    for done, clip in enumerate(clips.itertuples()):
        actor = actors.index(str(clip.actor))
        reference = root["reference_frames"][actor]
        frames = root["frames"][clip.start:clip.stop][::stride]
        versions = {"real": frames, "reference": np.repeat(reference[None], len(frames), 0)}
        if warp:
            versions["landmark_warp"] = landmark_warps(reference, root["reference_landmarks"][actor],
                                                       root["landmarks"][clip.start:clip.stop][::stride])
        if model is not None:
            versions["fomm_keypoints"] = fomm_renders(model, reference, frames)
        if emmn_row is not None:
            versions["emmn"] = emmn_row(clip, stride, frames.shape[1])
        for name, images in versions.items():
            hits[name].append(clip_emotion(evaluator.emotion_logits(images), evaluator.emotions) == clip.emotion)
        emotions.append(str(clip.emotion))
        frames_seen += len(frames)
        if clip.clip_id in sheet_ids:
            middle = len(frames) // 2
            shown = [k for k in ("real", "landmark_warp", "fomm_keypoints", "emmn", "reference") if k in versions]
            rows[clip.emotion] = np.concatenate([versions[k][middle] for k in shown], 1)
        if progress is not None:
            progress(done + 1, len(clips))
    report = {name: round(float(np.mean(v)), 4) for name, v in hits.items()}
    report.update(clips=len(clips), frames=frames_seen, stride=stride, chance=round(1 / len(evaluator.emotions), 4))
    report["per_emotion"] = per_emotion_accuracy(hits, emotions)
    report["sheet"] = {"actor": str(sheet.actor.iloc[0]), "sentence_id": int(sheet.sentence_id.iloc[0])}
    if not warp:
        report["rows_left_out"] = {"landmark_warp": "the corpus has no reference_landmarks (MEAD)"}
    order = [e for e in evaluator.emotions if e in rows]
    picture = np.concatenate([rows[e] for e in order], 0) if order else None
    return report, picture


def per_emotion_accuracy(hits: dict[str, list[bool]], emotions: Sequence[str]) -> dict[str, dict[str, float]]:
    """{row: {emotion: share of that emotion's clips the judge named right}}; `emotions[i]` is clip i's."""
    labels = np.asarray(emotions)
    return {row: {e: round(float(np.mean(np.asarray(v)[labels == e])), 4) for e in sorted(set(emotions))}
            for row, v in hits.items()}


def fomm_renders(model, reference: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """The reference driven by each frame's own keypoints (absolute E_k) -> uint8 frames at the frames' size."""
    size = model.config.image_size
    value, jacobian = detect_keypoints(model.kp_detector, np.concatenate([reference[None], frames]), size)
    kp = keypoints_dict(value, jacobian)
    prediction = reconstruct(model.generator, frames_to_tensor(reference[None], size),
                             {k: t[:1] for k, t in kp.items()}, {k: t[1:] for k, t in kp.items()})
    return to_frame_size(to_uint8_frames(prediction), *frames.shape[1:3])


def to_frame_size(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Renders (T,h,w,3) at the renderer's size -> (T,height,width,3) (bilinear), untouched when they match."""
    if images.shape[1:3] == (height, width):
        return images
    return np.stack([cv2.resize(im, (width, height), interpolation=cv2.INTER_LINEAR) for im in images])


def run_emotion_ceiling(corpus_dir: Path, audio_store: Path, prosody_store: Path, evaluator: Path, fomm: Path,
                        emmn: Path, renderer: Path, report: Path, sheet: Path, p: EmotionCeilingParams) -> dict:
    """Judge every version of the held-out clips; write the report and the sheet; return the report."""
    with torch_threads(p.threads):
        judge = load_evaluator(evaluator)
        emmn_row = EmmnRow(emmn, renderer, corpus_dir, audio_store, prosody_store, p.read_temperature)
        with progress_bar() as bar:
            task = bar.add_task("emotion_ceiling", total=None)
            metrics, picture = emotion_ceilings(
                corpus_dir, judge, fomm, p.stride, p.sheet_actor, p.sheet_sentence, emmn_row=emmn_row,
                progress=lambda done, total: bar.update(task, completed=done, total=total))
    metrics.update(fomm=str(fomm), emmn_checkpoint=str(emmn), renderer=str(renderer),
                   read_temperature=emmn_row.emmn.config.read_temperature)
    if picture is not None:
        write_png(sheet, picture)
    write_json(report, metrics)
    return metrics
