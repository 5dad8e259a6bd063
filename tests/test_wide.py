"""The wide pre-training set (stage wide_corpus): phrase grammar, speaker/voice plan, speech nods, LRW-style
windows, the built-in stage on the tiny profile, and LRW ingest on a small fake tree with LRW's layout."""

from __future__ import annotations

import hashlib
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml
import zarr
from typer.testing import CliRunner

from pipeline.core.config import BaseParams, WideCorpusParams, load_section
from pipeline.core.errors import InputError
from pipeline.core.store import read_index
from pipeline.core.media import ffmpeg_exe
from pipeline.corpus.builtin import write_speech
from pipeline.corpus.controls import ALL_CONTROLS
from pipeline.corpus.emotions import intensity, style
from pipeline.corpus.face import render_frame, sample_identity
from pipeline.corpus.lrw import scan_lrw
from pipeline.corpus.phrases import reserved_words, wide_phrases, words_of
from pipeline.corpus.plan import plan_corpus
from pipeline.corpus.sentences import SENTENCES
from pipeline.corpus.speech import PhonemeEvent, synthesize
from pipeline.corpus.tracks import NOD_AMPLITUDE, clip_controls, speech_nods
from pipeline.corpus.visemes import viseme_tracks
from pipeline.corpus.wide import plan_wide
from stages.cli import app
from tests.conftest import ROOT, tiny_params_dict
from tests.lipsync_fixtures import tiny_audio  # noqa: F401  (fixture)
from tests.motion_fixtures import motion_inputs  # noqa: F401  (fixture)


def test_phrases_are_deterministic_distinct_and_held_out_ones_unseen():
    train, test = wide_phrases(400, 40, seed=7)
    assert (train, test) == wide_phrases(400, 40, seed=7)
    assert wide_phrases(400, 40, seed=8)[0] != train
    assert len(set(train)) == 400 and len(set(test)) == 40 and not set(train) & set(test)
    corpus = {" ".join(words_of(s)) for s in SENTENCES}
    assert not corpus & {" ".join(words_of(s)) for s in train + test}
    train_words = {w for s in train for w in words_of(s)}
    assert not train_words & reserved_words()  # training phrases never hold a reserved word
    assert all(set(words_of(s)) - train_words for s in test)  # each held-out phrase has an unseen word


def test_default_wide_set_is_wide():
    """The default params ask for LRW-like breadth: >= 200 identities, thousands of phrases."""
    p = load_section("wide_corpus", ROOT / "params.yaml")
    assert p.train_identities + p.test_identities >= 200 and p.train_phrases >= 1000
    speakers, clips, train, test = plan_wide(p, seed=1234)
    assert len({c.sentence_id for c in clips}) == min(p.train_phrases, p.train_identities * p.clips_per_identity) + min(
        p.test_phrases, p.test_identities * p.test_clips_per_identity)  # dealt: no phrase twice before all once
    corpus_actors, _ = plan_corpus(load_section("corpus", ROOT / "params.yaml"), 1234)
    assert not {a.identity_seed for a in corpus_actors} & {s.identity_seed for s in speakers}
    assert not {a.actor_id for a in corpus_actors} & {s.actor_id for s in speakers}
    held_out_voices = {s.voice_variant for s in speakers if s.split == "test"}
    assert held_out_voices and not held_out_voices & {s.voice_variant for s in speakers if s.split == "train"}
    assert len({(s.voice_variant, s.accent) for s in speakers}) >= 100
    neutral = np.mean([c.emotion == "neutral" for c in clips])
    assert abs(neutral - (1 - p.emotion_share)) < 0.05


def test_plan_is_deterministic_and_splits_do_not_share_phrases():
    p = WideCorpusParams(train_identities=20, test_identities=4, train_phrases=100, test_phrases=20)
    a, b = plan_wide(p, seed=3), plan_wide(p, seed=3)
    assert a == b
    speakers, clips, train, test = a
    assert len(clips) == 20 * p.clips_per_identity + 4 * p.test_clips_per_identity
    assert len({c.clip_id for c in clips}) == len(clips)
    for c in clips:
        assert (c.sentence_id < len(train)) == (c.split == "train")
        assert c.emotion != "neutral" or c.level == 1


