"""Pseudo pairs (paper §3.2): which clips to re-dub, the Wav2Lip worker, and the cross-reconstruction table.

Re-dubs. Each real training clip x^{i,a} (actor, emotion-level i, sentence a) is re-dubbed with the audio
of the real clip (actor, i, b) for sentences b of the same actor, counterfactual sentences first, so
every re-dub that can have one has its exact target: the corpus's counterfactual `<x^{i,a}>_cf<b>` (the
same expression, blink and head-pose track, sentence b's mouth, as long as audio b). The pseudo clip
y^{i,b} is `<x^{i,a}>_w2l<b>`, as long as audio b (T_b frames); frame t shows source frame t while
t < T_a, then the source frames repeat (`pingpong` or Wav2Lip's `loop`); its audio is the corpus wav
of (actor, i, b) (column `wav_path`, relative to the corpus folder).

Quadruples (x^{i,a}, x^{j,b}, y^{i,b}, y^{j,a}) for every actor, sentence pair a < b and ordered pair
of emotion-levels (i, j) whose two re-dubs exist. Frame alignment, per target frame t:
  y^{i,b}[t]: expression/pose from x^{i,a}[`y_ib_from_x_ia`[t]] (the repeat rule above), mouth from
  x^{j,b}[`y_ib_from_x_jb`[t]], the frame at the same relative time in sentence b,
  floor((t + 0.5) * T(x^{j,b}) / T(y^{i,b})) (different emotions speak at different rates);
  y^{j,a}[t] likewise with the roles swapped.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import InputError
from pipeline.core.media import faces_bgr
from pipeline.core.store import open_store
from pipeline.judges.mouth_landmarks import MOUTH, LandmarkRegressor, point_error
from pipeline.lipsync.io import load_wav2lip_any
from pipeline.lipsync.redub import paste_faces, redub_faces, source_frame_indices
from pipeline.models.wav2lip import Wav2Lip

SUFFIX = "_w2l"


def pseudo_clip_id(source_clip_id: str, sentence_b: int) -> str:
    return f"{source_clip_id}{SUFFIX}{sentence_b:03d}"


def plan_redubs(manifest: pd.DataFrame, sentences_per_clip: int) -> pd.DataFrame:
    """One row per pseudo clip: source x^{i,a}, audio clip (actor, i, b), counterfactual (or None), lengths."""
    real = manifest[(manifest.kind == "real") & (manifest.split == "train")]
    counterfactuals = manifest[manifest.kind == "counterfactual"].set_index(["source_clip_id", "sentence_id"])
    rows = []
    for _, group in real.groupby(["actor", "emotion", "level"], sort=False):
        by_sentence = group.set_index("sentence_id")
        for src in group.sort_values("sentence_id").itertuples():
            others = [int(b) for b in sorted(by_sentence.index) if b != src.sentence_id]
            with_cf = [b for b in others if (src.clip_id, b) in counterfactuals.index]
            chosen = with_cf + [b for b in others if b not in with_cf]
            if sentences_per_clip > 0:
                chosen = chosen[:sentences_per_clip]
            for b in chosen:
                audio = by_sentence.loc[b]
                cf = counterfactuals.loc[(src.clip_id, b)] if b in with_cf else None
                if cf is not None and int(cf.frames) != int(audio.frames):
                    raise InputError("manifest.parquet", f"counterfactual of {src.clip_id} with sentence {b} has "
                                                         f"{int(cf.frames)} frames, its audio {int(audio.frames)}")
                rows.append({
                    "pseudo_clip_id": pseudo_clip_id(src.clip_id, b), "actor": src.actor, "emotion": src.emotion,
                    "level": int(src.level), "split": "train", "source_clip_id": src.clip_id,
                    "sentence_a": int(src.sentence_id), "sentence_b": b, "audio_clip_id": audio.clip_id,
                    "wav_path": audio.wav_path, "frames": int(audio.frames), "source_frames": int(src.frames),
                    "counterfactual_clip_id": None if cf is None else f"{src.clip_id}_cf{b:03d}",
                    "source_start": int(src.start), "source_stop": int(src.stop),
                    "audio_start": int(audio.start), "audio_stop": int(audio.stop),
                    "counterfactual_start": -1 if cf is None else int(cf.start),
                    "counterfactual_stop": -1 if cf is None else int(cf.stop),
                })
    if not rows:
        raise InputError("manifest.parquet", "no training actor has two sentences in one emotion: nothing to re-dub")
    return pd.DataFrame(rows)


def relative_time_indices(n_from: int, n_to: int) -> np.ndarray:
    """For each of n_to frames, the frame of an n_from-frame clip at the same relative time."""
    return np.minimum(((np.arange(n_to) + 0.5) * n_from / n_to).astype(np.int64), n_from - 1)


def quadruples(plan: pd.DataFrame, extension: str) -> pd.DataFrame:
    """Every (x^{i,a}, x^{j,b}, y^{i,b}, y^{j,a}) whose two re-dubs are planned, with frame alignments."""
    by_id = plan.set_index("pseudo_clip_id")
    source_len = dict(zip(plan.source_clip_id, plan.source_frames))
    rows = []
    for actor, group in plan.groupby("actor", sort=False):
        styles = group.drop_duplicates("source_clip_id")
        sentences = sorted(set(styles.sentence_a))
        for ia, a in enumerate(sentences):
            for b in sentences[ia + 1:]:
                for x_ia in styles[styles.sentence_a == a].itertuples():
                    for x_jb in styles[styles.sentence_a == b].itertuples():
                        y_ib, y_ja = pseudo_clip_id(x_ia.source_clip_id, b), pseudo_clip_id(x_jb.source_clip_id, a)
                        if y_ib not in by_id.index or y_ja not in by_id.index:
                            continue
                        t_ia, t_jb = source_len[x_ia.source_clip_id], source_len[x_jb.source_clip_id]
                        t_yib, t_yja = int(by_id.loc[y_ib, "frames"]), int(by_id.loc[y_ja, "frames"])
                        rows.append({
                            "actor": actor, "sentence_a": a, "sentence_b": b,
                            "emotion_i": x_ia.emotion, "level_i": int(x_ia.level),
                            "emotion_j": x_jb.emotion, "level_j": int(x_jb.level),
                            "same_style": (x_ia.emotion, x_ia.level) == (x_jb.emotion, x_jb.level),
                            "x_ia": x_ia.source_clip_id, "x_jb": x_jb.source_clip_id, "y_ib": y_ib, "y_ja": y_ja,
                            "y_ib_frames": t_yib, "y_ja_frames": t_yja,
                            "y_ib_from_x_ia": source_frame_indices(t_ia, t_yib, extension).tolist(),
                            "y_ib_from_x_jb": relative_time_indices(t_jb, t_yib).tolist(),
                            "y_ja_from_x_jb": source_frame_indices(t_jb, t_yja, extension).tolist(),
                            "y_ja_from_x_ia": relative_time_indices(t_ia, t_yja).tolist(),
                        })
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------- worker


@dataclass(frozen=True)
class RedubTask:
    """One pseudo clip for a worker: where to read, how to generate, and the regressor that scores it."""

    pseudo_clip_id: str
    corpus_dir: str
    audio_store: str
    wav2lip: str
    source: tuple[int, int]  # rows of x^{i,a} in the corpus frames
    audio: tuple[int, int]  # rows of the audio clip's mel windows
    counterfactual: tuple[int, int] | None
    extension: str
    paste: str
    batch_size: int
    regressor_state: dict | None  # LandmarkRegressor.state() of the judge; None: no mouth measurement
    bf16: bool = False  # Wav2Lip's convs under bf16 autocast


@functools.lru_cache(maxsize=2)
def _generator(path: str, mtime: float) -> Wav2Lip:
    """One load per worker process (keyed by mtime so a rewritten file is re-read)."""
    return load_wav2lip_any(path).module.eval()


def redub_clip(task: RedubTask) -> dict:
    """Generate one pseudo clip and measure its mouth against the counterfactual (when there is one).

    Mouth errors (corpus px, frames t < min(T_a, T_b), where the counterfactual keeps the source's pose
    and expression exactly): `mouth_err` regressor(pseudo) vs the counterfactual's true landmarks;
    `mouth_err_original` regressor(source, original mouth) vs the same; `mouth_err_counterfactual`
    regressor(counterfactual) vs its truth (the measurement floor of that clip).
    """
    generator = _generator(task.wav2lip, Path(task.wav2lip).stat().st_mtime)
    corpus = open_store(Path(task.corpus_dir) / "frames.zarr")
    source_rgb = corpus["frames"][task.source[0]:task.source[1]]
    mel = open_store(task.audio_store)["mel"][task.audio[0]:task.audio[1]]
    generated, idx = redub_faces(generator, faces_bgr(source_rgb), np.asarray(mel, np.float32), task.extension,
                                 task.batch_size, task.bf16)
    frames = paste_faces(source_rgb[idx], generated, task.paste)
    result = {"frames": frames, "source_frame": idx.astype(np.int32), "mouth_err": np.nan,
              "mouth_err_original": np.nan, "mouth_err_counterfactual": np.nan, "compared_frames": 0}
    if task.counterfactual is not None and task.regressor_state is not None:
        regressor = LandmarkRegressor.from_state(task.regressor_state)

        def mouth(frames_rgb: np.ndarray) -> np.ndarray:
            return regressor.predict(faces_bgr(frames_rgb, regressor.face_size))[:, MOUTH]

        n = min(len(source_rgb), len(frames))
        start = task.counterfactual[0]
        truth = corpus["landmarks"][start:start + n][:, MOUTH]
        cf_rgb = corpus["frames"][start:start + n]
        result.update({
            "mouth_err": point_error(mouth(frames[:n]), truth),
            "mouth_err_original": point_error(mouth(source_rgb[:n]), truth),
            "mouth_err_counterfactual": point_error(mouth(cf_rgb), truth),
            "compared_frames": int(n)})
    return result

