"""Tiny frozen parts (real AudioEncoders / MotionNet classes, seeded) and small synthetic stores laid out as the
upstream stages write them (manifest, frames.zarr references, keypoints.zarr, motion.zarr, audio.zarr), so
train_memory can be tested end to end in seconds without training the upstream models.

The synthetic clips carry signal: keypoints = the actor's neutral + an emotion offset on the upper keypoints +
a mouth opening that follows a per-frame "viseme" on the lower ones; the MFCC windows encode both (the viseme
in some coefficients, the emotion in others); f_e, f_m are the tiny MotionNet's encodings of the keypoints
(relative to the actor's neutral ones when its config says so).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import zarr

from pipeline.core.checkpoints import save_checkpoint
from pipeline.core.store import ArraySpec, RaggedStoreWriter
from pipeline.models.audio import AudioConfig, AudioEncoders
from pipeline.models.motion import MotionConfig, MotionNet, encode_frames

NUM_KP = 5
EMOTIONS = ("neutral", "happy", "sad")


def tiny_audio(seed: int = 0) -> AudioEncoders:
    torch.manual_seed(seed)
    config = AudioConfig.scaled(1 / 16, emotions=EMOTIONS, content_dim=8, emotion_dim=6)
    return AudioEncoders(config).eval()


def tiny_prosody_audio(seed: int = 0) -> AudioEncoders:
    """tiny_audio with a prosody branch (E_e also hears pitch/loudness relative to the voice baseline)."""
    torch.manual_seed(seed)
    config = AudioConfig.scaled(1 / 16, emotions=EMOTIONS, content_dim=8, emotion_dim=6, temporal_channels=8,
                                prosody_channels=4)
    model = AudioEncoders(config)
    model.set_voice_default(torch.tensor([80.0, -22.0]))
    return model.eval()


def tiny_motion(seed: int = 0) -> MotionNet:
    torch.manual_seed(seed)
    net = MotionNet(MotionConfig(num_kp=NUM_KP, expression_dim=6, mouth_dim=4, hidden=16, layers=1))
    torch.nn.init.normal_(net.decoder.net[-1].weight, std=0.1)  # not the all-zero "neutral" start
    return net.eval()


def save_audio(model: AudioEncoders, path: Path) -> Path:
    """In load_audio_encoders' layout."""
    save_checkpoint(path, model={"evp_audio": model.state_dict()},
                    config={"arch": "evp_audio", "model": model.config.to_dict()}, step=0)
    return path


def save_motion(model: MotionNet, path: Path) -> Path:
    """In load_motion's layout."""
    save_checkpoint(path, model={"motion": model.state_dict()}, config=model.config.as_dict(), step=0)
    return path


def _per_frame_store(path: Path, clip_ids: list[str], lengths: list[int], arrays: dict[str, np.ndarray]) -> None:
    specs = {name: ArraySpec(a.shape[1:], str(a.dtype), tuple(f"d{i}" for i in range(a.ndim - 1)))
             for name, a in arrays.items()}
    writer = RaggedStoreWriter(path, clip_ids, lengths, specs, attrs={"schema": "test"}, chunk_frames=8,
                               shard_frames=64)
    stops = np.cumsum(lengths)
    for i, (a, b) in enumerate(zip(stops - lengths, stops)):
        writer.write_clip(i, {name: arr[a:b] for name, arr in arrays.items()})
    writer.close()


def _add_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    root = zarr.open_group(path, mode="a")
    for name, data in arrays.items():
        if data.dtype.kind in "UO":
            arr = root.create_array(name, shape=data.shape, dtype=str)
            arr[:] = data.astype(str)
        else:
            root.create_array(name, data=data)


