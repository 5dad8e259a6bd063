"""Paper Table 2 analogue, rendered: each Motion Reconstruction ablation's keypoints through the renderer.

The paper's caption: "We decouple features and reconstruct themselves, and then adopt Rendering module
to synthesize images for metrics evaluation." Here, for every row (pipeline/motion/ablation.py) and
every `frame_stride`-th frame x[t] of `clips` held-out clips (held-out actors, spread over actors and
emotions, pipeline.render.generate_set.heldout_clips):
  (p^, j^) = D_em(E_e(x[t]), E_m(x[t]), p_neu, j_neu)           self-reconstruction, the actor's neutral keypoints
  y^[t]    = renderer(reference frame; source (p_neu, j_neu), driving (p^, j^))   pipeline.render.frames.render_frames
scored against the real frame x[t] by pipeline.evaluation.metrics.clip_metrics: PSNR, SSIM, and M-LMD / F-LMD with
the evaluator's landmarks of the rendered frames against the corpus's exact landmarks (as the evaluate
stage scores Table 1), plus the keypoint error of (p^, j^) against E_k(x[t]). The row `fomm_keypoints`
drives the renderer with E_k(x[t]) itself: what the renderer makes of perfect keypoints, the ceiling
every Motion Reconstruction row is measured against.

Why self- and not cross-reconstruction: the built-in corpus renders exact counterfactuals (another
sentence's mouth under the same expression track) for training actors only; a held-out clip's
same-sentence clip in another emotion is a different take (another speech rate), so it is no exact
target. Self-reconstruction on held-out actors is what the paper's caption describes, and its target is exact.

Rows are Dask tasks (train, measure in keypoint space, render, score), one torch thread each, so the
numbers do not depend on how many run at once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from pipeline.core.config import BaseParams, MotionReportParams, Table2Params
from pipeline.core.errors import InputError
from pipeline.core.precision import pick_device
from pipeline.core.store import open_store
from pipeline.evaluation.evaluate import cached_detector, cached_evaluator
from pipeline.evaluation.metrics import clip_metrics
from pipeline.fomm.io import FommModel, detect_keypoints, frames_to_tensor, load_fomm
from pipeline.judges.scores import clip_emotion
from pipeline.models.motion import decode_frames, encode_frames
from pipeline.motion.ablation import FOMM_ROW, RowPlan, train_row
from pipeline.motion.data import KeypointBank, read_pairs
from pipeline.motion.report import evaluation_quadruples, motion_errors, value_errors_px
from pipeline.render.frames import render_frames
from pipeline.render.generate_set import heldout_clips
from pipeline.training.loop import torch_threads

# keypoints of the same reference frame from keypoints.zarr and from the renderer's E_k: one FOMM if this close
REFERENCE_KEYPOINT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class HeldoutClip:
    """A held-out clip to reconstruct: where its keypoints and frames are, and its labels."""

    clip_id: str
    actor: str
    emotion: str
    level: int
    kp_start: int  # first row in keypoints.zarr
    frame_start: int  # first frame in the corpus frames.zarr
    frames: int

    def frame_indices(self, stride: int) -> np.ndarray:
        return np.arange(0, self.frames, max(int(stride), 1), dtype=np.int64)


def select_clips(manifest: pd.DataFrame, bank: KeypointBank, clips: int) -> list[HeldoutClip]:
    """`clips` held-out real clips (0 = all), spread evenly over the clip ids (every actor and emotion)."""
    chosen = []
    for clip in heldout_clips(manifest, clips).itertuples():
        start, stop = bank.span(clip.clip_id)
        if stop - start != int(clip.frames):
            raise InputError(bank.path, f"clip '{clip.clip_id}' has {stop - start} keypoint frames, the corpus "
                                        f"{clip.frames} (re-run keypoints)")
        chosen.append(HeldoutClip(str(clip.clip_id), str(clip.actor), str(clip.emotion), int(clip.level), start,
                                  int(clip.start), int(clip.frames)))
    return chosen


def sheet_indices(clips: int, shown: int) -> list[int]:
    """Which of the selected clips the sheet shows: `shown` of them, spread evenly (other actors, emotions)."""
    if clips <= 0 or shown <= 0:
        return []
    return sorted({int(i) for i in np.linspace(0, clips - 1, min(shown, clips)).round()})


def reference_frames(corpus_dir: Path) -> dict[str, np.ndarray]:
    """Each actor's neutral reference frame (uint8 H,W,3) from the corpus."""
    root = open_store(Path(corpus_dir) / "frames.zarr")
    if "reference_frames" not in root or "reference_actor" not in root:
        raise InputError(Path(corpus_dir) / "frames.zarr", "no reference_frames / reference_actor (re-run corpus)")
    frames = np.asarray(root["reference_frames"][:])
    return {str(a): frames[i] for i, a in enumerate(root["reference_actor"][:])}


