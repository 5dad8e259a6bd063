"""Corpus audio for the emotion/content disentanglement: MFCC windows in memory, DTW pairings, training quads.

Only real clips have their own speech (counterfactual clips reuse other clips' wavs). Clips are grouped
by (actor, sentence); within a group every pair of takes is aligned once by DTW (`pipeline.audio.dtw`) when
the bank is built, so sampling a step costs no alignment. A cell is an (emotion, level) take.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.audio.dtw import align_clips
from pipeline.audio.prosody import ProsodyStore
from pipeline.core.errors import InputError
from pipeline.core.store import open_store, read_index
from pipeline.training.distributed import shard, world


@dataclass
class Quad:
    """Clip indices of one training quad: a = x_{i,m}, b = x_{i,n}, c = x_{j,n}, d = x_{j,m}."""

    a: int
    b: int
    c: int
    d: int


@dataclass
class AudioBank:
    """MFCC windows [F,28,12] (and, when asked, mel windows [F,80,16]) of some clips, concatenated; labels;
    DTW alignments within (actor, sentence)."""

    clip_ids: list[str]
    actors: np.ndarray
    sentences: np.ndarray
    emotions: np.ndarray  # names
    levels: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    mfcc: np.ndarray
    groups: dict[tuple[str, int], dict[tuple[str, int], int]] = field(default_factory=dict)
    warps: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (a, b) -> b frame of each a frame
    dtw_costs: list[float] = field(default_factory=list)
    mel: np.ndarray | None = None
    prosody: np.ndarray | None = None  # [F,4,3] (pipeline.audio.prosody), when asked
    voices: np.ndarray | None = None  # [clips,2]: each clip's speaker's voice baseline

    @classmethod
    def load(cls, audio_store: Path, clips: pd.DataFrame, *, align: bool = True, with_mel: bool = False,
             prosody_store: Path | None = None) -> AudioBank:
        if clips.empty:
            raise InputError(audio_store, "no clips to load (check the corpus split)")
        root = open_store(audio_store)
        for name in ("mfcc", "mel") if with_mel else ("mfcc",):
            if name not in root:
                raise InputError(audio_store, f"no '{name}' array (not an audio_features store)")
        index = read_index(audio_store).set_index("clip_id")
        missing = sorted(set(clips.clip_id) - set(index.index))
        if missing:
            raise InputError(audio_store, f"clip '{missing[0]}' of the manifest is not in the store "
                                          "(re-run audio_features)")
        rows = index.loc[list(clips.clip_id)]
        if not (np.array_equal(rows.start.to_numpy(), clips.start.to_numpy())
                and np.array_equal(rows.stop.to_numpy(), clips.stop.to_numpy())):
            raise InputError(audio_store, "per-clip index differs from the corpus manifest (re-run audio_features)")
        mfcc = root["mfcc"]
        blocks = [np.asarray(mfcc[int(r.start):int(r.stop)], dtype=np.float32) for r in clips.itertuples()]
        if any(not np.isfinite(b).all() for b in blocks):
            raise InputError(audio_store, "mfcc has non-finite values")
        lengths = np.array([len(b) for b in blocks], dtype=np.int64)
        mel = None
        if with_mel:
            mel = np.concatenate([np.asarray(root["mel"][int(r.start):int(r.stop)], dtype=np.float32)
                                  for r in clips.itertuples()])
            if not np.isfinite(mel).all():
                raise InputError(audio_store, "mel has non-finite values")
        bank = cls(clip_ids=list(clips.clip_id), actors=clips.actor.to_numpy().astype(str),
                   sentences=clips.sentence_id.to_numpy().astype(np.int64),
                   emotions=clips.emotion.to_numpy().astype(str), levels=clips.level.to_numpy().astype(np.int64),
                   starts=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64), lengths=lengths,
                   mfcc=np.concatenate(blocks), mel=mel)
        if prosody_store is not None:
            bank.attach_prosody(ProsodyStore(prosody_store))
        for k in range(len(bank.clip_ids)):
            bank.groups.setdefault(bank.group_of(k), {})[bank.cell_of(k)] = k
        if align:
            bank.align_groups()
        return bank

    def __len__(self) -> int:
        return len(self.clip_ids)

    def group_of(self, k: int) -> tuple[str, int]:
        return str(self.actors[k]), int(self.sentences[k])

    def cell_of(self, k: int) -> tuple[str, int]:
        return str(self.emotions[k]), int(self.levels[k])

    def clip(self, k: int) -> np.ndarray:
        s = int(self.starts[k])
        return self.mfcc[s:s + int(self.lengths[k])]

    def clip_mel(self, k: int) -> np.ndarray:
        if self.mel is None:
            raise InputError(None, "mel windows were not loaded (AudioBank.load(..., with_mel=True))")
        s = int(self.starts[k])
        return self.mel[s:s + int(self.lengths[k])]

    def attach_prosody(self, store: ProsodyStore) -> None:
        """Every clip's prosody track and its actor's voice baseline, from the prosody stage's store."""
        tracks = [store.clip(c) for c in self.clip_ids]
        if [len(t) for t in tracks] != list(self.lengths):
            raise InputError(store.path, "prosody and audio features differ in clip length (re-run the prosody stage)")
        self.prosody = np.concatenate(tracks)
        self.voices = np.stack([store.voice(a) for a in self.actors])

    def clip_prosody(self, k: int) -> np.ndarray:
        if self.prosody is None:
            raise InputError(None, "prosody was not loaded (AudioBank.load(..., prosody_store=...))")
        s = int(self.starts[k])
        return self.prosody[s:s + int(self.lengths[k])]

    def emotion_clip(self, k: int, kind: str) -> np.ndarray:
        """What E_e reads of clip k: its MFCC windows, or its mel windows for kind 'mel'."""
        return self.clip_mel(k) if kind == "mel" else self.clip(k)

    def align_groups(self) -> None:
        """DTW every pair of takes within each (actor, sentence) group, once, both directions."""
        for members in self.groups.values():
            for a, b in combinations(sorted(members.values()), 2):
                a_to_b, b_to_a, cost = align_clips(self.clip(a), self.clip(b))
                self.warps[(a, b)], self.warps[(b, a)] = a_to_b, b_to_a
                self.dtw_costs.append(cost)

    def warp(self, a: int, b: int) -> np.ndarray:
        """Frame of clip b matched to each frame of clip a (identity for a == b)."""
        return np.arange(self.lengths[a]) if a == b else self.warps[(a, b)]

    def labels(self, emotions: Sequence[str]) -> np.ndarray:
        order = {e: i for i, e in enumerate(emotions)}
        unknown = sorted(set(self.emotions) - set(order))
        if unknown:
            raise InputError(None, f"emotion '{unknown[0]}' is not one of the model's classes {list(emotions)}")
        return np.array([order[e] for e in self.emotions], dtype=np.int64)


