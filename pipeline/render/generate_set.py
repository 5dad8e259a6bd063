"""The generate stage's work: videos of every held-out clip for each comparison row, and the emotion sheet.

For each real test-split clip of the corpus (held-out actors saying held-out sentences, every emotion
and level) and each row, a clip as long as the corpus clip, at the corpus frame size:
  ground_truth  the corpus frames themselves
  static        the actor's neutral reference frame, repeated
  wav2lip_only  Wav2Lip re-dubbing that static frame with the clip's audio (lip sync, no emotion)
  emmn          EmmnNet + the stage-2 renderer (emmn_render.pt), from the reference frame and the clip's audio
  baseline, mmn the paper's ablations: EmmnNet checkpoints of the other `variant`s, same renderer
The reference frame is the corpus's neutral reference of the actor (already a face crop, so no face
detection); the audio is the clip's wav, through the same feature code as `emmn generate`.

Tasks are (row, clip) pairs in row-major order, mapped over Dask workers (models loaded once per worker
process); this process alone writes the frames store, in order, shard by shard. Each task writes its
own mp4 (distinct files), inside the output folder's temp copy.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.audio.prosody import DEFAULT_STORE as DEFAULT_PROSODY_STORE
from pipeline.core.config import (
    MEAD_EMOTIONS,
    BaseParams,
    GenerateParams,
    recorded_params,
)
from pipeline.core.errors import InputError
from pipeline.core.parallel import dask_client, ordered_map
from pipeline.core.precision import announce_precision, pick_device, resolve_precision
from pipeline.core.store import (
    ArraySpec,
    RaggedStoreWriter,
    atomic_output,
    open_store,
    read_index,
    write_json,
    write_png,
)
from pipeline.core.timings import write_timings

SCHEMA = "emmn.outputs/v1"

CHEAP_ROWS = ("ground_truth", "static")
MODEL_ROWS = ("emmn", "baseline", "mmn")
ROWS = (*CHEAP_ROWS, "wav2lip_only", *MODEL_ROWS)
REQUIRED_BY = {"emmn": "train_memory", "wav2lip_only": "train_wav2lip"}  # rows whose checkpoint must exist


def output_clip_id(row: str, clip_id: str) -> str:
    """`<row>/<corpus clip id>`: the generated store's clip ids (see the outputs contract)."""
    return f"{row}/{clip_id}"


def sheet_clips(clips: pd.DataFrame, actor: str | None = None, sentence: int | None = None, *,
                section: str = "generate") -> pd.DataFrame:
    """A sheet's clips: one held-out actor (default the first), one of their sentences (default the first), every
    emotion at its strongest level. A choice the clips lack is a one-line error naming `section`'s params key."""
    actors = sorted(clips.actor.astype(str).unique())
    actor = actors[0] if not actor else str(actor)
    if actor not in actors:
        raise InputError("params.yaml", f"{section}.sheet_actor {actor} is not a held-out actor ({', '.join(actors)})")
    mine = clips[clips.actor.astype(str) == actor]
    sentences = sorted(int(v) for v in mine.sentence_id.unique())
    sentence = sentences[0] if sentence is None else int(sentence)
    if sentence not in sentences:
        raise InputError("params.yaml", f"{section}.sheet_sentence: actor {actor} says no held-out sentence "
                                        f"{sentence} ({sentences})")
    mine = mine[mine.sentence_id == sentence]
    return mine.sort_values("level").groupby("emotion", sort=False).tail(1)


def heldout_clips(manifest: pd.DataFrame, max_clips: int = 0, *, keep_sheet: bool = False,
                  sheet_actor: str | None = None) -> pd.DataFrame:
    """Real test-split clips in clip-id order; with max_clips, that many spread evenly over them. keep_sheet
    (the generate stage): the emotions sheet's clips first (every emotion of one actor and sentence, so the
    sheet is complete), the rest spread evenly over the others."""
    clips = manifest[(manifest.split == "test") & (manifest.kind == "real")].sort_values("clip_id")
    if clips.empty:
        raise InputError("manifest.parquet", "no held-out (test-split) real clips to generate")
    if 0 < max_clips < len(clips):
        sheet = sheet_clips(clips, sheet_actor).iloc[:max_clips] if keep_sheet else clips.iloc[:0]
        rest = clips.drop(sheet.index)
        spread = rest.iloc[np.linspace(0, len(rest) - 1, max(max_clips - len(sheet), 0)).round().astype(int)]
        clips = pd.concat([sheet, spread]).sort_values("clip_id")
    return clips.reset_index(drop=True)


