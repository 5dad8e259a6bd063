"""Stage-1 training of the audio-to-motion network (paper Eq. 14) and its held-out report (memory.json).

Data (all rows = corpus frames of the REAL clips; row r of every store = corpus frame r, checked against the
manifest): keypoints.zarr `value`/`jacobian` (the (p, j) targets of Eq. 13) and `reference_value`/
`reference_jacobian` per actor (p_neu, j_neu); motion.zarr `f_e`/`f_m` (targets of Eq. 9/11 and Eq. 6; emmn
only); audio.zarr `mfcc`; corpus frames.zarr `reference_frames` (the identity image of E_i). Training actors'
clips train, held-out actors' clips are scored.

A step samples `batch_size` windows of `window` consecutive frames from random training clips. The frozen audio
encoders run once per clip, through `EmmnNet.encode_audio` as inference does: e_c per frame, and the clip's e_e
(the utterance's emotion) for every window of that clip.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.audio.prosody import DEFAULT_STORE as DEFAULT_PROSODY_STORE
from pipeline.audio.prosody import ProsodyStore
from pipeline.core.checkpoints import load_file
from pipeline.core.config import MEAD_EMOTIONS, BaseParams, TrainMemoryParams
from pipeline.core.errors import InputError
from pipeline.core.precision import pick_device
from pipeline.core.store import open_store, read_index, report_values
from pipeline.fomm.io import frames_to_tensor
from pipeline.models.emmn import (
    EmmnConfig,
    EmmnNet,
    EmmnOutput,
    frozen_entry,
    keypoint_displacement,
)
from pipeline.models.memory import (
    a2m_loss,
    align_loss,
    exp_memory_loss,
    expression_residual_loss,
    keypoint_loss,
    stage1_loss,
)
from pipeline.training.distributed import shard
from pipeline.training.fit import fit
from pipeline.training.loop import count_parameters, seed_all, step_rngs, torch_threads

# ----------------------------------------------------------------------------------------------- data


@dataclasses.dataclass
class MemoryData:
    """Per-frame arrays of the real train + test clips, concatenated (compact row numbers), plus per actor
    the identity image and neutral keypoints."""

    clips: pd.DataFrame  # clip_id, actor, emotion, level, split, start, stop (compact rows), actor_index
    value: np.ndarray  # (R, N, 2)
    jacobian: np.ndarray  # (R, N, 2, 2)
    mfcc: np.ndarray  # (R, 28, 12)
    mel: np.ndarray | None  # (R, 80, 16), only for an emotion encoder that reads mel
    f_e: np.ndarray | None  # (R, expression_dim)
    f_m: np.ndarray | None  # (R, mouth_dim)
    images: np.ndarray  # (A, H, W, 3) uint8 neutral reference frames
    value_neu: np.ndarray  # (A, N, 2)
    jacobian_neu: np.ndarray  # (A, N, 2, 2)
    actors: list[str]
    prosody: np.ndarray | None = None  # (R, 4, 3), only for an emotion encoder that hears prosody
    voices: np.ndarray | None = None  # (A, 2) each actor's voice baseline, with prosody

    def split(self, name: str) -> pd.DataFrame:
        return self.clips[self.clips.split == name]

    def rows(self, clips: pd.DataFrame) -> np.ndarray:
        return np.concatenate([np.arange(a, b) for a, b in zip(clips.start, clips.stop)])


def _check_aligned(store: Path, clips: pd.DataFrame) -> None:
    """Every used clip must sit at the manifest's rows in `store` (row r = corpus frame r)."""
    index = read_index(store).set_index("clip_id")
    missing = sorted(set(clips.clip_id) - set(index.index))
    if missing:
        raise InputError(store, f"clip '{missing[0]}' of the corpus manifest is not in the store")
    found = index.loc[clips.clip_id]
    bad = (found.start.to_numpy() != clips.start.to_numpy()) | (found.stop.to_numpy() != clips.stop.to_numpy())
    if bad.any():
        clip = clips.clip_id.to_numpy()[bad][0]
        raise InputError(store, f"clip '{clip}' is not at the corpus frame rows (row r must be corpus frame r)")


def _gather(store: Path, name: str, clips: pd.DataFrame) -> np.ndarray:
    """Rows of `name` for the manifest's `clips` (their store rows checked by `_check_aligned` first)."""
    return _gather_indexed(store, name, list(clips.clip_id), (clips.stop - clips.start).to_numpy(np.int64))


def _per_actor(store: Path, names: tuple[str, ...], actors: list[str]) -> list[np.ndarray]:
    """Rows of per-actor arrays (indexed by the store's `reference_actor`) in the order of `actors`."""
    root = open_store(store)
    for name in ("reference_actor", *names):
        if name not in root:
            raise InputError(store, f"no '{name}' array (per-actor neutral reference)")
    order = {str(a): i for i, a in enumerate(root["reference_actor"][:])}
    missing = [a for a in actors if a not in order]
    if missing:
        raise InputError(store, f"no neutral reference for actor '{missing[0]}'")
    idx = [order[a] for a in actors]
    return [np.asarray(root[name][:])[idx] for name in names]


@dataclasses.dataclass(frozen=True)
class WideInputs:
    """The wide pre-training set's stores: its folder (manifest, neutral reference frames) and its motion
    (decompose@wide), audio (audio_features@wide) and prosody (prosody@wide) stores. Keypoints come from the one
    keypoint store (keypoints.extra_frames lists the wide frames)."""

    folder: Path
    motion: Path
    audio: Path
    prosody: Path


def _gather_indexed(store: Path, name: str, clip_ids: list[str], lengths: np.ndarray) -> np.ndarray:
    """Rows of `name` for `clip_ids`, found by the store's own per-clip index (any row layout), each clip checked
    to have its manifest length."""
    index = read_index(store).set_index("clip_id")
    missing = [c for c in clip_ids if c not in index.index]
    if missing:
        raise InputError(store, f"clip '{missing[0]}' is not in the store (re-run the stage that writes it)")
    found = index.loc[clip_ids]
    starts, stops = found.start.to_numpy(np.int64), found.stop.to_numpy(np.int64)
    bad = np.flatnonzero(stops - starts != lengths)
    if len(bad):
        raise InputError(store, f"clip '{clip_ids[bad[0]]}' has {stops[bad[0]] - starts[bad[0]]} rows, its manifest "
                                f"{lengths[bad[0]]}")
    root = open_store(store)
    if name not in root:
        raise InputError(store, f"no '{name}' array")
    lo, hi = int(starts.min()), int(stops.max())
    block = root[name][lo:hi]
    out = np.concatenate([block[a - lo:b - lo] for a, b in zip(starts, stops)])
    if not np.isfinite(out).all():
        raise InputError(store, f"'{name}' has NaN/inf in the clips used")
    return out.astype(np.float32, copy=False)