# ------------------------------------------------------------------------------------------- sampling


def sample_quad(bank: AudioBank, rng: np.random.Generator, cross_actor_prob: float) -> Quad:
    """A quad: actor a says sentence i in cells m and n (different emotions); sentence j (of actor a, or,
    with probability `cross_actor_prob`, of another actor) said in the same two cells.

    The emotion source of a cross-reconstruction is then another sentence and, for cross-actor quads,
    another voice, so e_e cannot rely on the words or the speaker. Falls back to any other group with
    both cells, then to the same group (j = i), when the corpus offers nothing better.
    """
    keys = sorted(bank.groups)
    for _ in range(100):
        group = keys[int(rng.integers(len(keys)))]
        cells = sorted(bank.groups[group])
        if len(cells) < 2:
            continue
        m, n = (cells[int(k)] for k in rng.choice(len(cells), size=2, replace=False))
        if m[0] != n[0]:
            break
    else:
        raise InputError(None, "no (actor, sentence) with two emotions to pair (need >= 2 emotions per sentence)")
    others = [g for g in keys if g != group and m in bank.groups[g] and n in bank.groups[g]]
    want_other_actor = rng.random() < cross_actor_prob
    preferred = [g for g in others if (g[0] != group[0]) == want_other_actor]
    pool = preferred or others or [group]
    other = pool[int(rng.integers(len(pool)))]
    return Quad(a=bank.groups[group][m], b=bank.groups[group][n], c=bank.groups[other][n], d=bank.groups[other][m])