def plan_rows(p: GenerateParams, models: dict[str, Path], log=print) -> tuple[list[str], dict[str, str]]:
    """The rows to generate (in params order) and {skipped row: why}. `models` maps a model row to its
    checkpoint; emmn and wav2lip_only must exist, the ablation rows are skipped when theirs is missing."""
    unknown = [r for r in p.rows if r not in ROWS]
    if unknown:
        raise InputError("params.yaml", f"generate.rows: unknown row(s) {unknown}; known: {list(ROWS)}")
    if "emmn" not in p.rows:
        raise InputError("params.yaml", "generate.rows must include emmn (the emotions sheet shows it)")
    rows, skipped = [], {}
    for row in dict.fromkeys(p.rows):
        path = models.get(row)
        if path is not None and not Path(path).is_file():
            if row in REQUIRED_BY:
                raise InputError(path, f"checkpoint for row {row} not found (run {REQUIRED_BY[row]} first)")
            skipped[row] = f"no checkpoint at {path} (train_memory with variant {row} has not written it)"
            log(f"generate: skipping row {row}: {skipped[row]}")
            continue
        rows.append(row)
    return rows, skipped


@dataclass(frozen=True)
class ClipTask:
    """One (row, clip) for a worker."""

    row: str
    clip_id: str
    actor: str
    frames_start: int  # corpus rows of the clip
    frames_stop: int
    audio_start: int  # audio.zarr rows of the clip (mel windows for wav2lip_only)
    audio_stop: int
    wav: str
    corpus_dir: str
    audio_store: str
    prosody_store: str  # voice baselines, for an emotion encoder that hears prosody
    model: str | None  # EmmnNet checkpoint (model rows) or wav2lip.pt
    renderer: str | None  # fomm.pt-layout renderer (model rows)
    mp4: str
    device: str
    single_thread: bool


def _resize(frames: np.ndarray, size: int) -> np.ndarray:
    if frames.shape[1] == size:
        return frames
    interp = cv2.INTER_AREA if frames.shape[1] > size else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, (size, size), interpolation=interp) for f in frames])


@functools.lru_cache(maxsize=4)
def _animator(model: str, renderer: str, device: str, mtimes: tuple[float, float]):
    """One load per worker process and checkpoint pair (mtimes: a rewritten file is re-read)."""
    from pipeline.core.precision import pick_device
    from pipeline.render.generate import load_animator

    return load_animator(model, renderer, pick_device(device))


@functools.lru_cache(maxsize=2)
def _wav2lip(path: str, mtime: float):
    from pipeline.lipsync.io import load_wav2lip_any

    return load_wav2lip_any(path).module.eval()


@functools.lru_cache(maxsize=2)
def _prosody_store(path: str):
    """One read per worker process of the voice baselines (ProsodyStore.voice checks the actor)."""
    from pipeline.audio.prosody import ProsodyStore

    return ProsodyStore(path)


def _reference(corpus_dir: str, actor: str) -> np.ndarray:
    root = open_store(Path(corpus_dir) / "frames.zarr")
    actors = [str(a) for a in root["reference_actor"][:]]
    if actor not in actors:
        raise InputError(Path(corpus_dir) / "frames.zarr", f"no neutral reference frame for actor {actor}")
    return root["reference_frames"][actors.index(actor)]


