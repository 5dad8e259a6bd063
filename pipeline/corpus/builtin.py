"""Generate the built-in MEAD-shaped corpus: speech, control tracks, rendered frames, ground truth.

Outputs (under `out_dir`):
  frames.zarr       per-frame `frames` (F,H,W,3) uint8, `landmarks` (F,68,2) image px,
                    `landmarks_frontal` (F,68,2) (head pose removed), `render_params` (F,C) with C named
                    in the attributes; `reference_frames`/`reference_landmarks` (A,...) neutral frame per actor;
                    per-clip index.
  wav/<clip>.wav    16 kHz mono PCM, exactly frames * 640 samples long
  reference/<actor>.png
  manifest.parquet  one row per clip
  phonemes.parquet  espeak phoneme events per real clip (the timing truth behind the visemes)
  actors.parquet    actor id, split, voice, identity seed
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.core.config import BaseParams, CorpusParams, recorded_params
from pipeline.core.media import write_wav
from pipeline.core.parallel import dask_client, ordered_map
from pipeline.core.store import ArraySpec, RaggedStoreWriter, write_parquet
from pipeline.corpus.controls import ALL_CONTROLS
from pipeline.corpus.emotions import intensity, style
from pipeline.corpus.face import render_frame, sample_identity
from pipeline.corpus.plan import Actor, ClipSpec, clip_name, plan_corpus
from pipeline.corpus.references import write_reference_frames
from pipeline.corpus.sentences import SENTENCES
from pipeline.corpus.speech import synthesize
from pipeline.corpus.tracks import clip_controls, neutral_controls, speech_nods
from pipeline.corpus.visemes import viseme_tracks

SCHEMA = "emmn.corpus/v1"


def speak(actor: Actor, emotion: str, level: int, sentence_id: int):
    """The clip's speech: the actor's voice with the emotion's prosody scaled by the level."""
    return emotional_speech(SENTENCES[sentence_id], emotion, level, variant=actor.voice_variant, pitch=actor.pitch,
                            pitch_range=actor.pitch_range, rate=actor.rate)


def emotional_speech(text: str, emotion: str, level: int, *, variant: str, pitch: float, pitch_range: float,
                     rate: float, accent: str = "en"):
    """`text` in one voice (espeak accent + variant, base pitch/range/rate) with the emotion's prosody
    scaled by the level."""
    pros, k = style(emotion).prosody, intensity(level)
    return synthesize(
        text,
        voice=accent,
        variant=variant,
        pitch=int(np.clip(round(pitch + pros.pitch * k), 0, 99)),
        pitch_range=int(np.clip(round(pitch_range + pros.pitch_range * k), 0, 99)),
        rate=int(round(rate * (1.0 + (pros.rate - 1.0) * k))),
        volume=int(np.clip(round(100 * (1.0 + (pros.volume - 1.0) * k)), 10, 200)),
    )