def _wide_part(wide: WideInputs, keypoints: Path, *, motion: bool, mel: bool, prosody: bool) -> dict[str, Any]:
    """The wide set's real clips (both of its splits, renamed wide_train / wide_test) as arrays like the corpus's."""
    manifest_path = Path(wide.folder) / "manifest.parquet"
    if not manifest_path.is_file():
        raise InputError(manifest_path, "wide set manifest not found (run the wide_corpus stage first)")
    manifest = pd.read_parquet(manifest_path)
    clips = manifest[(manifest.kind == "real") & manifest.split.isin(["train", "test"])].reset_index(drop=True)
    if (clips.split == "train").sum() == 0:
        raise InputError(manifest_path, "no real training clips in the wide set")
    ids, lengths = list(clips.clip_id), (clips.stop - clips.start).to_numpy(np.int64)
    part: dict[str, Any] = {
        "clips": clips.assign(split="wide_" + clips.split),
        "value": _gather_indexed(keypoints, "value", ids, lengths),
        "jacobian": _gather_indexed(keypoints, "jacobian", ids, lengths),
        "mfcc": _gather_indexed(wide.audio, "mfcc", ids, lengths),
        "mel": _gather_indexed(wide.audio, "mel", ids, lengths) if mel else None,
        "f_e": _gather_indexed(wide.motion, "f_e", ids, lengths) if motion else None,
        "f_m": _gather_indexed(wide.motion, "f_m", ids, lengths) if motion else None}
    actors = sorted(clips.actor.unique())
    (part["images"],) = _per_actor(Path(wide.folder) / "frames.zarr", ("reference_frames",), actors)
    part["value_neu"], part["jacobian_neu"] = _per_actor(keypoints, ("reference_value", "reference_jacobian"), actors)
    part["actors"] = actors
    if prosody:
        store = ProsodyStore(wide.prosody)
        part["prosody"] = np.concatenate([store.clip(c) for c in ids])
        if len(part["prosody"]) != len(part["mfcc"]):
            raise InputError(wide.prosody, "prosody and audio features differ in length (re-run prosody@wide)")
        part["voices"] = np.stack([store.voice(a) for a in actors])
    return part


def load_memory_data(corpus_dir: Path, keypoints: Path, motion: Path | None, audio: Path, *,
                     mel: bool = False, prosody: Path | None = None, wide: WideInputs | None = None) -> MemoryData:
    """Everything training and the report read, for the real clips of both splits (`motion` None: no f_e/f_m;
    `mel`: also the mel windows; `prosody`: the prosody store, for an emotion encoder that hears prosody; `wide`:
    the wide set's real clips too, after the corpus's, with splits wide_train / wide_test)."""
    manifest_path = corpus_dir / "manifest.parquet"
    if not manifest_path.is_file():
        raise InputError(manifest_path, "corpus manifest not found (run the corpus stage first)")
    manifest = pd.read_parquet(manifest_path)
    clips = manifest[(manifest.kind == "real") & manifest.split.isin(["train", "test"])].reset_index(drop=True)
    if clips.empty or (clips.split == "train").sum() == 0:
        raise InputError(manifest_path, "no real training clips")
    stores = [keypoints, audio] + ([motion] if motion is not None else [])
    for store in stores:
        _check_aligned(store, clips)
    value = _gather(keypoints, "value", clips)
    jacobian = _gather(keypoints, "jacobian", clips)
    mfcc = _gather(audio, "mfcc", clips)
    mel_windows = _gather(audio, "mel", clips) if mel else None
    f_e = _gather(motion, "f_e", clips) if motion is not None else None
    f_m = _gather(motion, "f_m", clips) if motion is not None else None
    actors = sorted(clips.actor.unique())
    (images,) = _per_actor(corpus_dir / "frames.zarr", ("reference_frames",), actors)
    value_neu, jacobian_neu = _per_actor(keypoints, ("reference_value", "reference_jacobian"), actors)
    lengths = (clips.stop - clips.start).to_numpy()
    stops = np.cumsum(lengths)
    table = pd.DataFrame({
        "clip_id": clips.clip_id, "actor": clips.actor, "emotion": clips.emotion, "level": clips.level.astype(int),
        "split": clips.split, "start": stops - lengths, "stop": stops,
        "actor_index": clips.actor.map({a: i for i, a in enumerate(actors)}).to_numpy()})
    tracks = voices = None
    if prosody is not None:
        store = ProsodyStore(prosody)
        tracks = np.concatenate([store.clip(c) for c in clips.clip_id])
        if len(tracks) != len(mfcc):
            raise InputError(prosody, "prosody and audio features differ in length (re-run the prosody stage)")
        voices = np.stack([store.voice(a) for a in actors])
    data = MemoryData(table, value, jacobian, mfcc, mel_windows, f_e, f_m, images, value_neu.astype(np.float32),
                      jacobian_neu.astype(np.float32), actors, tracks, voices)
    if wide is not None:
        data = append_wide(data, _wide_part(wide, keypoints, motion=motion is not None, mel=mel,
                                            prosody=prosody is not None))
    return data