def segment(bank: AudioBank, k: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """Frame indices of a random contiguous `length`-frame segment of clip k (the whole clip if shorter)."""
    n = int(bank.lengths[k])
    if n <= length:
        return np.arange(n)
    start = int(rng.integers(n - length + 1))
    return np.arange(start, start + length)


@dataclass
class QuadBatch:
    """Tensors of Q quads: content segments of a and c (L frames) and the aligned frames of b and d;
    emotion crops (LE frames, MFCC or mel windows) of a, b, c, d; emotion labels of a, b, c, d."""

    seg_a: torch.Tensor  # [Q,L,28,12] x_{i,m}
    seg_b: torch.Tensor  # x_{i,n} at the frames aligned to seg_a
    seg_c: torch.Tensor  # x_{j,n}
    seg_d: torch.Tensor  # x_{j,m} at the frames aligned to seg_c
    emo: torch.Tensor  # [4Q,LE,28,12] (or [4Q,LE,80,16]): a, b, c, d crops
    labels: torch.Tensor  # [4Q]
    prosody: torch.Tensor | None = None  # [4Q,LE,4,3] of the same crops, when the bank has prosody
    voice: torch.Tensor | None = None  # [4Q,2] their speakers' voice baselines


def sample_batch(bank: AudioBank, labels: np.ndarray, rng: np.random.Generator, quads: int, segment_frames: int,
                 emotion_frames: int, cross_actor_prob: float, emotion_input: str = "mfcc") -> QuadBatch:
    picked = [sample_quad(bank, rng, cross_actor_prob) for _ in range(quads)]
    length = min(segment_frames, min(min(int(bank.lengths[q.a]), int(bank.lengths[q.c])) for q in picked))
    seg_a, seg_b, seg_c, seg_d = [], [], [], []
    for q in picked:
        fa, fc = segment(bank, q.a, length, rng), segment(bank, q.c, length, rng)
        seg_a.append(bank.clip(q.a)[fa])
        seg_b.append(bank.clip(q.b)[bank.warp(q.a, q.b)[fa]])
        seg_c.append(bank.clip(q.c)[fc])
        seg_d.append(bank.clip(q.d)[bank.warp(q.c, q.d)[fc]])
    emo_clips = [k for q in picked for k in (q.a, q.b, q.c, q.d)]
    emo_clips = emo_clips[0::4] + emo_clips[1::4] + emo_clips[2::4] + emo_clips[3::4]  # a..., b..., c..., d...
    emo_len = min(emotion_frames, min(int(bank.lengths[k]) for k in emo_clips))
    crops = [segment(bank, k, emo_len, rng) for k in emo_clips]
    emo = [bank.emotion_clip(k, emotion_input)[frames] for k, frames in zip(emo_clips, crops)]

    def stack(blocks: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(blocks))

    prosody = voice = None
    if bank.prosody is not None:
        prosody = stack([bank.clip_prosody(k)[frames] for k, frames in zip(emo_clips, crops)])
        voice = torch.from_numpy(bank.voices[emo_clips])
    return QuadBatch(stack(seg_a), stack(seg_b), stack(seg_c), stack(seg_d), stack(emo),
                     torch.from_numpy(labels[emo_clips]), prosody, voice)


def shard_quads(batch: QuadBatch) -> QuadBatch:
    """This rank's quads of a batch (pipeline.training.distributed): the segments' first dim is the quad, the
    emotion crops' is (a..., b..., c..., d...), so each of the four blocks is cut alike."""
    w = world()
    if not w.parallel:
        return batch

    def blocks(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else shard(x.unflatten(0, (4, -1)).transpose(0, 1), w).transpose(0, 1).flatten(0, 1)

    return QuadBatch(*(shard(t, w) for t in (batch.seg_a, batch.seg_b, batch.seg_c, batch.seg_d)),
                     blocks(batch.emo), blocks(batch.labels), blocks(batch.prosody), blocks(batch.voice))


def eval_quads(bank: AudioBank, seed: int, count: int) -> list[Quad]:
    """Seeded within-actor quads (EVP's setting: one speaker) for the held-out reconstruction errors."""
    rng = np.random.default_rng([seed, 303])
    return [sample_quad(bank, rng, cross_actor_prob=0.0) for _ in range(count)]
