"""Who says what, how: the actor list, sentence assignment, splits and clip list of the built-in corpus.

Training actors speak training sentences; held-out actors speak held-out sentences that no training
actor says. Every actor says the same sentence list in every emotion and level (as in MEAD).
Counterfactual clips exist for training actors: clip (actor, emotion, level, sentence a) re-rendered
with sentence b's mouth and b's audio, keeping a's expression, blinks and head motion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.config import CorpusParams
from pipeline.corpus.controls import FACE_CONTROLS, MOUTH_CONTROLS
from pipeline.corpus.sentences import SENTENCES

HELD_OUT_SENTENCES = 10  # the last sentences of SENTENCES are reserved for held-out actors
VOICE_VARIANTS = {"M": ("m1", "m2", "m3", "m4", "m5", "m6", "m7"), "W": ("f1", "f2", "f3", "f4", "f5")}


@dataclass(frozen=True)
class Actor:
    actor_id: str
    split: str  # train | test
    gender: str  # M | W (MEAD's id letters)
    identity_seed: int
    voice_variant: str
    pitch: float
    pitch_range: float
    rate: float
    expressiveness: tuple[tuple[str, float], ...]  # per-control scale of emotion targets
    sentence_ids: tuple[int, ...]


@dataclass(frozen=True)
class ClipSpec:
    clip_id: str
    actor_id: str
    emotion: str
    level: int
    sentence_id: int  # the sentence whose audio and mouth the clip shows
    split: str
    kind: str  # real | counterfactual
    source_clip_id: str  # for counterfactuals: the clip whose expression/pose track is kept; else itself
    track_seed: int

    @property
    def audio_key(self) -> tuple[str, str, int, int]:
        return (self.actor_id, self.emotion, self.level, self.sentence_id)


def clip_name(actor: str, emotion: str, level: int, sentence: int) -> str:
    return f"{actor}_{emotion}_l{level}_{sentence:03d}"


def plan_corpus(p: CorpusParams, seed: int) -> tuple[list[Actor], list[ClipSpec]]:
    rng = np.random.default_rng([seed, 0xC0])
    n_train_pool = len(SENTENCES) - HELD_OUT_SENTENCES
    if p.train_sentences > n_train_pool or p.test_sentences > HELD_OUT_SENTENCES:
        raise ValueError(f"at most {n_train_pool} training and {HELD_OUT_SENTENCES} held-out sentences per actor")
    actors = []
    for i in range(p.train_actors + p.test_actors):
        split = "train" if i < p.train_actors else "test"
        gender = "M" if rng.random() < 0.5 else "W"
        pool = (np.arange(n_train_pool) if split == "train"
                else np.arange(n_train_pool, len(SENTENCES)))
        n_sent = p.train_sentences if split == "train" else p.test_sentences
        sentences = tuple(int(s) for s in np.sort(rng.choice(pool, n_sent, replace=False)))
        expressive = tuple((c, float(rng.uniform(0.8, 1.2))) for c in MOUTH_CONTROLS + FACE_CONTROLS)
        actors.append(Actor(
            actor_id=f"{gender}{i + 1:03d}",
            split=split,
            gender=gender,
            identity_seed=int(rng.integers(2**31)),
            voice_variant=str(rng.choice(VOICE_VARIANTS[gender])),
            pitch=float(rng.uniform(30, 48) if gender == "M" else rng.uniform(52, 70)),
            pitch_range=float(rng.uniform(40, 65)),
            rate=float(rng.uniform(145, 175)),
            expressiveness=expressive,
            sentence_ids=sentences,
        ))

    clips: list[ClipSpec] = []
    for ai, actor in enumerate(actors):
        for ei, emotion in enumerate(p.emotions):
            for level in ((1,) if emotion == "neutral" else p.levels):
                real = []
                for s in actor.sentence_ids:
                    track_seed = int(np.random.SeedSequence([seed, ai, ei, level, s]).generate_state(1)[0])
                    name = clip_name(actor.actor_id, emotion, level, s)
                    real.append(ClipSpec(name, actor.actor_id, emotion, level, s, actor.split, "real", name, track_seed))
                clips += real
                if actor.split != "train":
                    continue
                n_sent = len(real)
                for j, src in enumerate(real):
                    for k in range(1, min(p.counterfactuals, n_sent - 1) + 1):
                        other = real[(j + k) % n_sent].sentence_id
                        clips.append(ClipSpec(
                            f"{src.clip_id}_cf{other:03d}", actor.actor_id, emotion, level, other,
                            actor.split, "counterfactual", src.clip_id, src.track_seed))
    return actors, clips