def test_speech_nods_hand_computed():
    """A primary-stressed vowel at 0 s and a secondary one at 0.4 s, 10 fps: half-sine bumps of 0.4 s."""
    events = [PhonemeEvent(0.0, 0.1, "'a"), PhonemeEvent(0.1, 0.4, "t"), PhonemeEvent(0.4, 0.5, ",i")]
    nods = speech_nods(events, n_frames=10, fps=10.0)
    raw = np.zeros(10)
    raw[:4] = [math.sin(math.pi * (k + 0.5) / 4) for k in range(4)]  # t = 0.05 .. 0.35: phase (k + 0.5) / 4
    raw[4:8] += [0.5 * math.sin(math.pi * (k + 0.5) / 4) for k in range(4)]
    np.testing.assert_allclose(nods, 1.5 * np.tanh(raw / 1.5), atol=1e-12)
    assert nods[0] == pytest.approx(1.5 * math.tanh(math.sin(math.pi / 8) / 1.5))


def test_nods_add_to_the_pose_only_with_coupling():
    speech = synthesize("Bob bought a big map.")
    visemes = viseme_tracks(speech.phonemes, 40, fps=25.0)
    nods = speech_nods(speech.phonemes, 40, 25.0)
    kwargs = dict(seed=5, emotion="happy", level=3, visemes=visemes, fps=25.0, blink_rate=0.3)
    plain = clip_controls(**kwargs)
    np.testing.assert_array_equal(plain, clip_controls(**kwargs, nods=nods, head_speech_coupling=0.0))
    nodding = clip_controls(**kwargs, nods=nods, head_speech_coupling=1.0)
    gain = 1.0 + (style("happy").head.amplitude - 1.0) * intensity(3)
    pitch = ALL_CONTROLS.index("pitch")
    np.testing.assert_allclose(nodding[:, pitch] - plain[:, pitch], gain * NOD_AMPLITUDE["pitch"] * nods, atol=1e-5)
    changed = {ALL_CONTROLS[i] for i in np.flatnonzero(np.abs(nodding - plain).max(axis=0) > 0)}
    assert changed == set(NOD_AMPLITUDE) and nods.max() > 0.5