def _toy_clips(rng: np.random.Generator, actors: dict[str, str], emotions: dict[str, tuple[str, ...]],
               frames: int) -> tuple[pd.DataFrame, dict]:
    """Clips (every emotion of `emotions[actor]` x 2 sentences) and their keypoints, MFCC and prosody."""
    neutral = {a: (rng.uniform(-0.6, 0.6, (NUM_KP, 2)).astype(np.float32),
                   (np.eye(2) + rng.normal(0, 0.05, (NUM_KP, 2, 2))).astype(np.float32)) for a in actors}
    offsets = {"neutral": 0.0, "happy": 0.15, "sad": -0.15}
    rows = []
    for actor, split in actors.items():
        for emotion in emotions[actor]:
            for sentence in (0, 1):
                rows.append((f"{actor}_{emotion}_{sentence}", actor, emotion, 1 if emotion == "neutral" else 3,
                             sentence, split, "real"))
    clips = pd.DataFrame(rows, columns=["clip_id", "actor", "emotion", "level", "sentence_id", "split", "kind"])
    clips["frames"] = frames
    clips["stop"] = np.cumsum(clips.frames)
    clips["start"] = clips.stop - clips.frames
    total = int(clips.stop.iloc[-1])
    value = np.zeros((total, NUM_KP, 2), np.float32)
    jacobian = np.zeros((total, NUM_KP, 2, 2), np.float32)
    mfcc = rng.normal(0, 0.3, (total, 28, 12)).astype(np.float32)
    value_neu = np.zeros_like(value)
    jacobian_neu = np.zeros_like(jacobian)
    for clip in clips.itertuples():
        s = slice(clip.start, clip.stop)
        value_neu[s], jacobian_neu[s] = neutral[clip.actor]
        viseme = np.abs(np.sin(np.arange(clip.frames) * (0.5 + 0.2 * clip.sentence_id)))
        v, j = neutral[clip.actor]
        value[s] = v
        jacobian[s] = j
        value[s, :2, 1] += offsets[clip.emotion]  # upper keypoints: the emotion
        value[s, 3:, 1] += 0.2 * viseme[:, None]  # lower keypoints: the mouth
        mfcc[s, :, :4] += 2.0 * viseme[:, None, None]
        mfcc[s, :, 8:] += 10.0 * offsets[clip.emotion]
    voices = {a: [70.0 + 10 * i, -22.0] for i, a in enumerate(actors)}
    prosody = np.zeros((total, 4, 3), np.float32)
    for clip in clips.itertuples():
        s = slice(clip.start, clip.stop)
        prosody[s] = [voices[clip.actor][0] + 20 * offsets[clip.emotion], 1.0, -22.0 + 20 * offsets[clip.emotion]]
    arrays = {"value": value, "jacobian": jacobian, "value_neu": value_neu, "jacobian_neu": jacobian_neu,
              "mfcc": mfcc, "prosody": prosody, "neutral": neutral, "voices": voices}
    return clips, arrays


