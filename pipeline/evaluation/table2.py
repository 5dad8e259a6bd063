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
numbers do not depend on how many run at once. `run_table2` (the table2 stage's work) maps them and writes
table2.json, table2.md (with `setup_notes`: how the numbers were made) and the work folder.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from pipeline.core.config import (
    BaseParams,
    MotionReportParams,
    Table2Params,
    TrainMotionParams,
)
from pipeline.core.errors import InputError
from pipeline.core.parallel import dask_client, ordered_map
from pipeline.core.precision import pick_device
from pipeline.core.store import atomic_output, open_store, write_json, write_text
from pipeline.core.timings import pop_timings, write_timings
from pipeline.corpus.manifest import read_manifest
from pipeline.evaluation.evaluate import cached_detector, cached_evaluator, expression_inputs
from pipeline.evaluation.landmark_detect import DlibLandmarks, landmark_detector
from pipeline.evaluation.metrics import clip_metrics
from pipeline.evaluation.table2_report import row_table, table_markdown, write_sheet
from pipeline.fomm.io import FommModel, detect_keypoints, frames_to_tensor, load_fomm
from pipeline.judges.evaluator import load_evaluator
from pipeline.judges.scores import clip_emotion
from pipeline.models.motion import decode_frames, encode_frames
from pipeline.motion.ablation import (
    FOMM_ROW,
    ROW_LABELS,
    RowPlan,
    check_rows,
    plan_rows,
    train_row,
)
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
            expression = expression_inputs(evaluator, corpus, slice(clip.frame_start, clip.frame_start + clip.frames))
            if expression:
                expression["truth_controls"] = expression["truth_controls"][idx]
            scores = clip_metrics(rendered, truth, emotion=clip.emotion, emotion_logits=evaluator.emotion_logits,
                                  emotions=evaluator.emotions, landmarks=detector,
                                  truth_landmarks=exact if use_exact else None, **expression)
            # The judge on the real frames: how far any rendering of these clips could get.
            real_emotion = clip_emotion(evaluator.emotion_logits(truth), evaluator.emotions)
            kp_target = bank.value[rows], bank.jacobian[rows]
            per_clip.append({
                "row": plan.name, "clip_id": clip.clip_id, "actor": clip.actor, "emotion": clip.emotion,
                "level": clip.level, "frames": scores["frames"], "psnr": scores["psnr"], "ssim": scores["ssim"],
                "m_lmd": scores["m_lmd"], "f_lmd": scores["f_lmd"], "emotion_correct": scores["emotion_correct"],
                "expr_err_mouth": scores["expr_err_mouth"], "expr_err_upper": scores["expr_err_upper"],
                "emotion_correct_real": real_emotion == clip.emotion,
                "kp_error": float(motion_errors(value, jacobian, *kp_target).mean()),
                "kp_error_px": float(value_errors_px(value, kp_target[0], size).mean()),
            })
            if i in shown:
                sheet.append(rendered[len(rendered) // 2])
        log(f"table2: {plan.label}: {len(per_clip)} held-out clips rendered and scored")
    return {"row": plan.name, "per_clip": per_clip, "sheet": sheet, "train": train, "report": report}


def pick_renderer(renderer: Path, fomm: Path) -> Path:
    """The fine-tuned renderer when finetune_render has written it, else the FOMM it started from."""
    if Path(renderer).is_file():
        return Path(renderer)
    if Path(fomm).is_file():
        return Path(fomm)
    raise InputError(renderer, f"no renderer: neither this nor {fomm} exists (run finetune_render or train_fomm)")


def run_table2(kp_store: Path, pseudo_dir: Path, corpus_dir: Path, renderer: Path, fomm: Path, evaluator: Path,
               work_dir: Path, report_json: Path, table_md: Path, base: BaseParams, p: TrainMotionParams,
               report_params: MotionReportParams, t: Table2Params, log=print) -> dict[str, Any]:
    """Train, render and score every row of `t.rows`; write the table, its JSON and work_dir. Returns table2.json."""
    check_rows(t)
    renderer = pick_renderer(renderer, fomm)
    judges = load_evaluator(evaluator)  # fail here, in one line, before any training
    by_dlib = isinstance(landmark_detector(judges, t.dlib_predictor, log), DlibLandmarks)
    bank = KeypointBank(kp_store)
    pairs = read_pairs(pseudo_dir)
    sync_path = Path(pseudo_dir) / "sync.parquet"
    sync = pd.read_parquet(sync_path) if sync_path.is_file() else None
    plans = plan_rows(bank, pairs, sync, sync_path, p, t)
    if not any(plan.trains or plan.name == FOMM_ROW for plan in plans):
        raise InputError("params.yaml", "table2: no row can be rendered: " + "; ".join(
            f"{plan.label}: {plan.skipped}" for plan in plans if plan.skipped))
    clips = select_clips(read_manifest(corpus_dir), bank, t.clips)
    references = reference_frames(corpus_dir)
    gap = check_same_keypoint_detector(cached_renderer(str(renderer), renderer.stat().st_mtime), renderer, bank,
                                       references)
    for plan in plans:
        state = (f"skipped: {plan.skipped}" if plan.skipped else f"= {plan.same_as} (identical training)"
                 if plan.same_as else "trained" if plan.params else "no training")
        log(f"table2: {plan.label}: {state}")
    with atomic_output(work_dir) as tmp:
        tasks = [RowTask(plan, clips, str(kp_store), str(pseudo_dir), str(corpus_dir), str(tmp / plan.name),
                         str(renderer), str(evaluator), base, report_params, t, p.labels,
                         any(plan.name == "no_filter" and plan.trains for plan in plans))
                 for plan in plans if plan.trains or plan.name == FOMM_ROW]
        with dask_client(base.workers, base.scheduler_address) as client:
            results = {r["row"]: r for r in ordered_map(run_row, tasks, client=client,
                                                        window=2 * max(base.workers, 1), description="table2: rows")}
        for plan in plans:  # a row trained like an earlier one shares its results
            if plan.same_as:
                results[plan.name] = {**results[plan.same_as], "row": plan.name,
                                      "per_clip": [{**c, "row": plan.name} for c in results[plan.same_as]["per_clip"]]}
        per_clip = pd.DataFrame([c for plan in plans if plan.name in results for c in results[plan.name]["per_clip"]])
        per_clip.to_csv(tmp / "clips.csv", index=False, float_format="%.6g")
        corpus_frames = open_store(Path(corpus_dir) / "frames.zarr")["frames"]
        shown = [clips[i] for i in sheet_indices(len(clips), t.sheet_clips)]
        truth = [np.asarray(corpus_frames[c.frame_start + int(c.frame_indices(t.frame_stride)[
            len(c.frame_indices(t.frame_stride)) // 2])]) for c in shown]
        write_sheet(tmp / "sheet.png", truth, {plan.name: results[plan.name]["sheet"] for plan in plans
                                               if plan.name in results}, [f"{c.emotion} l{c.level}" for c in shown])
        steps = {name: r["train"].get("steps") for name, r in results.items()}
        rows = row_table(per_clip, plans, steps)
        reports = {plan.name: results[plan.name]["report"] for plan in plans if plan.name in results}
        setup = setup_notes(plans, clips, per_clip, renderer, gap, judges.metrics, by_dlib, p, t, steps)
        (tmp / "summary.json").write_text(json.dumps({
            "renderer": str(renderer), "clips": [c.clip_id for c in clips], "frame_stride": t.frame_stride,
            "rows": {plan.name: {"label": plan.label, "same_as": plan.same_as, "skipped": plan.skipped,
                                 "quadruples": plan.quadruples, **results.get(plan.name, {}).get("train", {})}
                     for plan in plans}}, indent=2) + "\n")
        timings = pop_timings(tmp)  # inside work_dir (a DVC output) they would change its md5 on every run
    write_timings(work_dir, timings)
    table_md.parent.mkdir(parents=True, exist_ok=True)
    write_text(table_md, table_markdown(rows, plans, per_clip, reports, setup))
    write_json(report_json, rows)
    log(f"table2: {len(rows)} rows -> {table_md}, {report_json}")
    return rows


def _share(per_clip: pd.DataFrame) -> str:
    """The judge's accuracy on the real frames of the scored clips (the same for every row)."""
    real = per_clip.drop_duplicates("clip_id").emotion_correct_real.astype(float)
    return f"{real.mean():.3f} ({int(real.sum())} of {len(real)} clips)" if len(real) else "n/a"


def setup_notes(plans: list[RowPlan], clips: list, per_clip: pd.DataFrame, renderer: Path, gap: float,
                judges: dict, by_dlib: bool, p: TrainMotionParams, t: Table2Params, steps: dict) -> list[str]:
    """How the numbers were made, in the table's words."""
    actors = sorted({c.actor for c in clips})
    frames = per_clip.groupby("row").frames.sum()

    def px(key: str) -> str:
        value = judges.get(key)
        return "n/a" if value is None else f"{value:.2f}"

    # emmn_render.pt's step is finetune_render's (0: fomm.pt's renderer passed through)
    fine_tuned = renderer.name != "fomm.pt" and cached_renderer(str(renderer), renderer.stat().st_mtime).step > 0
    notes = [
        f"Measured on {len(clips)} held-out clips ({len(actors)} held-out actor{'s' * (len(actors) != 1)}: "
        f"{', '.join(actors)}; spread over "
        f"emotions and levels), every {t.frame_stride}th frame ({int(frames.max())} frames per row). "
        "Self-reconstruction, as the paper's caption says: f_e and f_m of the same frame, decoded with the actor's "
        "neutral keypoints (p_neu, j_neu) and rendered from the actor's neutral reference frame. The corpus has no "
        "exact cross-reconstruction target for held-out actors (its counterfactual renders exist for training "
        "actors only, and another emotion's take of the same sentence differs in timing), so none is scored here.",
        f"Renderer: {renderer}" + (" (finetune_render's generator, fine-tuned on EmmnNet-driven frames"
                                   if fine_tuned else " (train_fomm's, not fine-tuned") + "; the same for every row)"
        + f"; its E_k matches keypoints.zarr's (reference keypoints within {gap:.1e}).",
        "M-LMD / F-LMD: dlib's 68 points on rendered and real frames." if by_dlib else
        "M-LMD / F-LMD: the evaluator's landmark regressor on the rendered frames against the corpus's exact "
        f"landmarks; on real held-out frames it is itself off by M-LMD {px('m_lmd_floor')}, F-LMD {px('f_lmd_floor')} "
        "px, so LMD differences well below that are hard to read.",
        "Emotion acc: share of clips whose rendered frames the evaluator's emotion classifier (train_evaluator) "
        "puts in the clip's emotion (argmax of the mean logits, as Table 1); on the real frames of these clips it "
        f"scores {_share(per_clip)}, so the FOMM row's number is what the renderer keeps of the emotion.",
        "(p, j) error: mean over keypoints of sqrt(|dp|² + |dj|²) of the decoded keypoints against E_k of the "
        "frame (train_motion's distance); keypoint px: the position part in pixels of the renderer's input. Both "
        "are 0 for the FOMM row by construction.",
        f"Training: each row {t.steps} train_motion steps (batch {p.batch_size}, lr {p.lr}, labels {p.labels}, "
        f"lambda_e-con {p.lambda_e_con}, lambda_m-con {p.lambda_m_con}; every other hyperparameter from train_motion), "
        f"the same seed, one thread; not data/models/motion.pt (train_motion's own run of {p.steps} steps).",
    ]
    short = [f"{plan.label} {steps[plan.name]}" for plan in plans if steps.get(plan.name) is not None
             and steps[plan.name] < t.steps]
    if short:
        notes.append(f"Stopped by the {t.max_minutes}-minute guard before {t.steps} steps: {', '.join(short)}.")
    for plan in plans:
        if plan.same_as:
            notes.append(f"{plan.label} trains exactly like {ROW_LABELS[plan.same_as]} (the same {plan.quadruples} "
                         "quadruples in the same order, the same label weights): one training, the same numbers, "
                         "so it neither wins nor loses.")
        if plan.skipped:
            notes.append(f"{plan.label} was not trained: {plan.skipped}.")
    notes.append("Differences smaller than about twice their paired standard error are within the spread of these "
                 "clips. The paper's numbers (MEAD, 256 px, official FOMM) are not comparable with these.")
    return notes


__all__ = ["HeldoutClip", "RowTask", "check_same_keypoint_detector", "pick_renderer", "reference_frames", "run_row",
           "run_table2", "select_clips", "setup_notes", "sheet_indices"]
