"""Ingest a real MEAD folder into the same outputs as the built-in corpus.

MEAD layout: `<actor>/video/front/<emotion>/level_<k>/<nnn>.mp4` and
`<actor>/audio/<emotion>/level_<k>/<nnn>.m4a`. Each clip gets one stable square face crop, is
resized to the profile size and resampled to 25 fps; audio becomes 16 kHz mono cut to the video.
Only `corpus.emotions` at `corpus.levels` are taken (neutral has level 1 only, as in the built-in corpus).
Clips that lack their video or audio (MEAD has gaps), and clips that cannot be used (a video that cannot
be read or is cut off, no face, audio without samples) are listed in `missing.parquet` with the reason and
skipped; only a tree with no usable clip at all is an error.

Each clip is decoded twice, frame by frame from an ffmpeg pipe, never whole: a first pass checks the file
(every frame decodes, as many as the header says), keeps a few evenly spaced frames (shrunk to the
detector's size) to place the crop box and counts the frames; the second crops and resizes each frame as it
arrives. Memory does not grow with clip length or resolution (a 1080p MEAD clip is 6 MB a frame).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.core.config import BaseParams, CorpusParams
from pipeline.core.errors import InputError
from pipeline.core.media import (
    iter_video_frames,
    load_audio,
    resample_frame_indices,
    video_info,
    write_wav,
)
from pipeline.core.parallel import dask_client, ordered_map
from pipeline.core.store import ArraySpec, RaggedStoreWriter, write_parquet
from pipeline.corpus.builtin import store_attrs
from pipeline.corpus.face_detect import DETECT_MAX_SIDE, crop_resize, stable_crop_box
from pipeline.corpus.plan import clip_name
from pipeline.corpus.references import write_reference_frames

LEVEL_DIR = re.compile(r"^level_(\d+)$")
MISSING_COLUMNS = ["actor", "emotion", "level", "clip", "missing", "reason"]
BOX_SAMPLES = 8  # frames per clip the crop box is placed on


@dataclass(frozen=True)
class VideoClip:
    """One real clip to ingest (MEAD or LRW): its video, its audio (the same file when the audio is muxed in)."""

    clip_id: str
    actor: str
    emotion: str
    level: int
    number: int
    video: Path
    audio: Path
    split: str
    text: str = ""


def scan_mead(root: str | Path, p: CorpusParams) -> tuple[list[VideoClip], pd.DataFrame]:
    """Every clip with both video and audio, and a table of what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "MEAD root not found")
    actors = sorted(d.name for d in root.iterdir() if (d / "video").is_dir() or (d / "audio").is_dir())
    if not actors:
        raise InputError(root, "not a MEAD tree (expected <actor>/video/front/<emotion>/level_<k>/<nnn>.mp4)")
    if p.mead_actors:
        actors = [a for a in actors if a in set(p.mead_actors)]
    clips, missing = [], []
    for actor in actors:
        front = root / actor / "video" / "front"
        if not front.is_dir():
            missing.append({"actor": actor, "emotion": "", "level": 0, "clip": 0, "missing": "front video view",
                            "reason": f"{front}: no front view"})
            continue
        for emotion in p.emotions:
            wanted = {1} if emotion == "neutral" else set(p.levels)  # as the built-in corpus (corpus.plan)
            levels = set()
            for base in (front / emotion, root / actor / "audio" / emotion):
                if base.is_dir():
                    levels |= {int(m.group(1)) for d in base.iterdir() if (m := LEVEL_DIR.match(d.name))}
            levels &= wanted
            if not levels:
                missing.append({"actor": actor, "emotion": emotion, "level": 0, "clip": 0, "missing": "emotion",
                                "reason": f"{root / actor}: no {emotion} clips at levels {sorted(wanted)}"})
            for level in sorted(levels):
                vdir = front / emotion / f"level_{level}"
                adir = root / actor / "audio" / emotion / f"level_{level}"
                videos = {int(f.stem): f for f in vdir.glob("*.mp4") if f.stem.isdigit()} if vdir.is_dir() else {}
                audios = {int(f.stem): f for f in adir.glob("*.m4a") if f.stem.isdigit()} if adir.is_dir() else {}
                numbers = sorted(set(videos) | set(audios))
                if p.mead_max_clips_per_emotion:
                    numbers = numbers[: p.mead_max_clips_per_emotion]
                for n in numbers:
                    if n not in videos or n not in audios:
                        there, lacking = (audios[n], "video") if n not in videos else (videos[n], "audio")
                        missing.append({"actor": actor, "emotion": emotion, "level": level, "clip": n,
                                        "missing": lacking, "reason": f"{there}: no matching {lacking} file"})
                        continue
                    split = "test" if actor in set(p.mead_test_actors) else "train"
                    clips.append(VideoClip(clip_name(actor, emotion, level, n), actor, emotion, level, n,
                                          videos[n], audios[n], split))
    if not clips:
        raise InputError(root, "no MEAD clip with both video and audio found")
    return clips, pd.DataFrame(missing, columns=MISSING_COLUMNS)


