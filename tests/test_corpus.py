"""The built-in corpus: determinism, structure, and that its faces move the way the labels say."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import soundfile as sf
import zarr

from pipeline.corpus.build import build_corpus
from pipeline.corpus.controls import ALL_CONTROLS
from pipeline.corpus.sentences import SENTENCES
from pipeline.corpus.speech import PhonemeEvent
from pipeline.corpus.visemes import frame_phoneme_classes
from tests.conftest import tiny_section

INNER_TOP, INNER_BOTTOM = 62, 66  # inner-lip midpoints (dlib order)
CORNERS = (48, 54)


def _digest(corpus_dir) -> str:
    h = hashlib.sha256()
    root = zarr.open_group(corpus_dir / "frames.zarr", mode="r")
    for name in ("frames", "landmarks", "landmarks_frontal", "render_params", "reference_frames"):
        h.update(np.ascontiguousarray(root[name][:]).tobytes())
    for wav in sorted((corpus_dir / "wav").glob("*.wav")):
        h.update(wav.read_bytes())
    h.update(pd.read_parquet(corpus_dir / "manifest.parquet").to_csv().encode())
    return h.hexdigest()


def test_same_seed_gives_identical_corpus_and_other_seed_differs(tiny_corpus, tmp_path):
    again = tmp_path / "again"
    build_corpus(again, tiny_section("base"), tiny_section("corpus"))
    assert _digest(again) == _digest(tiny_corpus)
    other = tmp_path / "other"
    build_corpus(other, tiny_section("base", seed=99), tiny_section("corpus", train_actors=1, test_actors=0))
    root_a = zarr.open_group(tiny_corpus / "frames.zarr", mode="r")
    root_b = zarr.open_group(other / "frames.zarr", mode="r")
    assert not np.array_equal(root_a["reference_frames"][0], root_b["reference_frames"][0])


def test_manifest_structure_and_splits(tiny_corpus):
    p = tiny_section("corpus")
    m = pd.read_parquet(tiny_corpus / "manifest.parquet")
    for col in ("clip_id", "actor", "emotion", "level", "sentence_id", "text", "frames", "fps", "split", "start",
                "stop", "wav_path", "kind", "source_clip_id"):
        assert col in m.columns
    assert m.clip_id.is_unique
    assert (m.stop - m.start == m.frames).all()
    real = m[m.kind == "real"]
    assert set(real.emotion) == set(p.emotions)
    assert set(real[real.emotion == "neutral"].level) == {1}
    # the same sentence list in every emotion, per actor
    for _, g in real.groupby("actor"):
        lists = g.groupby(["emotion", "level"]).sentence_id.apply(lambda s: tuple(sorted(s)))
        assert lists.nunique() == 1
    train_sent = set(real[real.split == "train"].sentence_id)
    test_sent = set(real[real.split == "test"].sentence_id)
    assert train_sent and test_sent and not (train_sent & test_sent)
    assert set(real[real.split == "train"].actor).isdisjoint(set(real[real.split == "test"].actor))
    assert (m.text == [SENTENCES[s] for s in m.sentence_id]).all()
    # counterfactuals only for training actors, each pointing at a real source clip of the same condition
    cf = m[m.kind == "counterfactual"]
    assert len(cf) and (cf.split == "train").all()
    src = real.set_index("clip_id").loc[cf.source_clip_id]
    assert (src.emotion.values == cf.emotion.values).all() and (src.sentence_id.values != cf.sentence_id.values).all()


def test_wavs_are_16k_and_exactly_aligned_to_frames(tiny_corpus):
    m = pd.read_parquet(tiny_corpus / "manifest.parquet")
    for row in m.head(6).itertuples():
        audio, sr = sf.read(tiny_corpus / row.wav_path)
        assert sr == 16000 and audio.ndim == 1
        assert len(audio) == row.frames * 640
        assert np.abs(audio).max() > 0.05


def _frontal(corpus, row) -> np.ndarray:
    root = zarr.open_group(corpus / "frames.zarr", mode="r")
    return root["landmarks_frontal"][row.start:row.stop]


def test_mouth_opens_on_vowels_and_closes_on_bilabials(tiny_corpus):
    """Measured from the stored landmarks against the stored phoneme events."""
    m = pd.read_parquet(tiny_corpus / "manifest.parquet")
    events = pd.read_parquet(tiny_corpus / "phonemes.parquet")
    gaps = {"vowel_open": [], "bilabial": []}
    for row in m[(m.kind == "real") & (m.emotion == "neutral")].itertuples():
        ev = events[events.clip_id == row.clip_id]
        phonemes = [PhonemeEvent(e.start_s, e.end_s, e.phoneme) for e in ev.itertuples()]
        classes = frame_phoneme_classes(phonemes, row.frames, row.fps)
        lm = _frontal(tiny_corpus, row)
        gap = lm[:, INNER_BOTTOM, 1] - lm[:, INNER_TOP, 1]
        for i, c in enumerate(classes):
            if c in gaps:
                gaps[c].append(gap[i])
    open_gap, closed_gap = np.mean(gaps["vowel_open"]), np.mean(gaps["bilabial"])
    print(f"inner-lip gap (px): open vowels {open_gap:.2f} (n={len(gaps['vowel_open'])}), "
          f"bilabials {closed_gap:.2f} (n={len(gaps['bilabial'])})")
    assert len(gaps["vowel_open"]) >= 5 and len(gaps["bilabial"]) >= 3
    assert open_gap > 3 * max(closed_gap, 0.05)
    assert closed_gap < 0.6


def _condition_landmarks(corpus, actor, emotion):
    m = pd.read_parquet(corpus / "manifest.parquet")
    rows = m[(m.kind == "real") & (m.actor == actor) & (m.emotion == emotion)]
    return np.concatenate([_frontal(corpus, r) for r in rows.itertuples()])


def test_emotions_shape_the_mouth(tiny_corpus):
    m = pd.read_parquet(tiny_corpus / "manifest.parquet")
    for actor in m.actor.unique():
        happy, sad = (_condition_landmarks(tiny_corpus, actor, e) for e in ("happy", "sad"))
        neutral, surprised = (_condition_landmarks(tiny_corpus, actor, e) for e in ("neutral", "surprised"))

        def corner_lift(lm):  # corners above the lip centre line, px (image y grows downwards)
            centre = lm[:, [51, 57], 1].mean(axis=1)
            return float(np.mean(centre - lm[:, CORNERS, 1].mean(axis=1)))

        def jaw(lm):  # chin below the nose tip, px
            return float(np.mean(lm[:, 8, 1] - lm[:, 33, 1]))

        print(f"{actor}: corner lift happy {corner_lift(happy):.2f} sad {corner_lift(sad):.2f}; "
              f"jaw surprised {jaw(surprised):.2f} neutral {jaw(neutral):.2f}")
        assert corner_lift(happy) > corner_lift(sad) + 1.0
        assert jaw(surprised) > jaw(neutral) + 0.5


def test_counterfactual_keeps_expression_and_pose_but_not_mouth(tiny_corpus):
    m = pd.read_parquet(tiny_corpus / "manifest.parquet").set_index("clip_id")
    root = zarr.open_group(tiny_corpus / "frames.zarr", mode="r")
    params = root["render_params"]
    names = list(root.attrs["render_params"])
    assert names == list(ALL_CONTROLS)
    cf = m[m.kind == "counterfactual"].iloc[0]
    src = m.loc[cf.source_clip_id]
    n = min(cf.frames, src.frames)
    a, b = params[src.start:src.start + n], params[cf.start:cf.start + n]
    keep = [names.index(c) for c in ("yaw", "pitch", "roll", "tx", "ty", "blink", "brow_raise", "mouth_corner")]
    np.testing.assert_array_equal(a[:, keep], b[:, keep])
    jaw = names.index("viseme_jaw")
    assert np.abs(a[:, jaw] - b[:, jaw]).mean() > 0.05
    # the counterfactual's mouth equals the real clip of its sentence (same visemes), its audio is that clip's
    twin = m[(m.kind == "real") & (m.actor == cf.actor) & (m.emotion == cf.emotion) & (m.level == cf.level)
             & (m.sentence_id == cf.sentence_id)].iloc[0]
    np.testing.assert_array_equal(params[cf.start:cf.stop, jaw], params[twin.start:twin.stop, jaw])
    assert cf.wav_path == twin.wav_path


def test_render_params_and_landmarks_are_finite_and_in_frame(tiny_corpus):
    root = zarr.open_group(tiny_corpus / "frames.zarr", mode="r")
    size = root.attrs["size"]
    lm = root["landmarks"][:]
    assert np.isfinite(lm).all() and lm.min() >= 0 and lm.max() <= size
    assert np.isfinite(root["render_params"][:]).all()
    assert root["frames"].dtype == np.uint8 and root["frames"].shape[1:] == (size, size, 3)
    assert root["reference_frames"].shape[0] == len(root["reference_actor"][:])


# --------------------------------------------------------------- same seed, same bytes, on another machine

BUILD = ("import sys; from pathlib import Path; from pipeline.corpus.build import build_corpus; "
         "from tests.conftest import tiny_section; "
         "build_corpus(Path(sys.argv[1]), tiny_section('base'), tiny_section('corpus'))")


def _build_elsewhere(out, **env):
    """The tiny corpus built in a fresh process whose libraries take other CPU paths (env)."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    subprocess.run([sys.executable, "-c", BUILD, str(out)], check=True, cwd=ROOT, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def _file_digests(corpus_dir):
    return {str(p.relative_to(corpus_dir)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(corpus_dir.rglob("*")) if p.is_file()}


def test_corpus_bytes_do_not_depend_on_cpu_dispatch_or_threads(tiny_corpus, tmp_path):
    """What differs between x86 machines with AVX2 or newer: IPP's code path (AVX-512 vs AVX2), OpenBLAS's
    kernel, NumPy's SIMD dispatch, thread counts. None of it may change a byte."""
    other = tmp_path / "other"
    _build_elsewhere(other, OPENCV_IPP="sse42", OPENBLAS_CORETYPE="Prescott", NPY_DISABLE_CPU_FEATURES="X86_V3",
                     OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENCV_FOR_THREADS_NUM="1")
    assert _file_digests(other) == _file_digests(tiny_corpus)


def test_corpus_on_a_cpu_without_avx2_differs_by_two_levels_at_most(tiny_corpus, tmp_path):
    """OpenCV's own AVX2 code fuses multiply-adds (FMA) in GaussianBlur/resize; a CPU without AVX2/FMA
    rounds some pixels the other way: 337 of 26.8M values by 1, one by 2 (tiny profile with speech nods)."""
    other = tmp_path / "other"
    _build_elsewhere(other, OPENCV_CPU_DISABLE="AVX2,FMA3,AVX,FP16", OPENCV_LOG_LEVEL="ERROR")
    a = zarr.open_group(tiny_corpus / "frames.zarr", mode="r")
    b = zarr.open_group(other / "frames.zarr", mode="r")
    for name in ("frames", "reference_frames"):
        diff = np.abs(a[name][:].astype(np.int16) - b[name][:].astype(np.int16))
        assert diff.max() <= 2 and (diff > 1).sum() <= 4 and (diff > 0).mean() < 1e-4, name
    for name in ("landmarks", "landmarks_frontal", "render_params", "reference_landmarks"):
        np.testing.assert_array_equal(a[name][:], b[name][:])
    digests, theirs = _file_digests(tiny_corpus), _file_digests(other)
    same = {k for k in digests if not k.startswith(("frames.zarr/frames/", "frames.zarr/reference_frames/",
                                                    "reference/"))}
    assert {k: theirs[k] for k in same} == {k: digests[k] for k in same}