def test_lrw_style_window_keeps_coarticulation_and_timing(tmp_path):
    base = BaseParams()
    speech = synthesize("The mayor announced a new budget in London this morning.")
    full_frames = int(len(speech.samples) // 640)
    visemes, nods, rows = write_speech(tmp_path / "a.wav", "a", speech, base, max_frames=29,
                                       rng=np.random.default_rng(0))
    audio, sr = sf.read(tmp_path / "a.wav")
    assert sr == 16000 and len(audio) == 29 * 640 and len(nods) == 29
    full = viseme_tracks(speech.phonemes, full_frames, fps=25.0)
    starts = [s for s in range(full_frames - 28)
              if all(np.array_equal(full[k][s:s + 29], visemes[k]) for k in full)]
    assert len(starts) >= 1
    first = starts[0]
    np.testing.assert_array_equal(audio, sf.read(_full_wav(tmp_path, speech, base))[0][first * 640:(first + 29) * 640])
    assert rows and all(0 <= r["start_s"] <= r["end_s"] <= 29 / 25 for r in rows)


def _full_wav(tmp_path: Path, speech, base: BaseParams) -> Path:
    write_speech(tmp_path / "full.wav", "full", speech, base)
    return tmp_path / "full.wav"


def _tiny_params(tmp_path: Path, **wide) -> Path:
    params = tiny_params_dict()
    params["wide_corpus"].update(wide)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _run_wide(tmp_path: Path, params: Path, out: Path):
    return CliRunner().invoke(app, ["wide_corpus", "--params", str(params), "--out", str(out),
                                    "--sheet", str(tmp_path / "wide_sheet.png"), "--report", str(tmp_path / "w.json")])


def _digest(folder: Path) -> str:
    h = hashlib.md5()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return h.hexdigest()


def test_wide_stage_tiny_profile(tmp_path, tiny_corpus, tiny_wide):
    params = _tiny_params(tmp_path)
    result = _run_wide(tmp_path, params, tmp_path / "wide")
    assert result.exit_code == 0, result.output
    out = tmp_path / "wide"
    m = pd.read_parquet(out / "manifest.parquet")
    assert list(m.columns) == list(pd.read_parquet(tiny_corpus / "manifest.parquet").columns)  # corpus readers
    p = load_section("wide_corpus", params)
    assert len(m) == p.train_identities * p.clips_per_identity + p.test_identities * p.test_clips_per_identity
    assert m.frames.max() <= p.max_frames and (m.kind == "real").all()
    root = zarr.open_group(out / "frames.zarr", mode="r")
    assert root["frames"].shape[0] == m.frames.sum() and root["frames"].shape[1] == p.size
    assert root["render_params"].shape == (m.frames.sum(), len(ALL_CONTROLS))
    assert np.isfinite(root["landmarks"][:]).all()
    assert root["reference_frames"].shape[0] == p.train_identities + p.test_identities
    for row in m.itertuples():
        assert len(sf.read(out / row.wav_path)[0]) == row.frames * 640
    report = yaml.safe_load((tmp_path / "w.json").read_text())
    assert report["coverage"]["held_out_unseen"] == {
        "sentences_in_training": 0, "identities_in_training": 0, "share_of_sentences_with_an_unseen_word": 1.0,
        "voice_variants_in_training": 0}
    assert report["coverage"]["train"]["distinct_phonemes"] >= 25
    assert (tmp_path / "wide_sheet.png").stat().st_size > 1000
    # the same params give the same bytes (the fixture built its set in another process state, via the library)
    assert _digest(out) == _digest(tiny_wide[0])


# --- LRW ingest on a fake tree: lipread_mp4/<WORD>/{train,val,test}/<WORD>_<nnnnn>.mp4, 29 frames, 25 fps,
# 256 px, AAC audio muxed in, a .txt beside each.

LRW_FRAMES, LRW_SIZE = 29, 256


def _lrw_clip(path: Path, seed: int, word: str) -> None:
    """A face filling most of a 256-px frame (LRW's crops) speaking over a tone, audio in the same mp4."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ident = sample_identity(np.random.default_rng(seed))
    proc = subprocess.Popen(
        [ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
         "-s", f"{LRW_SIZE}x{LRW_SIZE}",
         "-r", "25", "-i", "-", "-f", "lavfi", "-i", "sine=frequency=200:sample_rate=16000:duration=1.16",
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)],
        stdin=subprocess.PIPE)
    for i in range(LRW_FRAMES):
        proc.stdin.write(render_frame(ident, {"jaw_open": 0.5 * (i % 6) / 6}, size=LRW_SIZE).image.tobytes())
    proc.stdin.close()
    assert proc.wait() == 0
    path.with_suffix(".txt").write_text(f"Text: {word}\nConf: 9\n\nWORD {word} 0.42 0.90\nDuration: 0.48 seconds\n")


@pytest.fixture(scope="module")
def lrw_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lrw")
    folder = root / "lipread_mp4"
    seed = 0
    for word, split in (("ABOUT", "train"), ("ABOUT", "val"), ("BUDGET", "train"), ("BUDGET", "test")):
        _lrw_clip(folder / word / split / f"{word}_00001.mp4", seed, word)
        seed += 1
    (folder / "ABOUT" / "train" / "ABOUT_00009.txt").write_text("Text: ABOUT\n")  # its video never arrived
    good = folder / "BUDGET" / "train" / "BUDGET_00001.mp4"
    cut = folder / "BUDGET" / "train" / "BUDGET_00003.mp4"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # a cut-off download
    return root


def test_lrw_ingest(lrw_tree, tmp_path):
    result = _run_wide(tmp_path, _tiny_params(tmp_path, source="lrw", lrw_root=str(lrw_tree)), tmp_path / "wide")
    assert result.exit_code == 0, result.output
    m = pd.read_parquet(tmp_path / "wide" / "manifest.parquet")
    assert len(m) == 4 and (m.frames == LRW_FRAMES).all()
    assert sorted(m[m.split == "test"].clip_id.str.split("_").str[1].unique()) == ["test", "val"]
    assert set(m.text) == {"ABOUT", "BUDGET"} and (m.emotion == "neutral").all()
    root = zarr.open_group(tmp_path / "wide" / "frames.zarr", mode="r")
    assert root["frames"].shape == (4 * LRW_FRAMES, 64, 64, 3) and root["reference_frames"].shape[0] == 4
    for row in m.itertuples():
        assert len(sf.read(tmp_path / "wide" / row.wav_path)[0]) == LRW_FRAMES * 640
    missing = pd.read_parquet(tmp_path / "wide" / "missing.parquet")
    assert sorted(missing["missing"]) == ["unusable", "video"]
    report = yaml.safe_load((tmp_path / "w.json").read_text())
    assert report["source"] == "lrw" and report["coverage"]["test"]["identities"] == 2
    # only some words, a few clips each; the root may name lipread_mp4 itself
    found, missing = scan_lrw(lrw_tree / "lipread_mp4", WideCorpusParams(lrw_words=("budget",),
                                                                          lrw_max_clips_per_word=1))
    assert sorted(c.clip_id for c in found) == ["lrw_test_BUDGET_00001", "lrw_train_BUDGET_00001"]
    assert missing.empty


def test_not_an_lrw_tree_exits_2_without_output(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _run_wide(tmp_path, _tiny_params(tmp_path, source="lrw", lrw_root=str(tmp_path / "empty")),
                       tmp_path / "wide")
    assert result.exit_code == 2 and "not an LRW tree" in result.output and len(result.output.splitlines()) == 1
    assert not (tmp_path / "wide").exists()
    result = _run_wide(tmp_path, _tiny_params(tmp_path, source="lrw", lrw_root=None), tmp_path / "wide")
    assert result.exit_code == 2 and "lrw_root is not set" in result.output and "params.yaml" in result.output


# --- pre-training reads the corpus and the wide set as one pool


@pytest.fixture(scope="module")
def tiny_wide(tmp_path_factory) -> tuple[Path, Path]:
    from pipeline.audio.features import build_audio_features
    from pipeline.corpus.wide import build_wide
    from tests.conftest import tiny_section

    folder = tmp_path_factory.mktemp("wide")
    build_wide(folder / "wide", tiny_section("base"), tiny_section("wide_corpus"))
    build_audio_features(folder / "wide", folder / "audio.zarr", tiny_section("base"), tiny_section("audio_features"))
    return folder / "wide", folder / "audio.zarr"


def test_fomm_pairs_come_from_both_sets_never_across_them(tiny_corpus, tiny_wide):
    from pipeline.fomm.train import FramePairSampler

    single = FramePairSampler(tiny_corpus, 32)
    both = FramePairSampler([tiny_corpus, tiny_wide[0]], 32, cross_clip=1.0)
    wide = pd.read_parquet(tiny_wide[0] / "manifest.parquet")
    assert both.num_clips == single.num_clips + int((wide.split == "train").sum())
    assert isinstance(single.frames, zarr.Array)  # one set: read as before, so single-set runs are unchanged
    offset = zarr.open_group(tiny_corpus / "frames.zarr", mode="r")["frames"].shape[0]
    rows = both.sample_rows(np.random.default_rng(0), 200)
    assert {s >= offset for s, _ in rows} == {True, False}  # both sets drawn
    assert all((s >= offset) == (d >= offset) for s, d in rows)  # a pair never mixes two sets' actors
    wide_frames = zarr.open_group(tiny_wide[0] / "frames.zarr", mode="r")["frames"]
    s = next(s for s, _ in rows if s >= offset)
    np.testing.assert_array_equal(both.frames[s], wide_frames[s - offset])


def test_lipsync_bank_holds_both_sets(tiny_audio, tiny_wide):  # noqa: F811
    from pipeline.lipsync.data import WINDOW, ClipBank, training_bank

    tiny_corpus, corpus_audio = tiny_audio
    single = training_bank([(tiny_corpus, corpus_audio)], 2 * WINDOW)
    both = training_bank([(tiny_corpus, corpus_audio), tiny_wide], 2 * WINDOW)
    assert both.clip_ids[: len(single.clip_ids)] == single.clip_ids and len(both.clip_ids) > len(single.clip_ids)
    k = len(single.clip_ids)
    faces, mel = both.clip(k)
    alone = ClipBank.concat([training_bank([tiny_wide], 2 * WINDOW)])
    np.testing.assert_array_equal(faces, alone.clip(0)[0])
    np.testing.assert_array_equal(mel, alone.clip(0)[1])


def test_judges_train_on_the_wide_set_too(tiny_corpus, tiny_wide, tmp_path):
    from pipeline.judges.train import load_frame_set
    from stages.train_evaluator import run_train_evaluator
    from tests.conftest import tiny_section

    p = tiny_section("train_evaluator")
    metrics = run_train_evaluator(tiny_corpus, tmp_path / "e.pt", tmp_path / "e.json", tmp_path / "l.csv",
                                  tmp_path / "c.png", tiny_section("base"), p, wide=tiny_wide[0])
    corpus = pd.read_parquet(tiny_corpus / "manifest.parquet")
    wide = pd.read_parquet(tiny_wide[0] / "manifest.parquet")
    train_corpus = corpus[(corpus.kind == "real") & (corpus.split == "train")]
    train_wide = wide[(wide.split == "train") & wide.emotion.isin(set(corpus.emotion))]
    assert metrics["train_clips"] == len(train_corpus) + len(train_wide)  # never a held-out clip of either set
    alone = load_frame_set(tiny_wide[0], train_wide, tuple(sorted(set(corpus.emotion))), p.image_size,
                           p.frame_stride, True)
    corpus_only = run_train_evaluator(tiny_corpus, tmp_path / "c.pt", tmp_path / "c.json", tmp_path / "cl.csv",
                                      tmp_path / "cc.png", tiny_section("base"), p)
    assert metrics["train_frames"] == corpus_only["train_frames"] + len(alone.faces)


def test_impossible_wide_params_are_one_line_errors(tmp_path):
    for change, words in (({"clips_per_identity": 50, "train_phrases": 40}, "only 40 train phrases"),
                          ({"train_phrases": 10**10}, "cannot make"),
                          ({"test_voice_share": 1.0}, "test_voice_share"),
                          ({"emotions": ["neutral"]}, "needs an emotion besides neutral")):
        result = _run_wide(tmp_path, _tiny_params(tmp_path, **change), tmp_path / "wide")
        assert result.exit_code == 2 and words in result.output and len(result.output.splitlines()) == 1, change
        assert not (tmp_path / "wide").exists()


def test_wide_keypoints_references_and_decompose(motion_inputs, tiny_wide, tmp_path):  # noqa: F811
    """keypoints.extra_frames with the wide set: its clips after the corpus's and the pseudo clips, its identities'
    neutral keypoints after the corpus actors'; decompose@wide encodes exactly the wide clips, each relative to its
    own identity's neutral keypoints; decompose@corpus is unchanged."""
    from pipeline.fomm.io import detect_keypoints, load_fomm
    from pipeline.fomm.keypoints import build_keypoints
    from pipeline.models.motion import encode_frames
    from pipeline.motion.data import KeypointBank
    from pipeline.motion.decompose import build_motion_store
    from tests.conftest import tiny_section
    from tests.memory_fixtures import save_motion, tiny_motion

    corpus, wide = motion_inputs["corpus"], tiny_wide[0]
    base = BaseParams(seed=11, workers=0, device="cpu")
    p = tiny_section("keypoints", extra_frames=(str(motion_inputs["pseudo"] / "frames.zarr"),
                                                 str(wide / "frames.zarr")))
    build_keypoints(corpus, motion_inputs["dir"] / "fomm.pt", tmp_path / "kp.zarr", base, p)
    kp = zarr.open_group(tmp_path / "kp.zarr", mode="r")
    corpus_actors = list(zarr.open_group(corpus / "frames.zarr", mode="r")["reference_actor"][:])
    wide_root = zarr.open_group(wide / "frames.zarr", mode="r")
    wide_actors = list(wide_root["reference_actor"][:])
    assert list(kp["reference_actor"][:]) == corpus_actors + wide_actors
    value, _ = detect_keypoints(load_fomm(motion_inputs["dir"] / "fomm.pt").kp_detector,
                                wide_root["reference_frames"][:], 64)
    np.testing.assert_allclose(kp["reference_value"][len(corpus_actors):], value, atol=1e-6)

    motion = save_motion(tiny_motion(), tmp_path / "motion.pt")
    build_motion_store(tmp_path / "kp.zarr", motion, wide, tmp_path / "wide_motion.zarr", base,
                       tiny_section("decompose"))
    manifest = pd.read_parquet(wide / "manifest.parquet")
    index = read_index(tmp_path / "wide_motion.zarr")
    assert list(index.clip_id) == list(manifest.clip_id) and index.start.iloc[0] == 0
    bank = KeypointBank(tmp_path / "kp.zarr")
    clip = manifest.iloc[-1]
    a, b = bank.span(clip.clip_id)
    actor = bank.actor(clip.actor)
    f_e, f_m = encode_frames(tiny_motion(), bank.value[a:b], bank.jacobian[a:b], bank.reference_value[actor],
                             bank.reference_jacobian[actor])
    store = zarr.open_group(tmp_path / "wide_motion.zarr", mode="r")
    row = index.set_index("clip_id").loc[clip.clip_id]
    np.testing.assert_allclose(store["f_e"][row.start:row.stop], f_e, atol=1e-5)
    np.testing.assert_allclose(store["f_m"][row.start:row.stop], f_m, atol=1e-5)
    build_motion_store(tmp_path / "kp.zarr", motion, corpus, tmp_path / "motion.zarr", base, tiny_section("decompose"))
    assert read_index(tmp_path / "motion.zarr").equals(read_index(corpus / "frames.zarr"))
    with pytest.raises(InputError, match="no clip of .*manifest.parquet is in the keypoint store"):
        build_motion_store(motion_inputs["keypoints"], motion, wide, tmp_path / "none.zarr", base,
                           tiny_section("decompose"))
    assert not (tmp_path / "none.zarr").exists()