def append_wide(data: MemoryData, part: dict[str, Any]) -> MemoryData:
    """`data` with the wide set's clips appended (rows and actors after the corpus's; actor names must differ)."""
    clash = sorted(set(part["actors"]) & set(data.actors))
    if clash:
        raise InputError(None, f"actor '{clash[0]}' is in both the corpus and the wide set")
    if part["images"].shape[1:] != data.images.shape[1:]:
        raise InputError(None, f"the wide set's frames are {part['images'].shape[1:3]}, the corpus's "
                               f"{data.images.shape[1:3]}: render both at the same size")
    clips = part["clips"]
    lengths = (clips.stop - clips.start).to_numpy()
    stops = len(data.value) + np.cumsum(lengths)
    order = {a: len(data.actors) + i for i, a in enumerate(part["actors"])}
    table = pd.DataFrame({
        "clip_id": clips.clip_id, "actor": clips.actor, "emotion": clips.emotion, "level": clips.level.astype(int),
        "split": clips.split, "start": stops - lengths, "stop": stops, "actor_index": clips.actor.map(order)})

    def cat(name: str) -> np.ndarray | None:
        mine, theirs = getattr(data, name), part.get(name)
        return None if mine is None or theirs is None else np.concatenate([mine, np.asarray(theirs, mine.dtype)])

    return dataclasses.replace(
        data, clips=pd.concat([data.clips, table], ignore_index=True), value=cat("value"), jacobian=cat("jacobian"),
        mfcc=cat("mfcc"), mel=cat("mel"), f_e=cat("f_e"), f_m=cat("f_m"), images=cat("images"),
        value_neu=cat("value_neu"), jacobian_neu=cat("jacobian_neu"), actors=data.actors + part["actors"],
        prosody=cat("prosody"), voices=cat("voices"))


def choose_upper_keypoints(data: MemoryData, count: int) -> tuple[int, ...]:
    """mmn ablation: the `count` keypoints whose position moves most with emotion, among the upper face.

    Score of keypoint k: for each training actor, the mean displacement from that actor's neutral keypoints per
    emotion; the variance of those means across emotions (x and y summed); averaged over actors. Candidates are
    the keypoints whose mean training position lies above the median keypoint (smaller y: image rows grow
    downward), EAMM's upper-face region; if too few qualify, the best-scoring others fill up.
    """
    train = data.split("train")
    rows = data.rows(train)
    actor_of_row = np.repeat(train.actor_index.to_numpy(), (train.stop - train.start).to_numpy())
    emotion_of_row = np.repeat(train.emotion.to_numpy(), (train.stop - train.start).to_numpy())
    displacement = data.value[rows] - data.value_neu[actor_of_row]  # (F, N, 2)
    per_actor = []
    for actor in np.unique(actor_of_row):
        means = [displacement[(actor_of_row == actor) & (emotion_of_row == e)].mean(0)
                 for e in np.unique(emotion_of_row[actor_of_row == actor])]
        per_actor.append(np.var(np.stack(means), axis=0).sum(-1) if len(means) > 1 else np.zeros(means[0].shape[0]))
    score = np.mean(per_actor, axis=0)
    mean_y = data.value[rows, :, 1].mean(0)
    upper = mean_y < np.median(mean_y)
    order = sorted(range(len(score)), key=lambda k: (not upper[k], -score[k]))
    return tuple(int(k) for k in order[:count])


# ----------------------------------------------------------------------------------------- model setup


def load_frozen(audio_path: Path, motion_path: Path | None) -> tuple[torch.nn.Module, dict, torch.nn.Module | None,
                                                                     dict | None]:
    """The frozen audio encoders (and motion network) with the checkpoint dicts emmn.pt embeds."""
    from pipeline.models.audio import load_audio_encoders

    audio = load_audio_encoders(audio_path)
    audio_ckpt = frozen_entry(load_file(audio_path))
    if motion_path is None:
        return audio, audio_ckpt, None, None
    from pipeline.models.motion import load_motion

    return audio, audio_ckpt, load_motion(motion_path), frozen_entry(load_file(motion_path))


@torch.no_grad()
def probe_dims(audio: torch.nn.Module, motion: torch.nn.Module | None) -> dict[str, int]:
    """Feature sizes of the frozen parts: e_c, e_e read off one dummy forward (the audio contract names no config
    fields), f_e, f_m from MotionConfig."""
    mfcc = torch.zeros(1, 4, 28, 12)
    mel = torch.zeros(1, 4, 80, 16) if getattr(audio, "needs_mel", False) else None
    prosody = torch.zeros(1, 4, 4, 3) if getattr(audio, "needs_prosody", False) else None
    emotion = audio.encode_emotion(mfcc, mel, prosody) if prosody is not None else audio.encode_emotion(mfcc, mel)
    dims = {"content_dim": int(audio.encode_content(mfcc).shape[-1]), "emotion_dim": int(emotion.shape[-1])}
    if motion is not None:
        dims.update(expression_dim=int(motion.config.expression_dim), mouth_dim=int(motion.config.mouth_dim))
    return dims


def emmn_config(p: TrainMemoryParams, dims: dict[str, int], num_kp: int, upper: tuple[int, ...],
                emotions: tuple[str, ...], levels: tuple[int, ...]) -> EmmnConfig:
    if p.variant == "emmn":
        mouth_dim, expression_dim = dims["mouth_dim"], dims["expression_dim"]
    else:
        mouth_dim, expression_dim = p.latent_dim, 6 * len(upper)
    try:
        return EmmnConfig(
            variant=p.variant, num_kp=num_kp, content_dim=dims["content_dim"], emotion_dim=dims["emotion_dim"],
            mouth_dim=mouth_dim, expression_dim=expression_dim, identity_dim=p.identity_dim,
            identity_size=p.identity_size, identity_channels=tuple(p.identity_channels), hidden=p.hidden,
            decoder_blocks=p.decoder_blocks, kernel=p.kernel, slots=p.slots, temperature=p.temperature,
            read_temperature=p.read_temperature,
            balance_query=p.balance_query, mouth_from_a2m_only=p.mouth_from_a2m_only, window=p.window,
            temporal_expression=p.temporal_expression and p.variant == "emmn", tune_content=p.tune_content,
            upper_keypoints=upper if p.variant == "mmn" else (),
            emotions=emotions, levels=levels)
    except InputError as exc:
        raise InputError("params.yaml", f"train_memory: {exc.problem}") from None


# ------------------------------------------------------------------------------------------- training


