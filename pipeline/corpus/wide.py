"""The wide pre-training set (stage wide_corpus): LRW/LRS2's role, rendered by the corpus engine.

EMMN pre-trains Audio2Mouth and the renderer on LRW, and its lip-sync expert and Wav2Lip come from LRS2,
because MEAD has few actors (paper §4.1). Neither can be downloaded here, so the default run renders a
stand-in with the same engine as the MEAD-shaped corpus: hundreds of identities (a seed namespace of their
own), thousands of phrases from the news grammar (corpus.phrases), every usable espeak-ng voice variant
under eight English accents with drawn pitch, range and rate, mostly neutral speech with some emotion
(news), natural head sway, speech nods and blinks, exact landmarks and render parameters.

Held-out = unseen faces, voices and sentences at once: held-out identities speak with voice variants no
training identity uses, and phrases each holding a word no training phrase holds.

The output folder has the corpus layout (frames.zarr, wav/, reference/, manifest/phonemes/actors
parquet), so every reader of data/corpus reads it too; `source: lrw` fills it from a real LRW tree
(corpus.lrw) instead.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import BaseParams, WideCorpusParams
from pipeline.core.errors import InputError
from pipeline.core.store import atomic_output, dir_size, write_json, write_parquet
from pipeline.core.timings import write_timings
from pipeline.corpus.build import seed_everything
from pipeline.corpus.builtin import (
    emotional_speech,
    render_store,
    write_references,
    write_speech,
)
from pipeline.corpus.controls import FACE_CONTROLS, MOUTH_CONTROLS
from pipeline.corpus.face import sample_identity
from pipeline.corpus.phrases import wide_phrases, words_of
from pipeline.corpus.plan import clip_name
from pipeline.corpus.sheet import identity_sheet
from pipeline.corpus.speech import available_variants, variant_gender
from pipeline.corpus.tracks import clip_controls
from pipeline.corpus.visemes import phoneme_class

ACCENTS = ("en", "en-US", "en-GB-x-rp", "en-GB-scotland", "en-US-nyc", "en-029", "en-GB-x-gbclan", "en-GB-x-gbcwmd")
# Variants that do not sound like a person speaking (robots, whispers, effects) are left out.
UNNATURAL = ("robo", "Robot", "whisper", "Demonic", "croak")
SEED_NAMESPACE = 0x3D3  # the MEAD-shaped corpus draws from [seed, 0xC0]: the two sets' identities are disjoint


@dataclass(frozen=True)
class Speaker:
    actor_id: str
    split: str  # train | test
    gender: str  # M | W
    identity_seed: int
    accent: str
    voice_variant: str
    pitch: float
    pitch_range: float
    rate: float
    expressiveness: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class WideClip:
    clip_id: str
    actor_id: str
    emotion: str
    level: int
    sentence_id: int  # index into train phrases + held-out phrases
    split: str
    track_seed: int


def voice_pools(test_share: float, seed: int) -> dict[tuple[str, str], tuple[str, ...]]:
    """{(split, gender): variants}: every natural espeak-ng variant, a `test_share` of each gender's
    (at least one) reserved for held-out speakers."""
    rng = np.random.default_rng([seed, SEED_NAMESPACE, 1])
    pools = {}
    for gender in ("M", "W"):
        variants = [v for v in available_variants()
                    if not any(u in v for u in UNNATURAL) and variant_gender(v) == gender]
        order = [variants[i] for i in rng.permutation(len(variants))]
        n_test = min(max(1, math.ceil(test_share * len(variants))), len(variants) - 1)  # both splits get voices
        pools["test", gender], pools["train", gender] = tuple(sorted(order[:n_test])), tuple(sorted(order[n_test:]))
    return pools


def plan_wide(p: WideCorpusParams, seed: int) -> tuple[list[Speaker], list[WideClip], list[str], list[str]]:
    """Speakers, clips, training phrases and held-out phrases of the wide set; deterministic in `seed`."""
    train_phrases, test_phrases = wide_phrases(p.train_phrases, p.test_phrases, seed)
    for split, n, pool in (("train", p.clips_per_identity, train_phrases),
                           ("test", p.test_clips_per_identity, test_phrases)):
        if n > len(pool):
            raise InputError("params.yaml", f"wide_corpus: {n} clips per {split} identity but only {len(pool)} "
                                            f"{split} phrases")
    emotional = [e for e in p.emotions if e != "neutral"]
    if p.emotion_share > 0 and not emotional:
        raise InputError("params.yaml", "wide_corpus.emotion_share > 0 needs an emotion besides neutral in "
                                        "wide_corpus.emotions")
    if not 0 <= p.test_voice_share < 1:
        raise InputError("params.yaml", f"wide_corpus.test_voice_share must be in [0, 1), not {p.test_voice_share}")
    voices = voice_pools(p.test_voice_share, seed)
    rng = np.random.default_rng([seed, SEED_NAMESPACE])
    # phrases are dealt from a shuffled deck per split, so every phrase is said once before any is said twice
    decks = {"train": rng.permutation(len(train_phrases)), "test": rng.permutation(len(test_phrases))}
    dealt = {"train": 0, "test": 0}
    speakers, clips = [], []
    for i in range(p.train_identities + p.test_identities):
        split = "train" if i < p.train_identities else "test"
        gender = "M" if rng.random() < 0.5 else "W"
        speaker = Speaker(
            actor_id=f"L{i + 1:04d}",
            split=split,
            gender=gender,
            identity_seed=int(rng.integers(2**31)),
            accent=str(rng.choice(ACCENTS)),
            voice_variant=str(rng.choice(voices[split, gender])),
            pitch=float(rng.uniform(22, 50) if gender == "M" else rng.uniform(45, 78)),
            pitch_range=float(rng.uniform(30, 75)),
            rate=float(rng.uniform(135, 195)),
            expressiveness=tuple((c, float(rng.uniform(0.7, 1.3))) for c in MOUTH_CONTROLS + FACE_CONTROLS),
        )
        speakers.append(speaker)
        n_clips, offset = ((p.clips_per_identity, 0) if split == "train"
                           else (p.test_clips_per_identity, len(train_phrases)))
        deck = decks[split]
        picks = deck[(dealt[split] + np.arange(n_clips)) % len(deck)]  # distinct: n_clips <= len(deck)
        dealt[split] += n_clips
        for j, phrase in enumerate(sorted(picks)):
            if rng.random() < p.emotion_share:
                emotion, level = str(rng.choice(emotional)), int(rng.choice(p.levels))
            else:
                emotion, level = "neutral", 1
            sentence_id = int(phrase) + offset
            clips.append(WideClip(
                clip_name(speaker.actor_id, emotion, level, sentence_id), speaker.actor_id, emotion, level,
                sentence_id, split, int(np.random.SeedSequence([seed, SEED_NAMESPACE, i, j]).generate_state(1)[0])))
    return speakers, clips, train_phrases, test_phrases


def generate_wide(out_dir: str | Path, base: BaseParams, p: WideCorpusParams) -> pd.DataFrame:
    """Render the whole wide set into out_dir (a fresh temp dir); return the manifest."""
    out_dir = Path(out_dir)
    (out_dir / "wav").mkdir(parents=True, exist_ok=True)
    speakers, clips, train_phrases, test_phrases = plan_wide(p, base.seed)
    phrases = train_phrases + test_phrases
    by_id = {s.actor_id: s for s in speakers}
    identities = {s.actor_id: sample_identity(np.random.default_rng(s.identity_seed)) for s in speakers}

    # speech in-process (espeak holds global state), then control tracks
    controls, phoneme_rows = [], []
    for clip in clips:
        s = by_id[clip.actor_id]
        speech = emotional_speech(phrases[clip.sentence_id], clip.emotion, clip.level, variant=s.voice_variant,
                                  pitch=s.pitch, pitch_range=s.pitch_range, rate=s.rate, accent=s.accent)
        visemes, nods, rows = write_speech(out_dir / "wav" / f"{clip.clip_id}.wav", clip.clip_id, speech, base,
                                           p.max_frames, np.random.default_rng([clip.track_seed, 1]))
        phoneme_rows += rows
        controls.append(clip_controls(
            seed=clip.track_seed, emotion=clip.emotion, level=clip.level, visemes=visemes, fps=base.fps,
            blink_rate=p.blink_rate, actor_expressiveness=dict(s.expressiveness), nods=nods,
            head_speech_coupling=p.head_speech_coupling))

    writer = render_store(out_dir / "frames.zarr", [c.clip_id for c in clips],
                          [(identities[c.actor_id], ctrl, p.size) for c, ctrl in zip(clips, controls)],
                          "wide_corpus", base, p)
    write_references(out_dir, [s.actor_id for s in speakers], identities, p.size)

    manifest = pd.DataFrame([{
        "clip_id": c.clip_id, "actor": c.actor_id, "emotion": c.emotion, "level": c.level,
        "sentence_id": c.sentence_id, "text": phrases[c.sentence_id], "frames": len(ctrl), "fps": base.fps,
        "split": c.split, "kind": "real", "source_clip_id": c.clip_id, "start": int(s), "stop": int(e),
        "wav_path": f"wav/{c.clip_id}.wav", "frames_store": "frames.zarr",
    } for c, ctrl, s, e in zip(clips, controls, writer.starts, writer.stops)])
    write_parquet(manifest, out_dir / "manifest.parquet")
    write_parquet(pd.DataFrame(phoneme_rows), out_dir / "phonemes.parquet")
    actor_rows = [{**{k: v for k, v in dataclasses.asdict(s).items() if k != "expressiveness"},
                   "expressiveness": json.dumps(dict(s.expressiveness))} for s in speakers]
    write_parquet(pd.DataFrame(actor_rows), out_dir / "actors.parquet")
    return manifest


def coverage_report(out_dir: str | Path) -> dict:
    """What the set covers, per split: identities, voices, phrases, words, phonemes and visemes (share of
    phoneme time per viseme class), and how much of held-out is unseen in training."""
    out_dir = Path(out_dir)
    manifest = pd.read_parquet(out_dir / "manifest.parquet")
    actors = pd.read_parquet(out_dir / "actors.parquet")
    phonemes = pd.read_parquet(out_dir / "phonemes.parquet")
    split_of = dict(zip(manifest.clip_id, manifest.split))
    phonemes = phonemes.assign(split=phonemes.clip_id.map(split_of),
                               base=phonemes.phoneme.str.replace(r"['%,=!]", "", regex=True),
                               seconds=phonemes.end_s - phonemes.start_s)
    phonemes = phonemes[phonemes.base != "_"]
    out: dict = {}
    for split in ("train", "test"):
        m, a, ph = manifest[manifest.split == split], actors[actors.split == split], phonemes[phonemes.split == split]
        if m.empty:
            continue
        words = Counter(w for t in m.text for w in words_of(t))
        classes = ph.assign(cls=ph.base.map(phoneme_class)).groupby("cls").seconds.sum()
        entry = {
            "identities": int(m.actor.nunique()),
            "clips": int(len(m)),
            "frames": int(m.frames.sum()),
            "distinct_sentences": int(m.text.nunique()),
            "distinct_words": len(words),
            "emotion_share": {e: round(float(v), 4) for e, v in m.emotion.value_counts(normalize=True).items()},
        }
        if "voice_variant" in a:
            entry |= {"voice_variants": int(a.voice_variant.nunique()), "accents": int(a.accent.nunique()),
                      "voices": int(len(a[["voice_variant", "accent"]].drop_duplicates()))}
        if len(ph):
            entry |= {"distinct_phonemes": int(ph.base.nunique()), "phonemes": sorted(ph.base.unique().tolist()),
                      "viseme_time_share": {c: round(float(v / classes.sum()), 4) for c, v in classes.items()}}
        out[split] = entry
    if "train" in out and "test" in out:
        train, test = manifest[manifest.split == "train"], manifest[manifest.split == "test"]
        train_words = {w for t in train.text for w in words_of(t)}
        out["held_out_unseen"] = {
            "sentences_in_training": int(test.text.isin(set(train.text)).sum()),
            "identities_in_training": int(test.actor.isin(set(train.actor)).sum()),
            "share_of_sentences_with_an_unseen_word": round(float(np.mean(
                [bool(set(words_of(t)) - train_words) for t in test.text])), 4),
        }
        if "voice_variant" in actors:
            tr, te = actors[actors.split == "train"], actors[actors.split == "test"]
            out["held_out_unseen"]["voice_variants_in_training"] = int(
                te.voice_variant.isin(set(tr.voice_variant)).sum())
    return out


def build_wide(out_dir: Path, base: BaseParams, p: WideCorpusParams, params_path: Path = Path("params.yaml")) -> dict:
    """Write the wide set to out_dir atomically; return its summary with the coverage report."""
    seed_everything(base.seed)
    with atomic_output(out_dir) as tmp:
        if p.source == "builtin":
            manifest = generate_wide(tmp, base, p)
        elif p.source == "lrw":
            from pipeline.corpus.lrw import ingest_lrw

            if not p.lrw_root:
                raise InputError(params_path, "wide_corpus.source is 'lrw' but wide_corpus.lrw_root is not set")
            manifest = ingest_lrw(tmp, base, p)
        else:
            raise InputError(params_path, f"wide_corpus.source must be 'builtin' or 'lrw', not '{p.source}'")
        coverage = coverage_report(tmp)
    return {
        "source": p.source,
        "clips": int(len(manifest)),
        "identities": int(manifest.actor.nunique()),
        "frames": int(manifest.frames.sum()),
        "hours_of_video": round(float(manifest.frames.sum() / base.fps / 3600), 3),
        "size": p.size,
        "bytes_on_disk": dir_size(out_dir),
        "coverage": coverage,
    }


def run_wide_corpus(out_dir: Path, sheet: Path, report: Path, base: BaseParams, p: WideCorpusParams,
                    params_path: Path = Path("params.yaml")) -> dict:
    """`build_wide`, then its timings file, the identity sheet and the summary report; return the summary."""
    t0 = time.monotonic()
    summary = build_wide(out_dir, base, p, params_path)
    write_timings(out_dir, {"seconds": round(time.monotonic() - t0, 1)})
    identity_sheet(out_dir, sheet)
    write_json(report, summary)
    return summary
