"""The pseudo_pairs stage's work (paper 3.2): every training clip re-dubbed by Wav2Lip into data/pseudo/frames.zarr,
with clips.parquet (one row per pseudo clip, mouth-landmark errors) and pairs.parquet (the quadruples).

The selection, length and alignment rules and the Dask worker `redub_clip` are pipeline.lipsync.pseudo's; this
module plans, maps the workers and alone writes the store, shard by shard. (A module of its own so that the stages
importing pipeline.lipsync.pseudo's alignment rule, e.g. motion_report, do not depend on this one's imports.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import BaseParams, PseudoPairsParams, recorded_params
from pipeline.core.errors import InputError
from pipeline.core.parallel import dask_client, ordered_map
from pipeline.core.precision import announce_precision, resolve_precision
from pipeline.core.store import ArraySpec, RaggedStoreWriter, atomic_output, open_store
from pipeline.corpus.manifest import read_manifest
from pipeline.judges.evaluator import load_evaluator
from pipeline.judges.mouth_landmarks import LandmarkRegressor
from pipeline.lipsync.data import check_aligned
from pipeline.lipsync.pseudo import RedubTask, plan_redubs, quadruples, redub_clip
from pipeline.lipsync.redub import EXTENSIONS, PASTE_MODES

SCHEMA = "emmn.pseudo/v1"


def mouth_judge(evaluator: Path) -> LandmarkRegressor | None:
    """The 68-point landmark regressor of `train_evaluator` (real training frames; the judge `evaluate` uses too),
    or None when that evaluator has none (a corpus without landmarks)."""
    if not Path(evaluator).is_file():
        raise InputError(evaluator, "evaluator checkpoint not found (run train_evaluator first)")
    return load_evaluator(evaluator).landmarks


def has_landmarks(corpus_dir: Path) -> bool:
    """Whether the corpus carries ground-truth landmarks (the built-in one does; MEAD ingest leaves NaN)."""
    landmarks = open_store(Path(corpus_dir) / "frames.zarr")["landmarks"]
    return landmarks.shape[0] > 0 and bool(np.isfinite(landmarks[0]).all())


def build_pseudo_pairs(corpus_dir: Path, audio_store: Path, wav2lip: Path, evaluator: Path, out_dir: Path,
                       base: BaseParams, p: PseudoPairsParams, log=print) -> dict:
    """Write frames.zarr, clips.parquet and pairs.parquet under out_dir; return a summary."""
    if p.frame_extension not in EXTENSIONS:
        raise InputError("params.yaml", f"pseudo_pairs.frame_extension must be one of {EXTENSIONS}")
    if p.paste not in PASTE_MODES:
        raise InputError("params.yaml", f"pseudo_pairs.paste must be one of {PASTE_MODES}")
    if not Path(wav2lip).is_file():
        raise InputError(wav2lip, "Wav2Lip checkpoint not found (run train_wav2lip first)")
    check_aligned(corpus_dir, audio_store)
    plan = plan_redubs(read_manifest(corpus_dir), p.sentences_per_clip)
    regressor = None
    if (plan.counterfactual_start >= 0).any() and has_landmarks(corpus_dir):
        regressor = mouth_judge(evaluator)
    if regressor is None:  # e.g. MEAD: no counterfactual renders, no ground-truth landmarks, so nothing to measure against
        log("pseudo_pairs: no counterfactual clips with landmarks in the corpus; mouth errors left empty")
    state = regressor.state() if regressor is not None else None
    precision = resolve_precision(base.precision, "cpu")  # redub_clip runs Wav2Lip on the CPU
    announce_precision(precision, "pseudo_pairs", log)
    tasks = [RedubTask(r.pseudo_clip_id, str(corpus_dir), str(audio_store), str(wav2lip),
                       (r.source_start, r.source_stop), (r.audio_start, r.audio_stop),
                       None if r.counterfactual_start < 0 or state is None
                       else (r.counterfactual_start, r.counterfactual_stop),
                       p.frame_extension, p.paste, p.batch_size, state, precision.bf16) for r in plan.itertuples()]
    size = int(open_store(Path(corpus_dir) / "frames.zarr")["frames"].shape[1])
    attrs = {"schema": SCHEMA, "stage": "pseudo_pairs", "fps": base.fps, "size": size, "precision": precision.resolved,
             "params": recorded_params("pseudo_pairs", base, p),
             "audio": "clips.parquet wav_path, relative to the corpus folder",
             "source_frame": "index into the source clip x^{i,a} of the frame each pseudo frame re-dubs"}
    metrics = []
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_dir / "frames.zarr") as tmp:
        writer = RaggedStoreWriter(tmp, list(plan.pseudo_clip_id), list(plan.frames),
                                   {"frames": ArraySpec((size, size, 3), "uint8", ("y", "x", "rgb")),
                                    "source_frame": ArraySpec((), "int32", ())},
                                   attrs=attrs, chunk_frames=p.chunk_frames, shard_frames=p.shard_frames)
        with dask_client(base.workers, base.scheduler_address) as client:
            for i, result in enumerate(ordered_map(redub_clip, tasks, client=client, window=4 * max(base.workers, 1),
                                                   description="pseudo_pairs: re-dubbing")):
                writer.write_clip(i, {"frames": result.pop("frames"), "source_frame": result.pop("source_frame")})
                metrics.append(result)
        writer.close()
        plan["start"], plan["stop"] = writer.starts, writer.stops
    clips = pd.concat([plan.drop(columns=[c for c in plan.columns if c.endswith(("_start", "_stop"))]),
                       pd.DataFrame(metrics)], axis=1)
    clips["frame_extension"] = p.frame_extension
    clips["landmark_model_err"] = regressor.heldout_err_px if regressor is not None else np.nan
    pairs = quadruples(plan, p.frame_extension)
    _write_parquet(clips, out_dir / "clips.parquet")
    _write_parquet(pairs, out_dir / "pairs.parquet")
    with_cf = clips[clips.counterfactual_clip_id.notna()]
    summary = {"pseudo_clips": int(len(clips)), "pseudo_frames": int(clips.frames.sum()),
               "with_counterfactual": int(len(with_cf)), "quadruples": int(len(pairs)),
               "mouth_err": _mean(with_cf.mouth_err), "mouth_err_original": _mean(with_cf.mouth_err_original),
               "mouth_err_counterfactual": _mean(with_cf.mouth_err_counterfactual),
               "landmark_model_err": _mean(clips.landmark_model_err)}
    log(f"pseudo_pairs: {json.dumps(summary)}")
    return summary


def _mean(values: pd.Series) -> float | None:
    return round(float(values.mean()), 4) if values.notna().any() else None


def _write_parquet(table: pd.DataFrame, path: Path) -> None:
    with atomic_output(path) as tmp:
        table.to_parquet(tmp, index=False)