@dataclasses.dataclass
class Batch:
    image: torch.Tensor  # (B, 3, s, s)
    content: torch.Tensor  # (B, T, C) e_c
    emotion: torch.Tensor  # (B, E) e_e
    value: torch.Tensor  # (B, T, N, 2)
    jacobian: torch.Tensor  # (B, T, N, 2, 2)
    value_neu: torch.Tensor  # (B, N, 2)
    jacobian_neu: torch.Tensor  # (B, N, 2, 2)
    f_e: torch.Tensor | None  # (B, T, De)
    f_m: torch.Tensor | None  # (B, T, Dm)
    mfcc: torch.Tensor | None = None  # (B, T, 28, 12): e_c again, through a content encoder being fine-tuned


def memory_target(model: EmmnNet, batch: Batch) -> torch.Tensor | None:
    """What M_exp stores for these frames: f_e (emmn), the upper keypoints' displacement (mmn), None (baseline)."""
    variant = model.config.variant
    if variant == "emmn":
        return batch.f_e
    if variant == "mmn":
        return keypoint_displacement(batch.value, batch.jacobian, batch.value_neu[:, None],
                                     batch.jacobian_neu[:, None], model.config.upper_keypoints)
    return None


def stage1_terms(model: EmmnNet, out: EmmnOutput, batch: Batch) -> dict[str, torch.Tensor]:
    """The unweighted losses of Eq. 14 that the variant uses (see pipeline.models.emmn)."""
    terms = {}
    if model.config.variant == "emmn":
        terms["a2m"] = a2m_loss(batch.f_m, out.mouth)  # Eq. 6
    target = memory_target(model, batch)
    if target is not None:
        log_exp = model.memory.log_address_expression(target)  # Eq. 7
        terms["exp_mem"] = exp_memory_loss(target, model.memory.read(log_exp.exp()))  # Eq. 8, 9
        terms["align"] = align_loss(out.log_slot_weights, log_exp)  # Eq. 11
    terms["pj"] = keypoint_loss(batch.value, out.value, batch.jacobian, out.jacobian)  # Eq. 13
    if model.expression_decoder is not None:
        terms["expression"] = expression_residual_loss(batch.f_e, out.read, out.expression)  # D_t (ours)
    return terms


def pretraining_terms(model: EmmnNet, out: EmmnOutput, batch: Batch) -> dict[str, torch.Tensor]:
    """The losses of a wide-set batch (LRW's role in the paper: Audio2Mouth pre-training): emmn learns L_a2m
    (Eq. 6) and D_t's residual there; the ablations, which have no f_m target, their keypoint loss L_p,j (Eq. 13).
    The memory's own terms (Eq. 9, 11) stay with the emotional corpus."""
    if model.config.variant != "emmn":
        return {"pj": keypoint_loss(batch.value, out.value, batch.jacobian, out.jacobian)}
    terms = {"a2m": a2m_loss(batch.f_m, out.mouth)}
    if model.expression_decoder is not None:
        terms["expression"] = expression_residual_loss(batch.f_e, out.read, out.expression)
    return terms


def emotion_partners(clips: pd.DataFrame, train_index: np.ndarray) -> dict[int, np.ndarray]:
    """For each training clip (index into `clips`), the training clips of OTHER actors with the same emotion and
    level. Why: e_e also carries the speaker's voice, and with 8 training voices the emo-mouth memory learns to
    key on the voice (held-out retrieval no better than the mean f_e); an e_e borrowed from another speaker
    saying the same emotion leaves the emotion as the only thing the query and the target share."""
    train = clips.iloc[train_index]
    groups = {key: train_index[np.flatnonzero(((train.emotion == key[0]) & (train.level == key[1])).to_numpy())]
              for key in set(zip(train.emotion, train.level))}
    actors = clips.actor.to_numpy()
    out = {}
    for k, (emotion, level, actor) in zip(train_index, zip(train.emotion, train.level, train.actor)):
        group = groups[(emotion, level)]
        out[int(k)] = group[actors[group] != actor]
    return out