def probe_clip(task: tuple) -> dict:
    """Worker, first pass: check one clip's files and place its crop box.

    Returns {"frames": output frame count at `fps`, "box": (x0, y0, side)}, or {"reason": one line} when
    the clip cannot be used (the ingest skips it).
    """
    clip, fps, sample_rate = task
    try:
        info = video_info(clip.video)
        shrink = min(1.0, DETECT_MAX_SIDE / max(info.width, info.height))
        wanted = set(np.linspace(0, info.frames - 1, min(BOX_SAMPLES, info.frames)).astype(int).tolist())
        kept, count = [], 0
        for i, frame in enumerate(iter_video_frames(clip.video, info)):  # checks the whole stream
            if i in wanted:  # the detector scans at most DETECT_MAX_SIDE px anyway
                kept.append(cv2.resize(frame, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
                            if shrink < 1 else frame.copy())
            count = i + 1
        x0, y0, side = stable_crop_box(kept, source=clip.video, samples=len(kept))
        audio = load_audio(clip.audio, sample_rate)
        if not np.any(audio):
            raise InputError(clip.audio, "audio has no samples (or only silence)")
    except InputError as exc:
        return {"reason": str(exc)}
    box = (round(x0 / shrink), round(y0 / shrink), round(side / shrink))
    return {"frames": len(resample_frame_indices(count, info.fps, fps)), "source_frames": count, "box": box}


def ingest_clip(task: tuple) -> dict[str, np.ndarray]:
    """Worker, second pass: crop, resize and resample one clip's frames as they are decoded; its audio to
    16 kHz mono of matching length."""
    clip, probe, size, fps, sample_rate, wav_out = task
    n_frames, box = probe["frames"], tuple(probe["box"])
    info = video_info(clip.video)
    idx = resample_frame_indices(probe["source_frames"], info.fps, fps)
    out = np.empty((n_frames, size, size, 3), np.uint8)
    j = 0
    for i, frame in enumerate(iter_video_frames(clip.video, info)):
        if j < n_frames and idx[j] == i:
            crop = crop_resize(frame, box, size)
            while j < n_frames and idx[j] == i:  # 30 -> 25 fps never repeats a frame; other rates may
                out[j] = crop
                j += 1
    if j < n_frames:
        raise InputError(clip.video, f"changed since it was checked: {j} of {n_frames} frames decoded")
    audio = load_audio(clip.audio, sample_rate)
    need = int(round(n_frames * sample_rate / fps))
    write_wav(wav_out, np.pad(audio, (0, max(0, need - len(audio))))[:need], sample_rate)
    nan = np.full((n_frames, 68, 2), np.nan, dtype=np.float32)
    return {"frames": out, "landmarks": nan, "landmarks_frontal": nan, "crop_box": np.asarray(box)}


@dataclass
class Ingested:
    """What `ingest_videos` wrote: the usable clips in store order with their store rows and crop boxes, the
    reference frame of each actor and the table of skipped clips."""

    clips: list[VideoClip]
    starts: list[int]
    stops: list[int]
    boxes: list[np.ndarray]
    references: dict[str, np.ndarray]
    missing: pd.DataFrame


def ingest_videos(out_dir: Path, found: list[VideoClip], missing: pd.DataFrame, base: BaseParams, p, stage: str,
                  source: str, root: str | Path, log=lambda line: print(line, file=sys.stderr)) -> Ingested:
    """Check, crop and write real `source` clips (mead, lrw) into out_dir/frames.zarr and out_dir/wav at the size
    and chunking of params section `p` of `stage`; clips that cannot be used join `missing` with the reason; an
    error only when none is usable (naming `root`). References: the first frame of each actor's first neutral
    clip, else of its first clip."""
    (out_dir / "wav").mkdir(parents=True, exist_ok=True)
    name, label, size = stage, source.upper(), p.size
    with dask_client(base.workers, base.scheduler_address) as client:
        probes = list(ordered_map(probe_clip, [(c, base.fps, base.sample_rate) for c in found], client=client,
                                  description=f"{name}: checking {label} clips"))
        unusable = [{"actor": c.actor, "emotion": c.emotion, "level": c.level, "clip": c.number,
                     "missing": "unusable", "reason": r["reason"]} for c, r in zip(found, probes) if "reason" in r]
        for row in unusable:
            log(f"{name}: skipped {row['reason']}")
        if len(unusable) == len(found):
            raise InputError(root, f"no usable {label} clip: all {len(found)} skipped (first: {unusable[0]['reason']})")
        if unusable:
            missing = pd.concat([missing, pd.DataFrame(unusable, columns=MISSING_COLUMNS)], ignore_index=True)
        clips = [c for c, r in zip(found, probes) if "reason" not in r]
        probes = [r for r in probes if "reason" not in r]
        lengths = [r["frames"] for r in probes]
        writer = RaggedStoreWriter(
            out_dir / "frames.zarr", [c.clip_id for c in clips], lengths,
            {"frames": ArraySpec((size, size, 3), "uint8", ("y", "x", "rgb")),
             "landmarks": ArraySpec((68, 2), "float32", ("point", "xy")),
             "landmarks_frontal": ArraySpec((68, 2), "float32", ("point", "xy"))},
            attrs=store_attrs(stage, base, p, source, []), chunk_frames=p.chunk_frames, shard_frames=p.shard_frames)
        tasks = [(c, r, size, base.fps, base.sample_rate, out_dir / "wav" / f"{c.clip_id}.wav")
                 for c, r in zip(clips, probes)]
        boxes = []
        references: dict[str, np.ndarray] = {}
        has_neutral: set[str] = set()
        results = ordered_map(ingest_clip, tasks, client=client, description=f"{name}: {label} clips")
        for i, result in enumerate(results):
            writer.write_clip(i, result)
            boxes.append(result["crop_box"])
            clip = clips[i]
            if clip.actor not in references or (clip.emotion == "neutral" and clip.actor not in has_neutral):
                references[clip.actor] = result["frames"][0]
                if clip.emotion == "neutral":
                    has_neutral.add(clip.actor)
    writer.close()
    actor_ids = sorted(references)
    write_reference_frames(out_dir, actor_ids, np.stack([references[a] for a in actor_ids]))
    return Ingested(clips, list(writer.starts), list(writer.stops), boxes, references, missing)


def real_manifest(done: Ingested, fps: float) -> pd.DataFrame:
    """The manifest rows of ingested real clips (the corpus manifest's columns plus source video and crop)."""
    return pd.DataFrame([{
        "clip_id": c.clip_id, "actor": c.actor, "emotion": c.emotion, "level": c.level,
        "sentence_id": c.number, "text": c.text, "frames": int(e - s), "fps": fps, "split": c.split, "kind": "real",
        "source_clip_id": c.clip_id, "start": int(s), "stop": int(e), "wav_path": f"wav/{c.clip_id}.wav",
        "frames_store": "frames.zarr", "source_video": str(c.video), "crop_x": int(b[0]), "crop_y": int(b[1]),
        "crop_side": int(b[2]),
    } for c, s, e, b in zip(done.clips, done.starts, done.stops, done.boxes)])


def write_real_tables(out_dir: Path, done: Ingested, fps: float, test_actors: set[str]) -> pd.DataFrame:
    """manifest, missing, (empty) phonemes and actors tables of an ingest; return the manifest."""
    manifest = real_manifest(done, fps)
    write_parquet(manifest, out_dir / "manifest.parquet")
    write_parquet(done.missing, out_dir / "missing.parquet")
    write_parquet(pd.DataFrame(columns=["clip_id", "start_s", "end_s", "phoneme"]), out_dir / "phonemes.parquet")
    actor_ids = sorted(done.references)
    write_parquet(pd.DataFrame({"actor_id": actor_ids, "split": [
        "test" if a in test_actors else "train" for a in actor_ids]}), out_dir / "actors.parquet")
    return manifest


def ingest_mead(out_dir: str | Path, base: BaseParams, p: CorpusParams,
                log=lambda line: print(line, file=sys.stderr)) -> pd.DataFrame:
    out_dir = Path(out_dir)
    found, missing = scan_mead(p.mead_root, p)
    done = ingest_videos(out_dir, found, missing, base, p, "corpus", "mead", p.mead_root, log)
    return write_real_tables(out_dir, done, base.fps, set(p.mead_test_actors))