def generate_clip(task: ClipTask, base: BaseParams, p: GenerateParams) -> dict:
    """Worker: the frames of one (row, clip), its mp4 written; returns frames and seconds spent."""
    import torch

    from pipeline.core.media import load_audio, write_mp4

    if task.single_thread:
        torch.set_num_threads(1)
    t0 = time.monotonic()
    n = task.frames_stop - task.frames_start
    corpus = open_store(Path(task.corpus_dir) / "frames.zarr")
    size = int(corpus["frames"].shape[1])
    if task.row == "ground_truth":
        frames = corpus["frames"][task.frames_start:task.frames_stop]
    elif task.row == "static":
        frames = np.repeat(_reference(task.corpus_dir, task.actor)[None], n, axis=0)
    elif task.row == "wav2lip_only":
        from pipeline.core.media import faces_bgr
        from pipeline.lipsync.redub import paste_faces, redub_faces

        generator = _wav2lip(task.model, Path(task.model).stat().st_mtime)
        mel = np.asarray(open_store(task.audio_store)["mel"][task.audio_start:task.audio_stop], np.float32)
        reference = _reference(task.corpus_dir, task.actor)[None]
        faces, _ = redub_faces(generator, faces_bgr(reference), mel, "loop", p.batch_size)
        frames = paste_faces(np.repeat(reference, n, axis=0), faces, p.wav2lip_paste)
    else:
        from pipeline.render.generate import animate_clip, filter_settings

        mtimes = (Path(task.model).stat().st_mtime, Path(task.renderer).stat().st_mtime)
        animator = _animator(task.model, task.renderer, task.device, mtimes)
        samples = load_audio(task.wav, base.sample_rate)
        reference = _reference(task.corpus_dir, task.actor)
        crop = _resize(reference[None], animator.image_size)[0]
        # the speaker's own baseline, measured over their clips by the prosody stage
        needs_voice = getattr(animator.emmn, "needs_prosody", False)
        voice = _prosody_store(task.prosody_store).voice(task.actor) if needs_voice else None
        bf16 = resolve_precision(base.precision, animator.device).bf16
        frames = animate_clip(animator, crop, samples, n, fps=base.fps, filter_settings=filter_settings(p),
                              block_frames=p.block_frames, batch_size=p.batch_size, bf16=bf16, voice=voice)
    frames = _resize(np.ascontiguousarray(frames, dtype=np.uint8), size)
    if len(frames) != n:
        raise InputError(task.wav, f"{task.row}: made {len(frames)} frames, the corpus clip has {n}")
    write_mp4(task.mp4, frames, base.fps, audio=task.wav, crf=p.crf)
    return {"frames": frames, "seconds": time.monotonic() - t0}


def _label(cell: np.ndarray, text: str) -> np.ndarray:
    cell = cell.copy()
    for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(cell, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, colour, thickness, cv2.LINE_AA)
    return cell


def emotions_sheet(store: Path, corpus_dir: Path, clips: pd.DataFrame, out_png: Path, *, row: str = "emmn",
                   actor: str | None = None, columns: int = 6) -> dict:
    """Contact sheet: one held-out actor, one sentence, every emotion generated from the same neutral frame
    with that emotion's audio. Rows = emotions (strongest level); columns = the reference, `columns`
    evenly spaced generated frames, and the real frame at the middle of the clip for comparison."""
    chosen = sheet_clips(clips, actor).set_index("emotion")
    index = read_index(store).set_index("clip_id")
    frames = open_store(store)["frames"]

    def generated(emotion: str) -> list[np.ndarray]:
        start, stop = (int(v) for v in index.loc[output_clip_id(row, chosen.loc[emotion].clip_id), ["start", "stop"]])
        return [frames[int(i)] for i in np.linspace(start, stop - 1, columns).round().astype(int)]

    order = _sheet_order(chosen.index)
    _write_sheet(out_png, corpus_dir, chosen, order, generated, f"{row} frame", int(frames.shape[1]))
    return {"actor": str(chosen.actor.iloc[0]), "sentence_id": int(chosen.sentence_id.iloc[0]), "emotions": order,
            "row": row}