def _write_set(folder: Path, clips: pd.DataFrame, arrays: dict, motion: MotionNet, rng: np.random.Generator,
               paths: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    """manifest + frames.zarr (with neutral references) in `folder`, the motion/audio/prosody stores at `paths`;
    returns f_e, f_m."""
    folder.mkdir(parents=True)
    clips.assign(wav_path="", frames_store="frames.zarr").to_parquet(folder / "manifest.parquet")
    ids, lengths = list(clips.clip_id), list(clips.frames)
    actors = list(arrays["neutral"])
    images = rng.integers(0, 255, (len(actors), 32, 32, 3), dtype=np.uint8)
    total = int(clips.stop.iloc[-1])
    _per_frame_store(folder / "frames.zarr", ids, lengths, {"frames": np.zeros((total, 4, 4, 3), np.uint8)})
    _add_arrays(folder / "frames.zarr", {"reference_frames": images, "reference_actor": np.array(actors)})
    f_e, f_m = encode_frames(motion, arrays["value"], arrays["jacobian"], arrays["value_neu"], arrays["jacobian_neu"])
    _per_frame_store(paths["motion"], ids, lengths, {"f_e": f_e, "f_m": f_m})
    _per_frame_store(paths["audio"], ids, lengths, {"mfcc": arrays["mfcc"]})
    _per_frame_store(paths["prosody"], ids, lengths, {"prosody": arrays["prosody"]})
    zarr.open_group(paths["prosody"], mode="a").attrs["voices"] = arrays["voices"]
    return f_e, f_m


def build_stores(root: Path, motion: MotionNet, *, frames: int = 20, seed: int = 0, wide: bool = False
                 ) -> dict[str, Path]:
    """A MEAD-shaped toy corpus: train actors A1, A2 and held-out A3; every emotion x 2 sentences x level 1
    (neutral) or 3; also one counterfactual clip (must be ignored). Returns the paths train_memory reads.
    `wide`: also a wide set (identities W1-W4 training, W5 held out; neutral, W1 also happy; 12-frame clips) in
    root/wide with its wide_motion / wide_audio / wide_prosody stores, its clips after the corpus's in the one
    keypoint store (as keypoints.extra_frames puts them)."""
    rng = np.random.default_rng(seed)
    actors = {"A1": "train", "A2": "train", "A3": "test"}
    clips, arrays = _toy_clips(rng, actors, {a: EMOTIONS for a in actors}, frames)
    cf = pd.DataFrame([("A1_happy_0_cf1", "A1", "happy", 3, 1, "train", "counterfactual", frames)],
                      columns=["clip_id", "actor", "emotion", "level", "sentence_id", "split", "kind", "frames"])
    cf["start"], cf["stop"] = int(clips.stop.iloc[-1]), int(clips.stop.iloc[-1]) + frames
    clips = pd.concat([clips, cf], ignore_index=True)
    for name in ("value", "jacobian", "value_neu", "jacobian_neu", "mfcc", "prosody"):  # the counterfactual's rows
        arrays[name] = np.concatenate([arrays[name], arrays[name][:frames]])
    voices = {"A1": [80.0, -22.0], "A2": [90.0, -22.0], "A3": [70.0, -22.0]}
    arrays["voices"] = voices
    arrays["prosody"][:] = 0  # each actor's voice pitch plus the emotion's offset, voiced throughout
    offsets = {"neutral": 0.0, "happy": 0.15, "sad": -0.15}
    for clip in clips.itertuples():
        arrays["prosody"][clip.start:clip.stop] = [voices[clip.actor][0] + 20 * offsets[clip.emotion], 1.0,
                                                   -22.0 + 20 * offsets[clip.emotion]]
    paths = {"corpus": root / "corpus", "keypoints": root / "keypoints.zarr", "motion": root / "motion.zarr",
             "audio": root / "audio.zarr", "prosody": root / "prosody.zarr"}
    _write_set(paths["corpus"], clips, arrays, motion, rng, paths)
    ids, lengths = list(clips.clip_id), list(clips.frames)
    value, jacobian, neutral = arrays["value"], arrays["jacobian"], dict(arrays["neutral"])
    order = ["A3", "A1", "A2"]  # a different actor order than the frames store: lookups must go by name
    if wide:
        wide_actors = {"W1": "train", "W2": "train", "W3": "train", "W4": "train", "W5": "test"}
        wide_clips, wide_arrays = _toy_clips(rng, wide_actors, {a: ("neutral", "happy") if a == "W1" else
                                                                ("neutral",) for a in wide_actors}, 12)
        paths.update(wide=root / "wide", wide_motion=root / "wide_motion.zarr", wide_audio=root / "wide_audio.zarr",
                     wide_prosody=root / "wide_prosody.zarr")
        _write_set(paths["wide"], wide_clips, wide_arrays, motion, rng,
                   {"motion": paths["wide_motion"], "audio": paths["wide_audio"], "prosody": paths["wide_prosody"]})
        ids, lengths = ids + list(wide_clips.clip_id), lengths + list(wide_clips.frames)
        value = np.concatenate([value, wide_arrays["value"]])
        jacobian = np.concatenate([jacobian, wide_arrays["jacobian"]])
        neutral.update(wide_arrays["neutral"])
        order += list(wide_actors)
    _per_frame_store(paths["keypoints"], ids, lengths, {"value": value, "jacobian": jacobian})
    _add_arrays(paths["keypoints"], {"reference_value": np.stack([neutral[a][0] for a in order]),
                                     "reference_jacobian": np.stack([neutral[a][1] for a in order]),
                                     "reference_actor": np.array(order)})
    return paths


def wide_memory_inputs(root: Path) -> dict:
    """`build_stores(wide=True)` plus a saved tiny audio.pt and motion.pt and the wide set's `WideInputs`: what
    train_memory and pretrain_mouth read with the wide set."""
    from pipeline.memory.train import WideInputs

    motion = tiny_motion()
    paths: dict = build_stores(root, motion, wide=True)
    paths["audio_model"] = save_audio(tiny_audio(), root / "audio.pt")
    paths["motion_model"] = save_motion(motion, root / "motion.pt")
    paths["wide_inputs"] = WideInputs(paths["wide"], paths["wide_motion"], paths["wide_audio"], paths["wide_prosody"])
    return paths
