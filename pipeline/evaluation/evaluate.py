"""Scoring the generated outputs (data/outputs/frames.zarr) against the held-out ground truth, clip by clip.

The outputs store holds every table row's clips under ids `<row>/<corpus_clip_id>` (rows: ground_truth,
static, wav2lip_only, baseline, mmn, emmn), each as long as its corpus clip. Every clip is scored by
`pipeline.evaluation.metrics.clip_metrics` with the judges of `train_evaluator` (emotion classifier, landmark
regressor, or dlib when given), the sync scorer against the clip's own wav, and the truth's exact
landmarks when the corpus has them and the regressor reads the landmarks (dlib reads both videos, as
the standard protocol does).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import InputError
from pipeline.core.media import load_audio
from pipeline.core.store import open_store, read_index
from pipeline.evaluation.landmark_detect import landmark_detector
from pipeline.evaluation.metrics import clip_metrics
from pipeline.evaluation.metrics_report import ROWS
from pipeline.judges.evaluator import Evaluator, load_evaluator


@dataclass(frozen=True)
class EvalTask:
    row: str
    clip_id: str  # corpus clip id
    emotion: str
    outputs_store: str
    rows: tuple[int, int]  # the generated clip's rows in the outputs store
    corpus_dir: str
    truth: tuple[int, int]  # the ground-truth clip's rows in the corpus frames
    wav: str
    evaluator: str
    scorer: str | None
    dlib_predictor: str | None


@functools.lru_cache(maxsize=2)
def cached_evaluator(path: str, mtime: float) -> Evaluator:
    """One load per worker process (keyed by mtime so a rewritten file is re-read)."""
    return load_evaluator(path)


@functools.lru_cache(maxsize=2)
def cached_detector(path: str, mtime: float, dlib_predictor: str | None):
    """The landmark detector of a worker: dlib's model file is read once, not once per clip."""
    return landmark_detector(cached_evaluator(path, mtime), dlib_predictor, log=lambda _: None)


def split_output_id(output_id: str) -> tuple[str, str]:
    """`<row>/<corpus_clip_id>` -> (row, clip id)."""
    row, sep, clip = str(output_id).partition("/")
    if not sep or not clip:
        raise InputError(None, f"output clip id '{output_id}' is not <row>/<corpus clip id>")
    return row, clip


def plan_tasks(outputs_store: Path, corpus_dir: Path, rows: tuple[str, ...], evaluator: Path, scorer: Path | None,
               dlib_predictor: str | None) -> tuple[list[EvalTask], list[str]]:
    """One task per generated clip of the requested rows (every clip must be a corpus clip), and the
    requested rows the store has no clips of (generate skips a row whose model is missing)."""
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise InputError("params.yaml", f"evaluate.rows: unknown row(s) {unknown}; known: {list(ROWS)}")
    index = read_index(outputs_store)
    manifest = pd.read_parquet(Path(corpus_dir) / "manifest.parquet").set_index("clip_id")
    tasks, found = [], set()
    for out in index.itertuples():
        row, clip = split_output_id(out.clip_id)
        if row not in rows:
            continue
        if clip not in manifest.index:
            raise InputError(outputs_store, f"clip '{clip}' (of {out.clip_id}) is not in the corpus")
        truth = manifest.loc[clip]
        found.add(row)
        tasks.append(EvalTask(row, clip, str(truth.emotion), str(outputs_store), (int(out.start), int(out.stop)),
                              str(corpus_dir), (int(truth.start), int(truth.stop)),
                              str(Path(corpus_dir) / truth.wav_path), str(evaluator),
                              None if scorer is None else str(scorer), dlib_predictor))
    if not tasks:
        raise InputError(outputs_store, f"no clips of any row in {list(rows)} (run generate)")
    return tasks, [r for r in rows if r not in found]


def score_output_clip(task: EvalTask) -> dict:
    """Every metric of one generated clip (`pipeline.evaluation.metrics.clip_metrics`), with its row, clip and label."""
    from pipeline.lipsync.sync_filter import cached_scorer

    mtime = Path(task.evaluator).stat().st_mtime
    evaluator, detector = cached_evaluator(task.evaluator, mtime), cached_detector(task.evaluator, mtime,
                                                                                   task.dlib_predictor)
    generated = open_store(task.outputs_store)["frames"][task.rows[0]:task.rows[1]]
    corpus = open_store(Path(task.corpus_dir) / "frames.zarr")
    truth = corpus["frames"][task.truth[0]:task.truth[1]]
    exact = np.asarray(corpus["landmarks"][task.truth[0]:task.truth[1]])
    use_exact = detector == evaluator.face_landmarks and np.isfinite(exact).all()
    scorer = None if task.scorer is None else cached_scorer(task.scorer, Path(task.scorer).stat().st_mtime)
    metrics = clip_metrics(generated, truth, emotion=task.emotion, emotion_logits=evaluator.emotion_logits,
                           emotions=evaluator.emotions, landmarks=detector,
                           truth_landmarks=exact if use_exact else None, scorer=scorer,
                           samples=load_audio(task.wav) if scorer is not None else None, source=task.wav)
    return {"row": task.row, "clip_id": task.clip_id, "emotion": task.emotion, **metrics}