class MemoryTrainer:
    """Data on the device, the network, its optimizer; `sample(rng)` draws windows, `train_step` updates."""

    def __init__(self, model: EmmnNet, data: MemoryData, p: TrainMemoryParams, device: torch.device):
        self.model, self.data, self.p, self.device = model.to(device), data, p, device
        self.starts = data.clips.start.to_numpy()
        self.lengths = (data.clips.stop - data.clips.start).to_numpy()
        self.train_index = np.flatnonzero(data.clips.split.to_numpy() == "train")
        self.window = int(min(p.window, self.lengths[self.train_index].min()))
        self.wide_index = np.flatnonzero(data.clips.split.to_numpy() == "wide_train")
        self.wide_window = int(min(p.window, self.lengths[self.wide_index].min())) if len(self.wide_index) else 0
        self.actor_index = torch.tensor(data.clips.actor_index.to_numpy(), device=device)
        self.images = frames_to_tensor(data.images, model.config.identity_size).to(device)
        self.value = torch.from_numpy(data.value).to(device)
        self.jacobian = torch.from_numpy(data.jacobian).to(device)
        self.mfcc = torch.from_numpy(data.mfcc).to(device)
        self.mel = None if data.mel is None else torch.from_numpy(data.mel).to(device)
        self.prosody = None if data.prosody is None else torch.from_numpy(data.prosody).to(device)
        self.voices = None if data.voices is None else torch.from_numpy(data.voices).to(device)
        self.value_neu = torch.from_numpy(data.value_neu).to(device)
        self.jacobian_neu = torch.from_numpy(data.jacobian_neu).to(device)
        self.f_e = None if data.f_e is None else torch.from_numpy(data.f_e).to(device)
        self.f_m = None if data.f_m is None else torch.from_numpy(data.f_m).to(device)
        self.content, self.clip_emotion = self._encode_clips()
        self.emotion_partners = emotion_partners(data.clips, self.train_index)
        params = [q for m in model.trainable_modules().values() for q in m.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=p.lr)

    @torch.no_grad()
    def _encode_clips(self) -> tuple[torch.Tensor, torch.Tensor]:
        """e_c of every row and e_e of every clip, exactly as `EmmnNet.predict` computes them on the whole clip.

        Every training window of a clip uses its clip's e_e: the emotion of an utterance (what the paper's e_e
        is), the same vector inference derives from the same audio, and the frozen encoders run once per clip
        instead of on every step's windows."""
        contents, emotions = [], []
        for a, b in zip(self.data.clips.start, self.data.clips.stop):
            mel = None if self.mel is None else self.mel[None, a:b]
            e_c, e_e = self.model.encode_audio(self.mfcc[None, a:b], mel=mel, **self.voice_inputs(a, b))
            contents.append(e_c[0])
            emotions.append(e_e[0])
        return torch.cat(contents), torch.stack(emotions)

    def voice_inputs(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        """prosody (1, T, 4, 3) of rows start:stop and their speaker's voice baseline (1, 2), for an emotion
        encoder that hears prosody; else nothing."""
        if self.prosody is None:
            return {}
        actor = self.actor_index[int(np.searchsorted(self.data.clips.stop.to_numpy(), start, side="right"))]
        return {"prosody": self.prosody[None, start:stop], "voice": self.voices[actor][None]}

    def batch_from_rows(self, rows: torch.Tensor, clips: torch.Tensor, emotion_clips: torch.Tensor | None = None
                        ) -> Batch:
        """rows (B, T) of consecutive frames of clips (B,) (indices into data.clips) -> a Batch; e_e from
        `emotion_clips` (B,) when given, else from `clips`."""
        actors = self.actor_index[clips]
        pick = (lambda t: None if t is None else t[rows])
        emotion = self.clip_emotion[clips if emotion_clips is None else emotion_clips]
        return Batch(self.images[actors], self.content[rows], emotion, self.value[rows],
                     self.jacobian[rows], self.value_neu[actors], self.jacobian_neu[actors], pick(self.f_e),
                     pick(self.f_m), self.mfcc[rows])

    def clip_batch(self, clip: int) -> tuple[torch.Tensor, Batch]:
        """Every frame of one clip (index into data.clips) as a batch of one; also its rows (1, T)."""
        start, stop = int(self.data.clips.start.iloc[clip]), int(self.data.clips.stop.iloc[clip])
        rows = torch.arange(start, stop, device=self.device)[None]
        return rows, self.batch_from_rows(rows, torch.tensor([clip], device=self.device))

    def sample_wide(self, rng: np.random.Generator) -> Batch | None:
        """Random windows of the wide set's training clips (None without a wide set); e_e of their own clip."""
        if not len(self.wide_index):
            return None
        clips = rng.choice(self.wide_index, size=self.p.batch_size)
        starts = self.starts[clips] + rng.integers(0, self.lengths[clips] - self.wide_window + 1)
        rows = torch.from_numpy(starts[:, None] + np.arange(self.wide_window)[None]).to(self.device)
        return self.batch_from_rows(rows, torch.from_numpy(clips).to(self.device))

    def sample(self, rng: np.random.Generator) -> Batch:
        """Random training windows; with probability `cross_actor_emotion` a window's e_e is that of a random
        clip of another training actor with the same emotion and level (see `emotion_partners`)."""
        clips = rng.choice(self.train_index, size=self.p.batch_size)
        starts = self.starts[clips] + rng.integers(0, self.lengths[clips] - self.window + 1)
        rows = torch.from_numpy(starts[:, None] + np.arange(self.window)[None]).to(self.device)
        emotion_clips = clips.copy()
        swap = rng.random(len(clips)) < self.p.cross_actor_emotion if self.p.cross_actor_emotion > 0 else []
        for k in np.flatnonzero(swap):
            partners = self.emotion_partners.get(int(clips[k]))
            if partners is not None and len(partners):
                emotion_clips[k] = partners[rng.integers(len(partners))]
        return self.batch_from_rows(rows, torch.from_numpy(clips).to(self.device),
                                    torch.from_numpy(emotion_clips).to(self.device))

    def content_of(self, batch: Batch) -> torch.Tensor:
        """e_c of a batch: precomputed by the frozen E_c, or (tune_content) through the copy being trained."""
        if self.model.content_encoder is None:
            return batch.content
        return self.model.content_features(batch.mfcc)

    def train_step(self, batch: Batch, wide: Batch | None = None) -> dict[str, float]:
        """One update on a corpus batch (Eq. 14) and, when given, a wide-set batch (`pretraining_terms`)."""
        self.model.train()
        p = self.p
        out = self.model(batch.image, self.content_of(batch), batch.emotion, batch.value_neu, batch.jacobian_neu)
        terms = stage1_terms(self.model, out, batch)
        total = stage1_loss(terms, p.lambda_exp_mem, p.lambda_align, p.lambda_pj, p.lambda_expression)
        wide_terms = {}
        if wide is not None:
            out_wide = self.model(wide.image, self.content_of(wide), wide.emotion, wide.value_neu, wide.jacobian_neu)
            wide_terms = pretraining_terms(self.model, out_wide, wide)
            total = total + stage1_loss(wide_terms, p.lambda_exp_mem, p.lambda_align, p.lambda_pj,
                                        p.lambda_expression)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        logged = {"total": float(total.detach())}
        logged.update({name: float(terms[name].detach()) if name in terms else 0.0
                       for name in ("a2m", "exp_mem", "align", "pj", "expression")})
        # every column always (0 = unused), so the loss log and its DVC plot keep one layout
        logged.update({f"wide_{name}": float(wide_terms[name].detach()) if name in wide_terms else 0.0
                       for name in ("a2m", "expression", "pj")})
        return logged

    @torch.no_grad()
    def init_memory(self, rng: np.random.Generator) -> None:
        """M_exp starts from the targets of S random training frames (see MotionMemory.init_expression)."""
        if self.model.memory is None:
            return
        slots = self.model.config.slots
        clips = rng.choice(self.train_index, size=slots)
        rows = self.starts[clips] + rng.integers(0, self.lengths[clips])
        batch = self.batch_from_rows(torch.from_numpy(rows[:, None]).to(self.device),
                                     torch.from_numpy(clips).to(self.device))
        self.model.memory.init_expression(memory_target(self.model, batch)[:, 0])

    @torch.no_grad()
    def fill_emotion_table(self) -> None:
        train = self.data.clips.split.to_numpy() == "train"
        self.model.emotion_table.fill(self.clip_emotion[torch.from_numpy(train).to(self.device)],
                                      list(self.data.clips.emotion[train]), list(self.data.clips.level[train]))


# --------------------------------------------------------------------------------------------- report


@torch.no_grad()
def score_clips(trainer: MemoryTrainer, clips: pd.DataFrame, means: dict[str, torch.Tensor | None]) -> dict[str, Any]:
    """The numbers of memory.json over `clips`, each clip predicted whole by `EmmnNet.predict` (inference path).

    Per-frame means: keypoint_l1 (Eq. 13's per-frame term) and value_distance (mean keypoint L2 distance), each
    next to the static prediction (p_neu, j_neu); with a memory: align_kl (Eq. 11 per frame), retrieval_err
    (||f^_e;em - f_e||_2, Eq. 12's read-out against the ground truth), retrieval_err_mean_predictor (the same for
    always predicting the training mean target), exp_memory_err (||f~_e - f_e||, Eq. 8), address_perplexity
    (exp entropy of each frame's Omega_em: ~1 = one slot per frame, S = uniform) and address_perplexity_expression
    (the same for Omega_exp); emmn also mouth_err (||f^_m - f_m||, next to the training-mean f_m) and
    keypoint_l1_oracle_features (D_em on the ground-truth f_e, f_m: the floor the memory could reach).
    Slot usage (see `effective_slots`) of the mean Omega_em and mean Omega_exp over all frames. With a memory,
    emotion_acc_retrieved: share of clips whose mean f^_e;em is nearest to their emotion's centroid of training
    targets (`training_means`), next to emotion_acc_true_target for the ground-truth targets: whether what the
    memory reads carries the emotion at all, apart from the renderer. emotion_acc_retrieved_told_emotion: the same
    with e_e replaced by the emotion table's entry of the clip's true emotion (`--emotion NAME`): the memory alone,
    apart from the audio emotion encoder. expression_strength: how far the clip means of f^_e;em lie from the
    training mean target, over how far the true f_e's lie (mean norms over clips): 1 = as expressive as the real
    faces, 0 = every clip reads the mean expression. motion_ratio / head_motion_ratio: `temporal_motion` of the
    predicted keypoints over that of E_k's keypoints on the real frames, per clip, then the mean over clips
    (1 = moves as much as the real face; lips_motion / head_motion carry the raw means, predicted and real).
    """
    model = trainer.model.eval()
    mouth = mouth_keypoints(trainer.data.value_neu)
    motion = {"lips": [], "head": [], "lips_real": [], "head_real": []}
    sums: dict[str, float] = {}
    usage_em = usage_exp = None
    frames = 0
    clip_hits = {"emotion_acc_retrieved": 0, "emotion_acc_true_target": 0, "emotion_acc_retrieved_told_emotion": 0}
    spread = {"retrieved": 0.0, "true": 0.0}

    def add(name: str, value: torch.Tensor) -> None:
        sums[name] = sums.get(name, 0.0) + float(value.sum())

    for clip in clips.index:
        rows, batch = trainer.clip_batch(int(clip))
        out = model.predict(batch.image, trainer.mfcc[rows], batch.value_neu, batch.jacobian_neu,
                            mel=None if trainer.mel is None else trainer.mel[rows],
                            **trainer.voice_inputs(int(rows[0, 0]), int(rows[0, -1]) + 1))
        frames += rows.shape[1]
        static_v = batch.value_neu[:, None].expand_as(batch.value)
        static_j = batch.jacobian_neu[:, None].expand_as(batch.jacobian)
        add("keypoint_l1", per_frame_keypoint_l1(batch.value, out["value"], batch.jacobian, out["jacobian"]))
        add("keypoint_l1_static", per_frame_keypoint_l1(batch.value, static_v, batch.jacobian, static_j))
        add("value_distance", (batch.value - out["value"]).norm(dim=-1).mean(-1))
        add("value_distance_static", (batch.value - static_v).norm(dim=-1).mean(-1))
        for key, value in (("", out["value"][0]), ("_real", batch.value[0])):
            lips, head = temporal_motion(value, mouth)
            motion["lips" + key].append(lips)
            motion["head" + key].append(head)
        if model.config.variant == "emmn":
            add("mouth_err", (out["mouth"] - batch.f_m).norm(dim=-1))
            add("mouth_err_mean_predictor", (batch.f_m - means["mouth"]).norm(dim=-1))
            oracle_v, oracle_j = model.integrate(batch.f_e, batch.f_m, batch.value_neu, batch.jacobian_neu)
            add("keypoint_l1_oracle_features", per_frame_keypoint_l1(batch.value, oracle_v, batch.jacobian, oracle_j))
        target = memory_target(model, batch)
        if target is None:
            continue
        omega_em = out["slot_weights"]
        log_em = omega_em.clamp_min(1e-30).log()
        log_exp = model.memory.log_address_expression(target)
        add("align_kl", (omega_em * (log_em - log_exp)).sum(-1))
        add("retrieval_err", (out["expression"] - target).norm(dim=-1))
        add("retrieval_err_mean_predictor", (target - means["target"]).norm(dim=-1))
        add("exp_memory_err", (model.memory.read(log_exp.exp()) - target).norm(dim=-1))
        add("address_perplexity", torch.exp(-(omega_em * log_em).sum(-1)))
        add("address_perplexity_expression", torch.exp(-(log_exp.exp() * log_exp).sum(-1)))
        if means.get("emotion_centroids") is not None:
            truth = model.emotions.index(trainer.data.clips.emotion.iloc[int(clip)])
            clip_hits["emotion_acc_retrieved"] += nearest_centroid(out["expression"][0].mean(0),
                                                                   means["emotion_centroids"]) == truth
            clip_hits["emotion_acc_true_target"] += nearest_centroid(target[0].mean(0),
                                                                     means["emotion_centroids"]) == truth
            told = model.predict(batch.image, trainer.mfcc[rows], batch.value_neu, batch.jacobian_neu,
                                 emotion=model.emotions[truth])
            clip_hits["emotion_acc_retrieved_told_emotion"] += nearest_centroid(told["expression"][0].mean(0),
                                                                                means["emotion_centroids"]) == truth
        spread["retrieved"] += float((out["expression"][0].mean(0) - means["target"]).norm())
        spread["true"] += float((target[0].mean(0) - means["target"]).norm())
        em, ex = omega_em.sum(dim=(0, 1)), log_exp.exp().sum(dim=(0, 1))
        usage_em, usage_exp = (em, ex) if usage_em is None else (usage_em + em, usage_exp + ex)
    result: dict[str, Any] = {k: v / max(frames, 1) for k, v in sums.items()}
    result.update(frames=frames, clips=len(clips))
    if motion["lips"]:
        for part, name in (("lips", "motion_ratio"), ("head", "head_motion_ratio")):
            pred, real = np.asarray(motion[part]), np.asarray(motion[part + "_real"])
            result[name] = float(np.mean(pred / np.maximum(real, 1e-8)))
            result[f"{part}_motion"] = {"predicted": float(pred.mean()), "real": float(real.mean())}
    if means.get("emotion_centroids") is not None:
        result.update({k: v / max(len(clips), 1) for k, v in clip_hits.items()})
    if spread["true"] > 0:
        result["expression_strength"] = spread["retrieved"] / spread["true"]
    if usage_em is not None:
        mean_em = usage_em / usage_em.sum()
        result["slots_used"] = effective_slots(mean_em)
        result["slots_used_expression_address"] = effective_slots(usage_exp / usage_exp.sum())
        result["slots_above_quarter_uniform"] = int((mean_em > 1 / (4 * model.config.slots)).sum())
    return result


def mouth_keypoints(value_neu: np.ndarray) -> tuple[int, ...]:
    """The quarter of the keypoints (at least 2) lying lowest in the actors' neutral frames: the mouth region
    (with FOMM's landmark anchors on, the lip centres and corners). value_neu: (A, N, 2), y grows downward."""
    mean_y = np.asarray(value_neu)[..., 1].mean(0)
    count = max(2, round(len(mean_y) / 4))
    return tuple(sorted(int(k) for k in np.argsort(-mean_y)[:count]))


def temporal_motion(value: torch.Tensor, mouth: tuple[int, ...]) -> tuple[float, float]:
    """How much one clip's keypoints (T, N, 2) move over time: (lips, head). Head = the temporal std of the
    keypoints' centroid (nods, turns and shifts move every keypoint); lips = the temporal std of the mouth
    keypoints relative to that centroid. Both the mean over x, y (and keypoints)."""
    centre = value.mean(1)
    lips = value[:, list(mouth)] - centre[:, None]
    return float(lips.std(0).mean()), float(centre.std(0).mean())


@torch.no_grad()
def read_temperature_sweep(trainer: MemoryTrainer, clips: pd.DataFrame, means: dict[str, torch.Tensor | None],
                           temperatures: list[float | None]) -> list[dict[str, Any]]:
    """`score_clips` of a trained model at each inference tau of Eq. 10 (`EmmnConfig.read_temperature`; None = the
    training tau): how sharpening the emo-mouth address trades retrieval error for expression strength."""
    model, rows = trainer.model, []
    trained = model.config
    try:
        for tau in temperatures:
            model.config = dataclasses.replace(trained, read_temperature=tau)
            rows.append({"read_temperature": trained.temperature if tau is None else tau,
                         **score_clips(trainer, clips, means)})
    finally:
        model.config = trained
    return rows


def per_frame_keypoint_l1(value: torch.Tensor, value_hat: torch.Tensor, jacobian: torch.Tensor,
                          jacobian_hat: torch.Tensor) -> torch.Tensor:
    """Eq. 13's per-frame term ||p - p^||_1 + ||j - j^||_1, (B, T)."""
    return (value - value_hat).abs().flatten(-2).sum(-1) + (jacobian - jacobian_hat).abs().flatten(-3).sum(-1)


def effective_slots(mean_usage: torch.Tensor) -> float:
    """exp(entropy) of the mean address over frames: the number of equally used slots with the same entropy
    (1 = one slot takes everything, S = all used alike)."""
    p = mean_usage.clamp_min(1e-30)
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def training_means(trainer: MemoryTrainer) -> dict[str, torch.Tensor | None]:
    """Means over the training frames of the memory target and (emmn) f_m: the 'predict the average' baselines
    retrieval_err and mouth_err are compared with."""
    sums: dict[str, torch.Tensor] = {}
    count = 0
    emotions = trainer.model.emotions
    per_emotion: list[list[torch.Tensor]] = [[] for _ in emotions]
    for clip in trainer.train_index:
        _, batch = trainer.clip_batch(int(clip))
        for name, value in (("target", memory_target(trainer.model, batch)), ("mouth", batch.f_m)):
            if value is not None:
                sums[name] = sums.get(name, 0) + value[0].sum(0)
                if name == "target":
                    per_emotion[emotions.index(trainer.data.clips.emotion.iloc[int(clip)])].append(value[0].mean(0))
        count += batch.value.shape[1]
    means = {name: (sums[name] / count if name in sums else None) for name in ("target", "mouth")}
    # Per emotion, the mean of its training clips' mean targets: the nearest-centroid judge of `score_clips`.
    means["emotion_centroids"] = (torch.stack([torch.stack(c).mean(0) for c in per_emotion])
                                  if means["target"] is not None and all(per_emotion) else None)
    return means


def nearest_centroid(features: torch.Tensor, centroids: torch.Tensor) -> int:
    """Index of the centroid [E,D] nearest (L2) to a clip's mean feature [D]."""
    return int((centroids - features).norm(dim=-1).argmin())


def ordered_emotions(names: list[str]) -> tuple[str, ...]:
    """MEAD's order first, any other label after, sorted."""
    present = set(names)
    return tuple([e for e in MEAD_EMOTIONS if e in present] + sorted(present - set(MEAD_EMOTIONS)))


SLOTS_USED = ("exp(entropy) of the emo-mouth address Omega_em averaged over all held-out frames: the effective "
              "number of slots inference reads (1 = a single slot, S = all alike)")


def build_report(heldout: dict[str, Any], train: dict[str, Any], info: dict[str, Any],
                 wide_heldout: dict[str, Any] | None = None) -> dict[str, Any]:
    """memory.json: the issue's keys on top (held-out actors), the details nested; `wide_heldout`: the wide set's
    held-out clips (unseen faces, voices and sentences), when trained with it."""
    top = {k: heldout.get(k) for k in ("slots_used", "align_kl", "retrieval_err", "retrieval_err_mean_predictor",
                                       "keypoint_l1", "keypoint_l1_static")}
    extra = {} if wide_heldout is None else {"wide_heldout": wide_heldout}
    return report_values({**top, "heldout": heldout, "train": train, **extra, "info": info})


def train_memory_model(corpus_dir: Path, keypoints: Path, motion_store: Path, audio_store: Path, audio_model: Path,
                       motion_model: Path, model_out: Path, losses_csv: Path, base: BaseParams, p: TrainMemoryParams,
                       *, log=print, prosody_store: Path = DEFAULT_PROSODY_STORE,
                       wide: WideInputs | None = None) -> dict[str, Any]:
    """Train EmmnNet (stage 1) and write `model_out`, the loss log; return the memory.json report. The prosody
    stores are read only when the frozen emotion encoder hears prosody; `wide` only when p.pretrain_wide is on."""
    with torch_threads(p.threads):
        return _train(corpus_dir, keypoints, motion_store, audio_store, audio_model, motion_model, model_out,
                      losses_csv, base, p, log, prosody_store, wide if p.pretrain_wide else None)


def _train(corpus_dir: Path, keypoints: Path, motion_store: Path, audio_store: Path, audio_model: Path,
           motion_model: Path, model_out: Path, losses_csv: Path, base: BaseParams, p: TrainMemoryParams,
           log, prosody_store: Path, wide: WideInputs | None) -> dict[str, Any]:
    device = pick_device(base.device)
    use_motion = p.variant == "emmn"
    audio, audio_ckpt, motion, motion_ckpt = load_frozen(Path(audio_model), Path(motion_model) if use_motion else None)
    data = load_memory_data(Path(corpus_dir), Path(keypoints), Path(motion_store) if use_motion else None,
                            Path(audio_store), mel=bool(getattr(audio, "needs_mel", False)),
                            prosody=Path(prosody_store) if getattr(audio, "needs_prosody", False) else None,
                            wide=wide)
    num_kp = data.value.shape[1]
    upper = choose_upper_keypoints(data, p.mmn_keypoints) if p.variant == "mmn" else ()
    train_clips = data.split("train")
    config = emmn_config(p, probe_dims(audio, motion), num_kp, upper,
                         ordered_emotions(list(train_clips.emotion)), tuple(sorted(set(train_clips.level))))
    seed_all(base.seed)
    model = EmmnNet(config, audio, motion)
    trainer = MemoryTrainer(model, data, p, device)
    trainer.init_memory(np.random.default_rng(base.seed))
    trainable = count_parameters(*model.trainable_modules().values())
    log(f"train_memory: variant {p.variant}; {len(train_clips)} training clips, {len(data.split('test'))} held-out"
        + (f", wide set {len(trainer.wide_index)} training clips ({trainer.wide_window}-frame windows)"
           if len(trainer.wide_index) else "")
        + f"; window {trainer.window} frames; {trainable / 1e6:.2f}M trainable parameters; device {device}"
        + (f"; mmn keypoints {list(upper)}" if upper else ""))

    def step_fn(step: int) -> dict[str, float]:
        rng, _ = step_rngs(base.seed, step)
        batch = trainer.sample(rng)
        return trainer.train_step(shard(batch), shard(trainer.sample_wide(rng)))

    report: dict[str, Any] = {}

    def finish(step: int) -> None:
        """The emotion table from the training clips, then memory.json's numbers (held-out and training actors)."""
        from pipeline.corpus.manifest import select_evenly

        trainer.fill_emotion_table()
        test = data.split("test")
        test = test[test.clip_id.isin(select_evenly(list(test.clip_id), p.eval_clips))]
        means = training_means(trainer)
        heldout = score_clips(trainer, test, means)
        train_scored = train_clips[train_clips.clip_id.isin(select_evenly(list(train_clips.clip_id), len(test)))]
        train = score_clips(trainer, train_scored, means)
        wide_test = data.split("wide_test")
        wide_heldout = score_clips(trainer, wide_test, means) if len(wide_test) else None
        has_memory = config.variant != "baseline"
        retrieval_space = {"emmn": "f_e (motion.zarr)", "mmn": f"(p - p_neu, j - j_neu) of keypoints {list(upper)}",
                           "baseline": None}[p.variant]
        info = {"variant": p.variant, "slots": config.slots if has_memory else 0, "temperature": config.temperature,
                "read_temperature": config.read_temperature,
                "slots_used_is": SLOTS_USED if has_memory else None, "retrieval_space": retrieval_space,
                "upper_keypoints": list(upper), "steps": step,
                "window": trainer.window, "heldout_actors": sorted(test.actor.unique()),
                "wide_training_clips": int(len(trainer.wide_index)), "wide_window": trainer.wide_window,
                "emotions": list(model.emotions)}
        report.update(build_report(heldout, train, info, wide_heldout))

    def metrics(step: int, recent: dict[str, float]) -> dict[str, Any]:
        return {"steps": step, "parameters": trainable, **{f"final_{k}": round(v, 6) for k, v in recent.items()},
                **{k: report[k] for k in ("slots_used", "align_kl", "retrieval_err", "keypoint_l1") if report}}

    frozen = {"audio": audio_ckpt, **({"motion": motion_ckpt} if motion_ckpt is not None else {})}
    fit(step_fn, stage="train_memory", out=model_out, losses_csv=losses_csv, config=config.to_dict(),
        modules=model.trainable_modules(), optimizers={"optimizer": trainer.optimizer}, p=p, metrics=metrics,
        finish=finish, checkpoint_extra={"frozen": frozen}, log=log)
    return report


__all__ = [
    "Batch", "MemoryData", "MemoryTrainer", "WideInputs", "append_wide", "build_report", "choose_upper_keypoints",
    "effective_slots", "emmn_config", "load_frozen", "load_memory_data", "memory_target", "pretraining_terms",
    "probe_dims", "read_temperature_sweep", "score_clips", "stage1_terms", "train_memory_model",
]