def write_speech(wav_path: Path, clip_id: str, speech, base: BaseParams,
                 max_frames: int = 0, rng: np.random.Generator | None = None) -> tuple[dict, np.ndarray, list[dict]]:
    """Write a clip's wav (whole video frames long) and return its viseme tracks, speech nods and phoneme rows.

    `max_frames` > 0 keeps only a window that long (LRW's clips are 29 frames cut from running speech),
    placed around the middle of the speech, shifted by up to half the slack with `rng`. Visemes and nods are
    computed over the whole utterance first, so the window keeps the coarticulation of its cut-off
    neighbours; phoneme rows are shifted to the window and clipped to it."""
    samples_per_frame = base.sample_rate / base.fps
    n_frames = int(len(speech.samples) // samples_per_frame)
    visemes = viseme_tracks(speech.phonemes, n_frames, fps=base.fps)
    nods = speech_nods(speech.phonemes, n_frames, base.fps)
    first = 0
    if 0 < max_frames < n_frames:
        spoken = [ev for ev in speech.phonemes if ev.phoneme != "_"] or speech.phonemes
        middle = (spoken[0].start_s + spoken[-1].end_s) / 2 * base.fps if spoken else n_frames / 2
        slack = n_frames - max_frames
        jitter = (rng.uniform(-0.5, 0.5) * slack / 2) if rng is not None else 0.0
        first = int(np.clip(round(middle - max_frames / 2 + jitter), 0, slack))
        n_frames = max_frames
        visemes = {name: track[first: first + n_frames] for name, track in visemes.items()}
        nods = nods[first: first + n_frames]
    start = int(round(first * samples_per_frame))
    write_wav(wav_path, speech.samples[start: start + int(round(n_frames * samples_per_frame))], base.sample_rate)
    events = [(ev.start_s, ev.end_s, ev.phoneme) for ev in speech.phonemes]
    if 0 < max_frames:
        offset, end = first / base.fps, n_frames / base.fps
        events = [(max(a - offset, 0.0), min(b - offset, end), ph)
                  for a, b, ph in events if b > offset and a - offset < end]
    rows = [{"clip_id": clip_id, "start_s": a, "end_s": b, "phoneme": ph} for a, b, ph in events]
    return visemes, nods, rows


def render_clip(task: tuple) -> dict[str, np.ndarray]:
    """Worker: draw every frame of one clip from its identity and control matrix."""
    identity, controls, size = task
    cv2.setNumThreads(1)  # one worker process per core already; OpenCV's own pool would oversubscribe
    frames, lms, frontal = [], [], []
    for row in controls:
        r = render_frame(identity, dict(zip(ALL_CONTROLS, row.tolist())), size=size)
        frames.append(r.image)
        lms.append(r.landmarks)
        frontal.append(r.landmarks_frontal)
    return {"frames": np.stack(frames), "landmarks": np.stack(lms).astype(np.float32),
            "landmarks_frontal": np.stack(frontal).astype(np.float32), "render_params": controls}


def generate_builtin(out_dir: str | Path, base: BaseParams, p: CorpusParams) -> pd.DataFrame:
    """Write the whole corpus into out_dir (which should be a fresh temp dir); return the manifest."""
    out_dir = Path(out_dir)
    (out_dir / "wav").mkdir(parents=True, exist_ok=True)
    actors, clips = plan_corpus(p, base.seed)
    by_id = {a.actor_id: a for a in actors}
    identities = {a.actor_id: sample_identity(np.random.default_rng(a.identity_seed)) for a in actors}

    # 1. speech for every real clip (fast, in-process: espeak holds global state)
    visemes, nods, phoneme_rows = {}, {}, []
    for clip in clips:
        if clip.kind != "real":
            continue
        speech = speak(by_id[clip.actor_id], clip.emotion, clip.level, clip.sentence_id)
        visemes[clip.audio_key], nods[clip.audio_key], rows = write_speech(
            out_dir / "wav" / f"{clip.clip_id}.wav", clip.clip_id, speech, base)
        phoneme_rows += rows

    # 2. control tracks (counterfactuals: source clip's seed and nods, other sentence's visemes)
    by_clip = {c.clip_id: c for c in clips}
    controls = []
    for clip in clips:
        actor = by_id[clip.actor_id]
        controls.append(clip_controls(
            seed=clip.track_seed, emotion=clip.emotion, level=clip.level, visemes=visemes[clip.audio_key],
            fps=base.fps, blink_rate=p.blink_rate, actor_expressiveness=dict(actor.expressiveness),
            nods=nods[by_clip[clip.source_clip_id].audio_key], head_speech_coupling=p.head_speech_coupling))

    # 3. render in parallel, one writer streaming shards in clip order
    writer = render_store(out_dir / "frames.zarr", [c.clip_id for c in clips],
                          [(identities[c.actor_id], ctrl, p.size) for c, ctrl in zip(clips, controls)],
                          "corpus", base, p)

    write_references(out_dir, [a.actor_id for a in actors], identities, p.size)

    # 4. tables
    manifest = pd.DataFrame([{
        "clip_id": c.clip_id, "actor": c.actor_id, "emotion": c.emotion, "level": c.level,
        "sentence_id": c.sentence_id, "text": SENTENCES[c.sentence_id], "frames": len(ctrl), "fps": base.fps,
        "split": c.split, "kind": c.kind, "source_clip_id": c.source_clip_id,
        "start": int(s), "stop": int(e),
        "wav_path": f"wav/{audio_clip_id(c)}.wav",
        "frames_store": "frames.zarr",
    } for c, ctrl, s, e in zip(clips, controls, writer.starts, writer.stops)])
    write_parquet(manifest, out_dir / "manifest.parquet")
    write_parquet(pd.DataFrame(phoneme_rows), out_dir / "phonemes.parquet")
    actor_rows = [{**{k: v for k, v in dataclasses.asdict(a).items() if k not in ("expressiveness", "sentence_ids")},
                   "sentence_ids": list(a.sentence_ids), "expressiveness": json.dumps(dict(a.expressiveness))}
                  for a in actors]
    write_parquet(pd.DataFrame(actor_rows), out_dir / "actors.parquet")
    return manifest


def store_attrs(stage: str, base: BaseParams, p, source: str, render_params: list[str]) -> dict:
    """Root attributes of a frames store in the corpus layout (corpus or wide set, rendered or ingested);
    `p` is the stage's params section (it has `size`)."""
    return {"schema": SCHEMA, "stage": stage, "params": recorded_params(stage, base, p),
            "fps": base.fps, "size": p.size, "render_params": render_params, "source": source}


def render_store(store: Path, clip_ids: list[str], tasks: list[tuple], stage: str, base: BaseParams, p
                 ) -> RaggedStoreWriter:
    """Render every (identity, controls, size) task in parallel into a ragged frames store, in task order, with
    the size and chunking of params section `p` of `stage`; return the closed writer (its `starts`/`stops`
    index the clips)."""
    size = p.size
    writer = RaggedStoreWriter(
        store, clip_ids, [len(task[1]) for task in tasks],
        {"frames": ArraySpec((size, size, 3), "uint8", ("y", "x", "rgb")),
         "landmarks": ArraySpec((68, 2), "float32", ("point", "xy")),
         "landmarks_frontal": ArraySpec((68, 2), "float32", ("point", "xy")),
         "render_params": ArraySpec((len(ALL_CONTROLS),), "float32", ("param",))},
        attrs=store_attrs(stage, base, p, "builtin", list(ALL_CONTROLS)), chunk_frames=p.chunk_frames,
        shard_frames=p.shard_frames)
    with dask_client(base.workers, base.scheduler_address) as client:
        for i, result in enumerate(ordered_map(render_clip, tasks, client=client, window=4 * max(base.workers, 1),
                                               description=f"{stage}: rendering clips")):
            writer.write_clip(i, result)
    writer.close()
    return writer


def audio_clip_id(clip: ClipSpec) -> str:
    """The real clip whose wav a clip plays: itself, or for a counterfactual showing sentence b's mouth,
    the real clip (actor, emotion, level, b)."""
    return clip_name(clip.actor_id, clip.emotion, clip.level, clip.sentence_id)


def write_references(out_dir: Path, actor_ids: list[str], identities: dict, size: int) -> None:
    """One neutral, frontal, eyes-open, mouth-closed frame per actor: the reference image EMMN animates."""
    neutral = dict(zip(ALL_CONTROLS, neutral_controls().tolist()))
    rendered = [render_frame(identities[a], neutral, size=size) for a in actor_ids]
    write_reference_frames(out_dir, actor_ids, np.stack([r.image for r in rendered]),
                           np.stack([r.landmarks for r in rendered]))