def told_emotions_sheet(animator, corpus_dir: Path, clips: pd.DataFrame, out_png: Path, base: BaseParams,
                        p: GenerateParams, *, actor: str | None = None) -> dict:
    """The `--emotion` sheet: the sheet actor's neutral photo and ONE speech clip (the sheet sentence said
    neutrally), rendered once per emotion of the model with `--emotion NAME` (intensity 1). Same rows and
    columns as `emotions_sheet`, so the two sheets side by side separate what the memory and the renderer show
    when the emotion is known from what the audio emotion encoder recognises."""
    from pipeline.core.media import load_audio
    from pipeline.render.generate import animate_clip, filter_settings

    chosen = sheet_clips(clips, actor).set_index("emotion")
    speech = chosen.loc["neutral"] if "neutral" in chosen.index else chosen.iloc[0]
    samples = load_audio(Path(corpus_dir) / speech.wav_path, base.sample_rate)
    reference = _resize(_reference(str(corpus_dir), str(speech.actor))[None], animator.image_size)[0]
    size = int(open_store(Path(corpus_dir) / "frames.zarr")["frames"].shape[1])
    order = [e for e in _sheet_order(chosen.index) if e in animator.emotions]

    def generated(emotion: str) -> list[np.ndarray]:
        frames = animate_clip(animator, reference, samples, int(speech.frames), fps=base.fps,
                              filter_settings=filter_settings(p), block_frames=p.block_frames, emotion=emotion,
                              batch_size=p.batch_size, bf16=resolve_precision(base.precision, animator.device).bf16)
        picks = np.linspace(0, len(frames) - 1, p.sheet_frames).round().astype(int)
        return list(_resize(np.ascontiguousarray(frames[picks]), size))

    _write_sheet(out_png, corpus_dir, chosen.loc[order], order, generated, "told", size)
    return {"actor": str(speech.actor), "sentence_id": int(speech.sentence_id), "speech": str(speech.clip_id),
            "emotions": order, "intensity": 1.0}


def _sheet_order(emotions) -> list[str]:
    """MEAD's order (neutral first), unknown names after."""
    known = {e: i for i, e in enumerate(MEAD_EMOTIONS)}
    return sorted(emotions, key=lambda e: (known.get(e, len(known)), e))


