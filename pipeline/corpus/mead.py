"""Ingest a real MEAD folder into the same outputs as the built-in corpus.

MEAD layout: `<actor>/video/front/<emotion>/level_<k>/<nnn>.mp4` and
`<actor>/audio/<emotion>/level_<k>/<nnn>.m4a`. Each clip gets one stable square face crop, is
resized to the profile size and resampled to 25 fps; audio becomes 16 kHz mono cut to the video.
Clips that lack their video or audio (MEAD has gaps) are listed in `missing.parquet` and skipped;
a clip that exists but cannot be read is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.audio import load_audio
from pipeline.config import BaseParams, CorpusParams, as_dict
from pipeline.corpus.plan import clip_name
from pipeline.errors import InputError
from pipeline.face_detect import crop_resize, stable_crop_box
from pipeline.media import read_video, resample_frame_indices, write_wav
from pipeline.parallel import dask_client, ordered_map
from pipeline.corpus.references import write_reference_frames
from pipeline.store import ArraySpec, RaggedStoreWriter

SCHEMA = "emmn.corpus/v1"
LEVEL_DIR = re.compile(r"^level_(\d+)$")


@dataclass(frozen=True)
class MeadClip:
    clip_id: str
    actor: str
    emotion: str
    level: int
    number: int
    video: Path
    audio: Path
    split: str


def scan_mead(root: str | Path, p: CorpusParams) -> tuple[list[MeadClip], pd.DataFrame]:
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
            missing.append({"actor": actor, "emotion": "", "level": 0, "clip": 0, "missing": "front video view"})
            continue
        for emotion in p.emotions:
            levels = set()
            for base in (front / emotion, root / actor / "audio" / emotion):
                if base.is_dir():
                    levels |= {int(m.group(1)) for d in base.iterdir() if (m := LEVEL_DIR.match(d.name))}
            if not levels:
                missing.append({"actor": actor, "emotion": emotion, "level": 0, "clip": 0, "missing": "emotion"})
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
                        missing.append({"actor": actor, "emotion": emotion, "level": level, "clip": n,
                                        "missing": "video" if n not in videos else "audio"})
                        continue
                    split = "test" if actor in set(p.mead_test_actors) else "train"
                    clips.append(MeadClip(clip_name(actor, emotion, level, n), actor, emotion, level, n,
                                          videos[n], audios[n], split))
    if not clips:
        raise InputError(root, "no MEAD clip with both video and audio found")
    return clips, pd.DataFrame(missing, columns=["actor", "emotion", "level", "clip", "missing"])


def planned_frames(clip: MeadClip, fps: float) -> int:
    """Frame count after resampling, from the container header (the writer needs lengths up front)."""
    cap = cv2.VideoCapture(str(clip.video))
    n, src_fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), float(cap.get(cv2.CAP_PROP_FPS) or 0)
    cap.release()
    if n <= 0 or src_fps <= 0:
        raise InputError(clip.video, "unreadable video (no frame count or frame rate)")
    return len(resample_frame_indices(n, src_fps, fps))


def ingest_clip(task: tuple) -> dict[str, np.ndarray]:
    """Worker: crop, resize and resample one clip's frames; its audio to 16 kHz mono of matching length."""
    clip, n_frames, size, fps, sample_rate, wav_out = task
    frames, src_fps = read_video(clip.video)
    box = stable_crop_box(frames, source=clip.video)
    idx = resample_frame_indices(len(frames), src_fps, fps)
    idx = np.pad(idx, (0, max(0, n_frames - len(idx))), mode="edge")[:n_frames]  # header count may be off by one
    out = np.stack([crop_resize(frames[i], box, size) for i in idx])
    audio = load_audio(clip.audio, sample_rate)
    if not np.any(audio):
        raise InputError(clip.audio, "audio has no samples (or only silence)")
    need = int(round(n_frames * sample_rate / fps))
    write_wav(wav_out, np.pad(audio, (0, max(0, need - len(audio))))[:need], sample_rate)
    nan = np.full((n_frames, 68, 2), np.nan, dtype=np.float32)
    return {"frames": out, "landmarks": nan, "landmarks_frontal": nan, "crop_box": np.asarray(box)}


def ingest_mead(out_dir: str | Path, base: BaseParams, p: CorpusParams) -> pd.DataFrame:
    out_dir = Path(out_dir)
    (out_dir / "wav").mkdir(parents=True, exist_ok=True)
    clips, missing = scan_mead(p.mead_root, p)
    lengths = [planned_frames(c, base.fps) for c in clips]
    attrs = {"schema": SCHEMA, "stage": "corpus", "params": {"base": as_dict(base), "corpus": as_dict(p)},
             "fps": base.fps, "size": p.size, "render_params": [], "source": "mead"}
    writer = RaggedStoreWriter(
        out_dir / "frames.zarr", [c.clip_id for c in clips], lengths,
        {"frames": ArraySpec((p.size, p.size, 3), "uint8", ("y", "x", "rgb")),
         "landmarks": ArraySpec((68, 2), "float32", ("point", "xy")),
         "landmarks_frontal": ArraySpec((68, 2), "float32", ("point", "xy"))},
        attrs=attrs, chunk_frames=p.chunk_frames, shard_frames=p.shard_frames)
    tasks = [(c, n, p.size, base.fps, base.sample_rate, out_dir / "wav" / f"{c.clip_id}.wav")
             for c, n in zip(clips, lengths)]
    boxes = []
    references: dict[str, np.ndarray] = {}  # first frame of the actor's first neutral clip, else first clip
    has_neutral: set[str] = set()
    with dask_client(base.workers, base.scheduler_address) as client:
        for i, result in enumerate(ordered_map(ingest_clip, tasks, client=client, description="corpus: MEAD clips")):
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

    manifest = pd.DataFrame([{
        "clip_id": c.clip_id, "actor": c.actor, "emotion": c.emotion, "level": c.level,
        "sentence_id": c.number, "text": "", "frames": n, "fps": base.fps, "split": c.split, "kind": "real",
        "source_clip_id": c.clip_id, "start": int(s), "stop": int(e), "wav_path": f"wav/{c.clip_id}.wav",
        "frames_store": "frames.zarr", "source_video": str(c.video), "crop_x": int(b[0]), "crop_y": int(b[1]),
        "crop_side": int(b[2]),
    } for c, n, s, e, b in zip(clips, lengths, writer.starts, writer.stops, boxes)])
    manifest.to_parquet(out_dir / "manifest.parquet", index=False)
    missing.to_parquet(out_dir / "missing.parquet", index=False)
    pd.DataFrame(columns=["clip_id", "start_s", "end_s", "phoneme"]).to_parquet(out_dir / "phonemes.parquet",
                                                                                 index=False)
    pd.DataFrame({"actor_id": actor_ids, "split": [
        "test" if a in set(p.mead_test_actors) else "train" for a in actor_ids]}).to_parquet(
        out_dir / "actors.parquet", index=False)
    return manifest