def check_same_keypoint_detector(renderer: FommModel, renderer_path: Path, bank: KeypointBank,
                                 references: dict[str, np.ndarray]) -> float:
    """The renderer's E_k must be the one keypoints.zarr was made with (the decoders were trained on those
    keypoints and the renderer animates them): compare both on the actors' reference frames. Returns the
    largest difference."""
    actors = [a for a in bank.actors if a in references]
    if not actors:
        raise InputError(bank.path, "no actor has both reference keypoints and a corpus reference frame")
    value, _ = detect_keypoints(renderer.kp_detector, np.stack([references[a] for a in actors]),
                                renderer.config.image_size)
    stored = bank.reference_value[[bank.actor(a) for a in actors]]
    gap = float(np.abs(value - stored).max())
    if gap > REFERENCE_KEYPOINT_TOLERANCE:
        raise InputError(renderer_path, f"its keypoint detector is not the one of {bank.path} (reference keypoints "
                                        f"differ by up to {gap:.3g}; re-run keypoints or pass the matching renderer)")
    return gap


@dataclass
class RowTask:
    """One row for a worker: train it (unless it is the FOMM row), render and score the held-out clips."""

    plan: RowPlan
    clips: list[HeldoutClip]
    kp_store: str
    pseudo_dir: str
    corpus_dir: str
    out_dir: str  # this row's folder (motion.pt, losses, motion.json)
    renderer: str
    evaluator: str
    base: BaseParams
    report_params: MotionReportParams
    table: Table2Params
    labels: str  # train_motion.labels: which quadruples the rows never trained on (keypoint-space cross set)
    no_filter_trains: bool  # the "w/o filter" row trains on every quadruple (named in the cross set's description)


def keypoint_evaluation_set(pseudo_dir: Path, labels: str, no_filter_trains: bool) -> tuple[pd.DataFrame, str]:
    """One keypoint-space cross-reconstruction set for every row (motion.json's recon.cross*): with pseudo
    labels the quadruples the filtered rows never saw, else all of them (motion_report.evaluation_quadruples)."""
    sync_path = pseudo_dir / "sync.parquet"
    sync = pd.read_parquet(sync_path) if sync_path.is_file() else None
    pairs, description = evaluation_quadruples(read_pairs(pseudo_dir), sync, trained_with_filter=labels == "pseudo")
    if "not trained on" in description and no_filter_trains:
        description += " by the filtered rows; w/o filter trained on them"
    return pairs, description