def _write_sheet(out_png: Path, corpus_dir: Path, chosen: pd.DataFrame, order: list[str], generated,
                 column_title: str, size: int) -> None:
    """One row per emotion: its label, the actor's reference, `generated(emotion)`'s frames, the real frame at the
    middle of that emotion's corpus clip; a title strip on top."""
    actor, sentence = str(chosen.actor.iloc[0]), int(chosen.sentence_id.iloc[0])
    corpus_frames = open_store(corpus_dir / "frames.zarr")["frames"]
    reference = _resize(_reference(str(corpus_dir), actor)[None], size)[0]
    lines = []
    for emotion in order:
        clip = chosen.loc[emotion]
        cells = [_label(np.full((size, size, 3), 255, np.uint8), f"{emotion} l{int(clip.level)}"), reference]
        cells += generated(emotion)
        cells.append(_resize(corpus_frames[(int(clip.start) + int(clip.stop)) // 2][None], size)[0])
        lines.append(np.concatenate(cells, axis=1))
    width = lines[0].shape[1] // size
    titles = [f"{actor} s{sentence}", "reference", *[column_title] * (width - 3), "real (mid)"]
    header = np.full((16, size * width, 3), 255, np.uint8)
    for j, title in enumerate(titles):
        cv2.putText(header, title, (size * j + 3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    write_png(out_png, np.concatenate([header, *lines], axis=0))


def _run_task(args: tuple) -> dict:
    task, base, p = args
    return generate_clip(task, base, p)


def build_outputs(corpus_dir: Path, audio_store: Path, models_dir: Path, out_dir: Path, report: Path, sheet: Path,
                  base: BaseParams, p: GenerateParams, log=print, told_sheet: Path | None = None,
                  prosody_store: Path = DEFAULT_PROSODY_STORE) -> dict:
    """Every (row, held-out clip) into out_dir (frames.zarr + mp4s, atomically), the sheet and the report; with
    `told_sheet`, also the `--emotion` sheet (pipeline.render.generate_set.told_emotions_sheet)."""
    manifest_path = corpus_dir / "manifest.parquet"
    if not manifest_path.is_file():
        raise InputError(manifest_path, "corpus manifest not found (run the corpus stage first)")
    clips = heldout_clips(pd.read_parquet(manifest_path), p.max_clips, keep_sheet=True, sheet_actor=p.sheet_actor)
    renderer = models_dir / "emmn_render.pt"
    models = {"emmn": models_dir / "emmn.pt", "wav2lip_only": models_dir / "wav2lip.pt",
              **{row: Path(path) for row, path in p.variant_models.items()}}
    rows, skipped = plan_rows(p, models, log)
    if any(r in ("emmn", "baseline", "mmn") for r in rows) and not renderer.is_file():
        raise InputError(renderer, "stage-2 renderer not found (run finetune_render first)")
    audio_index = read_index(audio_store).set_index("clip_id")
    missing = sorted(set(clips.clip_id) - set(audio_index.index))
    if missing:
        raise InputError(audio_store, f"clip '{missing[0]}' has no audio features (re-run audio_features)")
    size = int(open_store(corpus_dir / "frames.zarr")["frames"].shape[1])
    clip_ids = [output_clip_id(row, c) for row in rows for c in clips.clip_id]
    lengths = [int(f) for _ in rows for f in clips.frames]
    attrs = {"schema": SCHEMA, "stage": "generate", "rows": rows, "skipped_rows": skipped,
             "params": recorded_params("generate", base, p),
             "frames": "RGB uint8 at the corpus frame size; clip id <row>/<corpus clip id>, as long as that clip"}
    precision = resolve_precision(base.precision, pick_device(base.device))
    announce_precision(precision, "generate", log)
    attrs["precision"] = precision.resolved
    t0 = time.monotonic()
    seconds = {row: 0.0 for row in rows}
    with atomic_output(out_dir) as tmp:
        writer = RaggedStoreWriter(tmp / "frames.zarr", clip_ids, lengths,
                                   {"frames": ArraySpec((size, size, 3), "uint8", ("y", "x", "channel"))},
                                   attrs=attrs, chunk_frames=p.chunk_frames, shard_frames=p.shard_frames)
        with dask_client(base.workers, base.scheduler_address) as client:
            tasks = []
            for row in rows:
                for c in clips.itertuples():
                    a = audio_index.loc[c.clip_id]
                    model = models.get(row)
                    tasks.append((ClipTask(
                        row, c.clip_id, c.actor, int(c.start), int(c.stop), int(a.start), int(a.stop),
                        str(corpus_dir / c.wav_path), str(corpus_dir), str(audio_store), str(prosody_store),
                        None if model is None else str(model),
                        str(renderer) if row in ("emmn", "baseline", "mmn") else None,
                        str(tmp / row / f"{c.clip_id}.mp4"), base.device, client is not None), base, p))
            for i, result in enumerate(ordered_map(_run_task, tasks, client=client,
                                                   window=2 * max(base.workers, 1), description="generate")):
                writer.write_clip(i, {"frames": result["frames"]})
                seconds[tasks[i][0].row] += result["seconds"]
        writer.close()
        sheet_info = emotions_sheet(tmp / "frames.zarr", corpus_dir, clips, sheet, actor=p.sheet_actor,
                                    columns=p.sheet_frames)
    told_info = None
    if told_sheet is not None:
        from pipeline.render.generate import load_animator

        animator = load_animator(models["emmn"], renderer, pick_device(base.device))
        told_info = told_emotions_sheet(animator, corpus_dir, clips, told_sheet, base, p, actor=p.sheet_actor)
    frames = int(clips.frames.sum())
    summary = {
        "rows": rows, "skipped_rows": skipped, "clips": len(clips), "frames_per_row": frames,
        "actors": sorted(clips.actor.unique()), "renderer": str(renderer), "precision": precision.resolved,
        "filter": p.filter, "sheet": sheet_info, "told_sheet": told_info,
    }
    timings = {"seconds": round(time.monotonic() - t0, 1),
               "ms_per_frame": {row: round(1000 * s / max(frames, 1), 2) for row, s in seconds.items()}}
    write_json(report, summary)
    write_timings(report, timings)
    log(f"generate: {len(rows)} rows x {len(clips)} clips ({frames} frames each) -> {out_dir} "
        f"in {timings['seconds']}s; ms/frame {timings['ms_per_frame']}")
    return summary
