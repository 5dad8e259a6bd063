"""Sync filter (paper §3.2): score every pseudo clip against its new audio, keep the well synced ones.

Each pseudo clip y^{i,b} is scored with syncnet_python's offset search (pipeline.lipsync.av_sync) against its
audio b; so is its source x^{i,a} with the original mouths, repeated the same way, against the same
audio (what the clip would score without the re-dub). A clip is kept when its confidence exceeds
`threshold` and |offset| <= `max_offset`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.core.media import load_audio
from pipeline.core.store import open_store
from pipeline.lipsync.sync_scorers import cached_scorer, score_clip


@dataclass(frozen=True)
class ScoreTask:
    pseudo_clip_id: str
    pseudo_store: str
    rows: tuple[int, int]  # the pseudo clip's rows in the pseudo store
    corpus_dir: str
    source: tuple[int, int]  # rows of x^{i,a} in the corpus frames
    wav: str
    weights: str


def score_pseudo_clip(task: ScoreTask) -> dict:
    """Offset / confidence / min distance of the pseudo clip and of its source's original mouths."""
    scorer = cached_scorer(task.weights, Path(task.weights).stat().st_mtime)
    pseudo = open_store(task.pseudo_store)
    frames = pseudo["frames"][task.rows[0]:task.rows[1]]
    source_frame = pseudo["source_frame"][task.rows[0]:task.rows[1]]
    original = open_store(Path(task.corpus_dir) / "frames.zarr")["frames"][task.source[0]:task.source[1]]
    samples = load_audio(task.wav)
    redub = score_clip(scorer, frames, samples, source=task.wav)
    before = score_clip(scorer, original[source_frame], samples, source=task.wav)
    return {"pseudo_clip_id": task.pseudo_clip_id, **redub.as_row(),
            **{f"{k}_original": v for k, v in before.as_row().items()}}


def keep_mask(scores: pd.DataFrame, threshold: float, max_offset: int) -> pd.Series:
    """The filter rule: confidence > threshold and |offset| <= max_offset."""
    return (scores.confidence > threshold) & (scores.offset.abs() <= max_offset)


def _mean(values: pd.Series) -> float | None:
    values = values.dropna()
    return round(float(values.mean()), 4) if len(values) else None


def pseudo_report(clips: pd.DataFrame, scores: pd.DataFrame, pairs: pd.DataFrame, threshold: float,
                  max_offset: int, scorer: str) -> dict:
    """data/reports/pseudo_pairs.json: mouth error of all vs kept pseudo clips against the counterfactuals."""
    table = clips.merge(scores, on="pseudo_clip_id", validate="one_to_one")
    with_cf = table[table.counterfactual_clip_id.notna()]
    kept_ids = set(table.pseudo_clip_id[table.kept])
    kept_pairs = pairs.y_ib.isin(kept_ids) & pairs.y_ja.isin(kept_ids) if len(pairs) else pd.Series([], dtype=bool)
    return {
        "mouth_err_all": _mean(with_cf.mouth_err),
        "mouth_err_kept": _mean(with_cf.mouth_err[with_cf.kept]),
        "kept_fraction": round(float(table.kept.mean()), 4),
        "threshold": float(threshold),
        "max_offset": int(max_offset),
        "scorer": scorer,
        "mouth_err_rejected": _mean(with_cf.mouth_err[~with_cf.kept]),
        "mouth_err_original": _mean(with_cf.mouth_err_original),
        "mouth_err_counterfactual": _mean(with_cf.mouth_err_counterfactual),
        "landmark_model_err": _mean(table.landmark_model_err),
        "mouth_err_unit": "corpus pixels, mean over the 20 mouth points and frames t < min(T_a, T_b)",
        "pseudo_clips": int(len(table)),
        "kept_clips": int(table.kept.sum()),
        "clips_with_counterfactual": int(len(with_cf)),
        "kept_with_counterfactual": int(with_cf.kept.sum()),
        "confidence_mean": _mean(table.confidence),
        "confidence_original_mean": _mean(table.confidence_original),
        "more_confident_than_original": round(float((table.confidence > table.confidence_original).mean()), 4),
        "offset_zero_fraction": round(float((table.offset == 0).mean()), 4),
        "quadruples": int(len(pairs)),
        "quadruples_kept": int(kept_pairs.sum()) if len(pairs) else 0,
    }