@functools.lru_cache(maxsize=2)
def cached_renderer(path: str, mtime: float) -> FommModel:
    """One load per worker process (keyed by mtime so a rewritten file is re-read)."""
    return load_fomm(path)


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rendered frames to the corpus frame size when the renderer works at another one."""
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA if f.shape[0] > height
                                else cv2.INTER_CUBIC) for f in frames])


def run_row(task: RowTask, log=print) -> dict[str, Any]:
    """Train (motion rows), then render and score every selected frame. Returns {row, per_clip: [..],
    sheet: [middle rendered frame of each sheet clip (sheet_indices)], train: {..}, report: motion.json}."""
    plan, t = task.plan, task.table
    with torch_threads(1):
        bank = KeypointBank(task.kp_store)
        train, report = {}, None
        if plan.name == FOMM_ROW:
            def predict(rows: np.ndarray, actor: int) -> tuple[np.ndarray, np.ndarray]:
                return bank.value[rows], bank.jacobian[rows]
        else:
            cross_set = keypoint_evaluation_set(Path(task.pseudo_dir), task.labels, task.no_filter_trains)
            net, report = train_row(plan, Path(task.kp_store), bank, Path(task.pseudo_dir), Path(task.corpus_dir),
                                    Path(task.out_dir), task.base, task.report_params, cross_set, log=log)
            train = {"steps": int(net.step), "quadruples": int(net.metrics.get("quadruples", 0))}

            def predict(rows: np.ndarray, actor: int) -> tuple[np.ndarray, np.ndarray]:
                neutral = bank.reference_value[actor], bank.reference_jacobian[actor]
                f_e, f_m = encode_frames(net, bank.value[rows], bank.jacobian[rows], *neutral)
                return decode_frames(net, f_e, f_m, *neutral)

        renderer = cached_renderer(task.renderer, Path(task.renderer).stat().st_mtime)
        generator = renderer.generator.to(pick_device(task.base.device))
        evaluator_mtime = Path(task.evaluator).stat().st_mtime
        evaluator = cached_evaluator(task.evaluator, evaluator_mtime)
        detector = cached_detector(task.evaluator, evaluator_mtime, t.dlib_predictor)
        corpus = open_store(Path(task.corpus_dir) / "frames.zarr")
        references = reference_frames(Path(task.corpus_dir))
        size = renderer.config.image_size
        per_clip, sheet = [], []
        shown = sheet_indices(len(task.clips), t.sheet_clips)
        for i, clip in enumerate(task.clips):
            idx = clip.frame_indices(t.frame_stride)
            rows = clip.kp_start + idx
            a = bank.actor(clip.actor)
            value, jacobian = predict(rows, a)
            kp_neu = {"value": bank.reference_value[a:a + 1], "jacobian": bank.reference_jacobian[a:a + 1]}
            rendered = render_frames(generator, frames_to_tensor(references[clip.actor][None], size), kp_neu, value,
                                     jacobian, t.batch_size)
            truth = np.asarray(corpus["frames"][clip.frame_start:clip.frame_start + clip.frames])[idx]
            rendered = resize_frames(rendered, *truth.shape[1:3])
            exact = (np.asarray(corpus["landmarks"][clip.frame_start:clip.frame_start + clip.frames])[idx]
                     if "landmarks" in corpus else None)
            use_exact = detector == evaluator.face_landmarks and exact is not None and np.isfinite(exact).all()
            scores = clip_metrics(rendered, truth, emotion=clip.emotion, emotion_logits=evaluator.emotion_logits,
                                  emotions=evaluator.emotions, landmarks=detector,
                                  truth_landmarks=exact if use_exact else None)
            # The judge on the real frames: how far any rendering of these clips could get.
            real_emotion = clip_emotion(evaluator.emotion_logits(truth), evaluator.emotions)
            kp_target = bank.value[rows], bank.jacobian[rows]
            per_clip.append({
                "row": plan.name, "clip_id": clip.clip_id, "actor": clip.actor, "emotion": clip.emotion,
                "level": clip.level, "frames": scores["frames"], "psnr": scores["psnr"], "ssim": scores["ssim"],
                "m_lmd": scores["m_lmd"], "f_lmd": scores["f_lmd"], "emotion_correct": scores["emotion_correct"],
                "emotion_correct_real": real_emotion == clip.emotion,
                "kp_error": float(motion_errors(value, jacobian, *kp_target).mean()),
                "kp_error_px": float(value_errors_px(value, kp_target[0], size).mean()),
            })
            if i in shown:
                sheet.append(rendered[len(rendered) // 2])
        log(f"table2: {plan.label}: {len(per_clip)} held-out clips rendered and scored")
    return {"row": plan.name, "per_clip": per_clip, "sheet": sheet, "train": train, "report": report}


__all__ = ["HeldoutClip", "RowTask", "check_same_keypoint_detector", "reference_frames", "run_row", "select_clips",
           "sheet_indices"]
