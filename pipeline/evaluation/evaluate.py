"""Scoring the generated outputs (data/outputs/frames.zarr) against the held-out ground truth, clip by clip.

The outputs store holds every table row's clips under ids `<row>/<corpus_clip_id>` (rows: ground_truth,
static, wav2lip_only, baseline, mmn, emmn), each as long as its corpus clip. Every clip is scored by
`pipeline.evaluation.metrics.clip_metrics` with the judges of `train_evaluator` (emotion classifier, landmark
regressor, or dlib when given; the expression judge against the truth's render controls when the corpus has
them), the sync scorer against the clip's own wav, and the truth's exact landmarks when the corpus has them
and the regressor reads the landmarks (dlib reads both videos, as the standard protocol does).

`run_evaluate` (the evaluate stage's work) maps `score_output_clip` over Dask workers and writes metrics.json,
table1.md (with `judge_notes`: how to read the numbers), the per-clip CSV and the confusion sheet.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import BaseParams, EvaluateParams
from pipeline.core.errors import InputError
from pipeline.core.media import load_audio
from pipeline.core.parallel import dask_client, ordered_map
from pipeline.core.store import (
    atomic_output,
    open_store,
    read_index,
    write_json,
    write_text,
)
from pipeline.evaluation.landmark_detect import DlibLandmarks, landmark_detector
from pipeline.evaluation.metrics import clip_metrics
from pipeline.evaluation.metrics_report import (
    ROW_LABELS,
    ROWS,
    aggregate_rows,
    table1_markdown,
    write_confusion_sheet,
)
from pipeline.judges.evaluator import MOUTH_JUDGED, UPPER_JUDGED, Evaluator, control_columns, load_evaluator
from pipeline.judges.scores import confusion_matrix
from pipeline.lipsync.io import load_syncnet_any


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


def expression_inputs(evaluator: Evaluator, corpus, rows) -> dict:
    """clip_metrics' expression arguments for the truth frames `rows` of the corpus store: the judge and the
    truth's render controls, or nothing when the judge or the corpus has no controls (MEAD, LRW)."""
    columns = control_columns(corpus) if evaluator.controls is not None else None
    if columns is None:
        return {}
    return {"expression": (evaluator.control_names, evaluator.expression_controls, MOUTH_JUDGED, UPPER_JUDGED),
            "truth_controls": np.asarray(corpus["render_params"][rows])[:, columns]}


def score_output_clip(task: EvalTask) -> dict:
    """Every metric of one generated clip (`pipeline.evaluation.metrics.clip_metrics`), with its row, clip and label."""
    from pipeline.lipsync.sync_scorers import cached_scorer

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
                           samples=load_audio(task.wav) if scorer is not None else None, source=task.wav,
                           **expression_inputs(evaluator, corpus, slice(*task.truth)))
    return {"row": task.row, "clip_id": task.clip_id, "emotion": task.emotion, **metrics}


def run_evaluate(outputs: Path, corpus_dir: Path, evaluator_path: Path, scorer: Path, metrics_json: Path,
                 table_md: Path, clips_csv: Path, confusion_png: Path, base: BaseParams, p: EvaluateParams,
                 log=print) -> dict:
    """Score every generated clip; write metrics.json, table1.md, the per-clip CSV and the confusion sheet."""
    evaluator = load_evaluator(evaluator_path)  # fail here, in one line, before any worker starts
    loaded = load_syncnet_any(scorer)
    by_dlib = isinstance(landmark_detector(evaluator, p.dlib_predictor, log), DlibLandmarks)
    log(f"evaluate: landmarks by {'dlib' if by_dlib else 'the trained regressor'}")
    tasks, missing = plan_tasks(Path(outputs), Path(corpus_dir), tuple(p.rows), Path(evaluator_path), Path(scorer),
                                p.dlib_predictor)
    if missing:
        log(f"evaluate: no clips of row(s) {missing} in {outputs}; they are left out")
    with dask_client(base.workers, base.scheduler_address) as client:
        per_clip = pd.DataFrame(list(ordered_map(score_output_clip, tasks, client=client,
                                                 window=4 * max(base.workers, 1), description="evaluate: scoring")))
    order = [r for r in ROWS if r in p.rows]
    rows = aggregate_rows(per_clip, order)
    matrices = {ROW_LABELS[r].split(" (")[0]: confusion_matrix(clips.emotion, clips.emotion_pred, evaluator.emotions)
                for r in rows for clips in [per_clip[per_clip.row == r]]}
    write_confusion_sheet(matrices, evaluator.emotions, confusion_png)
    table_md.parent.mkdir(parents=True, exist_ok=True)
    write_text(table_md, table1_markdown(rows, title="Table 1 (held-out actors of the corpus)",
                                        notes=judge_notes(evaluator.metrics, loaded.arch, scorer, per_clip, missing,
                                                          by_dlib)))
    with atomic_output(clips_csv) as tmp:
        per_clip.to_csv(tmp, index=False, float_format="%.6g")
    write_json(metrics_json, rows)
    log(f"evaluate: {len(per_clip)} clips in {len(rows)} rows -> {metrics_json}")
    return rows


def judge_notes(judges: dict, scorer_arch: str, scorer: Path, per_clip: pd.DataFrame, missing: list[str],
                by_dlib: bool = False) -> list[str]:
    """How to read the numbers: the judges' own ceiling and floor, the scorer, what was left out."""
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}%"

    def px(v):
        return "n/a" if v is None else f"{v:.2f} px"

    clips = per_clip.groupby("row").clip_id.nunique()
    notes = [
        f"{int(clips.max())} held-out clips per row ({', '.join(f'{r}: {n}' for r, n in clips.items())}).",
        f"Emotion accuracy: a frame classifier trained on the training actors' real frames (train_evaluator); "
        f"on the held-out actors' real clips it scores {pct(judges.get('emotion_clip_accuracy'))} (the ceiling; "
        f"chance {pct(judges.get('chance_accuracy'))}).",
        "M-LMD / F-LMD: dlib's 68-point predictor on the generated and the ground-truth frames (EAT's protocol; "
        "frames without a face on either side are skipped)." if by_dlib else
        f"M-LMD / F-LMD: landmarks of generated frames from a regressor trained on corpus frames, against the "
        f"exact landmarks; on real held-out frames it is off by M-LMD {px(judges.get('m_lmd_floor'))}, F-LMD "
        f"{px(judges.get('f_lmd_floor'))} (the floor: the ground-truth row).",
        f"Sync_conf (LSE-C) and LSE-D: syncnet_python's offset search with the {scorer_arch} scorer {scorer}; "
        f"values are in that scorer's distance units (comparable within this table, not with papers using "
        f"the official syncnet_v2).",
    ]
    if missing:
        notes.append(f"Not generated, so not in the table: {', '.join(missing)}.")
    if per_clip.sync_offset.notna().any():
        offsets = per_clip.groupby("row").sync_offset.apply(lambda s: float(np.mean(np.abs(s.dropna()))))
        notes.append("Mean |AV offset| (frames): " + ", ".join(f"{r} {v:.1f}" for r, v in offsets.items()) + ".")
    return notes
