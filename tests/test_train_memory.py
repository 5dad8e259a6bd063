"""train_memory (stage 1, Eq. 14): data loading checks, the mmn keypoint choice, the worker end to end on small
synthetic stores (tests/memory_fixtures.py) for every variant, and the Typer command's one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from typer.testing import CliRunner

from pipeline.core.config import BaseParams, with_field
from pipeline.core.errors import InputError
from pipeline.memory.train import (
    MemoryData,
    MemoryTrainer,
    WideInputs,
    choose_upper_keypoints,
    effective_slots,
    emmn_config,
    emotion_partners,
    load_memory_data,
    nearest_centroid,
    read_temperature_sweep,
    score_clips,
    training_means,
)
from pipeline.models.emmn import EmmnNet, load_emmn
from pipeline.training.loop import read_loss_csv, torch_threads
from stages.train_memory import app, run_train_memory
from tests.conftest import tiny_section
from tests.lipsync_fixtures import tiny_audio, tiny_prosody  # noqa: F401  (fixtures)
from tests.memory_fixtures import (
    NUM_KP,
    build_stores,
    save_audio,
    save_motion,
    tiny_motion,
    tiny_prosody_audio,
    wide_memory_inputs,
)
from tests.memory_fixtures import tiny_audio as tiny_audio_encoders
from tests.motion_fixtures import motion_inputs  # noqa: F401  (fixture)
from tests.resume_helpers import Killed, kill_at, same_weights

BASE = BaseParams(seed=3, device="cpu", workers=0)


@pytest.fixture(autouse=True)
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    motion = tiny_motion()
    paths = build_stores(root, motion)
    paths["audio_model"] = save_audio(tiny_audio_encoders(), root / "audio.pt")
    paths["motion_model"] = save_motion(motion, root / "motion.pt")
    return paths


def run(stores, out_dir, **changes):
    p = with_field(tiny_section("train_memory"), **{"max_minutes": 0, **changes})
    outs = {k: out_dir / f"{p.variant}.{k}" for k in ("pt", "json", "csv")}
    report = run_train_memory(stores["corpus"], stores["keypoints"], stores["motion"], stores["audio"],
                              stores["audio_model"], stores["motion_model"], outs["pt"], outs["json"], outs["csv"],
                              BASE, p)
    return report, outs


@pytest.fixture(scope="module")
def wide_stores(tmp_path_factory):
    return wide_memory_inputs(tmp_path_factory.mktemp("memory_wide"))


def test_the_wide_set_joins_as_its_own_splits_and_actors(wide_stores):
    s = wide_stores
    data = load_memory_data(s["corpus"], s["keypoints"], s["motion"], s["audio"], prosody=s["prosody"],
                            wide=s["wide_inputs"])
    assert data.actors == ["A1", "A2", "A3", "W1", "W2", "W3", "W4", "W5"]
    counts = data.clips.split.value_counts().to_dict()
    assert counts == {"train": 12, "test": 6, "wide_train": 10, "wide_test": 2}
    # rows are compact and follow the clips; each wide clip's keypoints are its own (found by the store's index)
    assert (data.clips.stop - data.clips.start == np.where(data.clips.split.str.startswith("wide"), 12, 20)).all()
    k = int(np.flatnonzero(data.clips.clip_id == "W2_neutral_1")[0])
    rows = slice(int(data.clips.start.iloc[k]), int(data.clips.stop.iloc[k]))
    kp = zarr.open_group(s["keypoints"], mode="r")
    index = pd.read_parquet(s["keypoints"] / "index.parquet").set_index("clip_id")
    np.testing.assert_array_equal(data.value[rows], kp["value"][index.start["W2_neutral_1"]:
                                                                index.stop["W2_neutral_1"]])
    assert data.prosody.shape == (len(data.mfcc), 4, 3) and len(data.voices) == len(data.actors)
    np.testing.assert_array_equal(data.value_neu[data.actors.index("W3")],
                                  kp["reference_value"][list(kp["reference_actor"][:]).index("W3")])


def test_wide_windows_come_from_wide_training_clips(wide_stores):
    s = wide_stores
    data = load_memory_data(s["corpus"], s["keypoints"], s["motion"], s["audio"], wide=s["wide_inputs"])
    model = EmmnNet(emmn_config(tiny_section("train_memory"), {"content_dim": 8, "emotion_dim": 6,
                                                                "expression_dim": 6, "mouth_dim": 4}, NUM_KP, (),
                                ("neutral", "happy", "sad"), (1, 3)), tiny_audio_encoders(), tiny_motion())
    trainer = MemoryTrainer(model, data, with_field(tiny_section("train_memory"), window=16), torch.device("cpu"))
    assert trainer.wide_window == 12 and trainer.window == 16
    batch = trainer.sample_wide(np.random.default_rng(0))
    assert batch.value.shape[1] == 12
    wide_rows = np.concatenate([np.arange(a, b) for a, b, split in zip(data.clips.start, data.clips.stop,
                                                                        data.clips.split) if split == "wide_train"])
    matches = [np.flatnonzero((data.value == v.numpy()).all(axis=(1, 2))) for v in batch.value[:, 0]]
    assert all(np.isin(m, wide_rows).any() for m in matches)
    corpus_only = load_memory_data(s["corpus"], s["keypoints"], s["motion"], s["audio"])
    assert MemoryTrainer(model, corpus_only, tiny_section("train_memory"),
                         torch.device("cpu")).sample_wide(np.random.default_rng(0)) is None


@pytest.mark.parametrize("variant", ["emmn", "baseline"])
def test_train_memory_with_the_wide_set(wide_stores, tmp_path, variant):
    """Each step also trains on a wide batch (emmn: L_a2m and D_t's residual; the ablations: L_p,j); memory.json
    scores the wide set's held-out identity too. pretrain_wide false reads no wide store."""
    s = wide_stores
    p = with_field(tiny_section("train_memory"), max_minutes=0, variant=variant, tune_content=True)
    report = run_train_memory(s["corpus"], s["keypoints"], s["motion"], s["audio"], s["audio_model"],
                              s["motion_model"], tmp_path / "m.pt", tmp_path / "m.json", tmp_path / "m.csv", BASE, p,
                              prosody_store=s["prosody"], wide=s["wide_inputs"])
    assert report["wide_heldout"]["clips"] == 2 and report["info"]["wide_training_clips"] == 10
    rows = read_loss_csv(tmp_path / "m.csv")
    wide_terms = {"wide_a2m", "wide_expression"} if variant == "emmn" else {"wide_pj"}
    assert all(rows[-1][k] > 0 for k in wide_terms)
    assert all(rows[-1][k] == 0 for k in {"wide_a2m", "wide_expression", "wide_pj"} - wide_terms)
    model = load_emmn(tmp_path / "m.pt")
    if variant == "emmn":
        assert rows[-1]["expression"] > 0 and model.expression_decoder is not None
    # tune_content: the fine-tuned copy of E_c moved away from the embedded audio checkpoint's
    tuned, frozen = model.content_encoder.state_dict(), model.audio.con_encoder.state_dict()
    assert any(not torch.equal(tuned[k], frozen[k]) for k in tuned if tuned[k].is_floating_point())
    off = with_field(p, pretrain_wide=False)
    broken = WideInputs(tmp_path / "absent", tmp_path / "a.zarr", tmp_path / "b.zarr", tmp_path / "c.zarr")
    report = run_train_memory(s["corpus"], s["keypoints"], s["motion"], s["audio"], s["audio_model"],
                              s["motion_model"], tmp_path / "n.pt", tmp_path / "n.json", tmp_path / "n.csv", BASE,
                              off, prosody_store=s["prosody"], wide=broken)
    assert "wide_heldout" not in report
    assert all(v == 0 for k, v in read_loss_csv(tmp_path / "n.csv")[-1].items() if k.startswith("wide_"))
    with pytest.raises(InputError, match="absent/manifest.parquet: wide set manifest not found"):
        run_train_memory(s["corpus"], s["keypoints"], s["motion"], s["audio"], s["audio_model"], s["motion_model"],
                         tmp_path / "x.pt", tmp_path / "x.json", tmp_path / "x.csv", BASE, p, wide=broken)
    assert not (tmp_path / "x.pt").exists()


def test_load_memory_data_keeps_real_clips_and_maps_actors_by_name(stores):
    data = load_memory_data(stores["corpus"], stores["keypoints"], stores["motion"], stores["audio"])
    assert len(data.clips) == 18 and "A1_happy_0_cf1" not in set(data.clips.clip_id)  # counterfactual dropped
    assert data.value.shape == (18 * 20, NUM_KP, 2) and data.f_e.shape == (18 * 20, 6)
    assert data.actors == ["A1", "A2", "A3"]
    # the keypoints store lists actors as A3, A1, A2: neutral keypoints must follow the names, not positions
    root = zarr.open_group(stores["keypoints"], mode="r")
    assert np.array_equal(data.value_neu[0], root["reference_value"][1])
    first_a1 = data.clips[data.clips.actor == "A1"].iloc[0]
    assert np.allclose(data.value[first_a1.start, 2], data.value_neu[0, 2])  # keypoint 2 never moves


def test_missing_reference_and_misaligned_store_are_one_line_errors(stores, tmp_path):
    keypoints = tmp_path / "keypoints.zarr"
    shutil.copytree(stores["keypoints"], keypoints)
    shutil.rmtree(keypoints / "reference_value")
    with pytest.raises(InputError, match="no 'reference_value' array"):
        load_memory_data(stores["corpus"], keypoints, stores["motion"], stores["audio"])
    manifest = pd.read_parquet(stores["corpus"] / "manifest.parquet")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    manifest.assign(start=manifest.start + 1, stop=manifest.stop + 1).to_parquet(corpus / "manifest.parquet")
    with pytest.raises(InputError, match="not at the corpus frame rows"):
        load_memory_data(corpus, stores["keypoints"], stores["motion"], stores["audio"])


def test_choose_upper_keypoints_by_hand():
    """4 keypoints, 2 emotions, 1 actor. Keypoint 3 (lowest) moves most with emotion but is not upper face;
    upper ones (mean y below the median 0.25): 0 (moves 0.2) and 1 (moves 0.1); 2 is lower and still."""
    neutral = np.array([[0.0, -0.5], [0.0, 0.0], [0.0, 0.5], [0.0, 0.9]], np.float32)
    shift = np.array([0.2, 0.1, 0.0, 0.8], np.float32)
    value = np.stack([neutral, neutral + np.stack([np.zeros(4), shift], 1)]).astype(np.float32)
    clips = pd.DataFrame({"clip_id": ["a", "b"], "actor": "A", "emotion": ["neutral", "happy"], "level": 1,
                          "split": "train", "start": [0, 1], "stop": [1, 2], "actor_index": 0})
    data = MemoryData(clips, value, np.zeros((2, 4, 2, 2), np.float32), np.zeros((2, 28, 12), np.float32),
                      mel=None, f_e=None, f_m=None, images=np.zeros((1, 8, 8, 3), np.uint8), value_neu=neutral[None],
                      jacobian_neu=np.zeros((1, 4, 2, 2), np.float32), actors=["A"])
    assert choose_upper_keypoints(data, 2) == (0, 1)
    assert choose_upper_keypoints(data, 3) == (0, 1, 3)  # too few upper ones: the best-scoring others fill up


def test_emotion_partners_are_other_actors_with_the_same_emotion_and_level():
    clips = pd.DataFrame({"actor": ["A", "A", "B", "B", "C", "C", "D"],
                          "emotion": ["happy", "happy", "happy", "sad", "happy", "happy", "happy"],
                          "level": [3, 3, 3, 3, 3, 1, 3],
                          "split": ["train"] * 6 + ["test"]})
    partners = emotion_partners(clips, np.arange(6))
    assert sorted(partners) == [0, 1, 2, 3, 4, 5]  # held-out clip 6 is neither a key nor a partner
    assert partners[0].tolist() == [2, 4] and partners[1].tolist() == [2, 4]  # not A's own clip 1
    assert partners[2].tolist() == [0, 1, 4]
    assert partners[3].tolist() == [] and partners[5].tolist() == []  # no other actor: sad 3, happy 1


def test_sample_borrows_e_e_from_a_partner_clip_at_the_given_rate():
    from types import SimpleNamespace

    from pipeline.memory.train import MemoryTrainer

    trainer = MemoryTrainer.__new__(MemoryTrainer)  # only what `sample` reads
    trainer.train_index, trainer.window, trainer.device = np.array([0, 1, 2]), 2, torch.device("cpu")
    trainer.starts, trainer.lengths = np.array([0, 10, 20]), np.array([10, 10, 10])
    trainer.emotion_partners = {0: np.array([2]), 1: np.array([], np.int64), 2: np.array([0])}
    trainer.batch_from_rows = lambda rows, clips, emotion_clips: (clips.numpy(), emotion_clips.numpy())
    for rate, expect_swapped in ((0.0, False), (1.0, True)):
        trainer.p = SimpleNamespace(batch_size=64, cross_actor_emotion=rate)
        clips, emotion_clips = trainer.sample(np.random.default_rng(0))
        partner = {0: 2, 1: 1, 2: 0}  # clip 1 has no partner: it keeps its own e_e
        expected = np.array([partner[c] for c in clips]) if expect_swapped else clips
        np.testing.assert_array_equal(emotion_clips, expected)


def test_effective_slots():
    assert effective_slots(torch.full((8,), 1 / 8)) == pytest.approx(8.0)
    assert effective_slots(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert effective_slots(torch.tensor([0.5, 0.5, 0.0, 0.0])) == pytest.approx(2.0)


def test_nearest_centroid():
    centroids = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0]])
    assert nearest_centroid(torch.tensor([2.1, 0.0]), centroids) == 1  # 2.1 from (0,0) vs 1.9 from (4,0)
    assert nearest_centroid(torch.tensor([0.0, 1.4]), centroids) == 0  # 1.4 vs 1.6
    assert nearest_centroid(torch.tensor([0.0, 1.6]), centroids) == 2


@pytest.mark.parametrize("variant", ["emmn", "mmn", "baseline"])
def test_train_memory_end_to_end(stores, tmp_path, variant):
    report, outs = run(stores, tmp_path, variant=variant)
    for key in ("slots_used", "align_kl", "retrieval_err", "keypoint_l1"):
        assert key in report
    written = json.loads(outs["json"].read_text())
    assert written["info"]["variant"] == variant and written["heldout"]["clips"] == 2
    assert written["info"]["heldout_actors"] == ["A3"]
    rows = read_loss_csv(outs["csv"])
    assert rows[-1]["step"] == 6 and set(rows[0]) >= {"total", "a2m", "exp_mem", "align", "pj"}
    model = load_emmn(outs["pt"])
    assert model.step == 6 and model.emotions == ["neutral", "happy", "sad"]
    if variant == "baseline":
        assert report["slots_used"] is None and report["retrieval_err"] is None
        assert all(r["align"] == 0 for r in rows)
        return
    assert 1.0 <= report["slots_used"] <= 8.0
    assert report["align_kl"] >= 0 and np.isfinite(report["retrieval_err"])
    assert report["retrieval_err_mean_predictor"] > 0
    for key in ("emotion_acc_retrieved", "emotion_acc_true_target", "emotion_acc_retrieved_told_emotion"):
        assert written["heldout"][key] in (0.0, 0.5, 1.0)  # 2 held-out clips: 0, 1/2 or 1
    assert written["heldout"]["expression_strength"] >= 0
    if variant == "mmn":
        assert len(written["info"]["upper_keypoints"]) == 3
        assert all(r["a2m"] == 0 for r in rows)


def test_an_encoder_that_hears_prosody_hears_each_clip_against_its_actors_voice(stores, tmp_path):
    audio = tiny_prosody_audio()
    data = load_memory_data(stores["corpus"], stores["keypoints"], stores["motion"], stores["audio"],
                            prosody=stores["prosody"])
    assert data.prosody.shape == (len(data.mfcc), 4, 3)
    np.testing.assert_allclose(data.voices[data.actors.index("A2")], [90.0, -22.0])
    save_audio(audio, tmp_path / "audio.pt")
    p = with_field(tiny_section("train_memory"), max_minutes=0)
    report = run_train_memory(stores["corpus"], stores["keypoints"], stores["motion"], stores["audio"],
                              tmp_path / "audio.pt", stores["motion_model"], tmp_path / "emmn.pt", tmp_path / "m.json",
                              tmp_path / "m.csv", BASE, p, prosody_store=stores["prosody"])
    assert np.isfinite(report["retrieval_err"])
    model = load_emmn(tmp_path / "emmn.pt")
    trainer = MemoryTrainer(model, data, p, torch.device("cpu"))
    k = int(np.flatnonzero(data.clips.clip_id == "A2_happy_1")[0])
    a, b = int(data.clips.start.iloc[k]), int(data.clips.stop.iloc[k])
    mfcc, prosody = torch.from_numpy(data.mfcc[None, a:b]), torch.from_numpy(data.prosody[None, a:b])
    own = model.encode_emotion(mfcc, prosody=prosody, voice=torch.tensor([[90.0, -22.0]]))
    torch.testing.assert_close(trainer.clip_emotion[k], own[0])
    assert not torch.allclose(own, model.encode_emotion(mfcc, prosody=prosody))  # the default voice differs
    with pytest.raises(InputError, match="absent.zarr: not a Zarr store"):
        run_train_memory(stores["corpus"], stores["keypoints"], stores["motion"], stores["audio"],
                         tmp_path / "audio.pt", stores["motion_model"], tmp_path / "x.pt", tmp_path / "x.json",
                         tmp_path / "x.csv", BASE, p, prosody_store=tmp_path / "absent.zarr")


def test_read_temperature_sweep_rescores_at_each_tau_and_restores_the_config(stores, tmp_path):
    """Row None = the trained model as memory.json scored it; a smaller tau sharpens the address (lower
    perplexity) and moves the read-out (another retrieval error); the model keeps its own config after."""
    run(stores, tmp_path, variant="emmn", steps=30, read_temperature=None)
    model = load_emmn(tmp_path / "emmn.pt")
    data = load_memory_data(stores["corpus"], stores["keypoints"], stores["motion"], stores["audio"])
    trainer = MemoryTrainer(model, data, tiny_section("train_memory"), torch.device("cpu"))
    test, means = data.split("test"), training_means(trainer)
    trained, sharp = read_temperature_sweep(trainer, test, means, [None, 0.01])
    assert model.config.read_temperature is None
    assert trained["read_temperature"] == model.config.temperature and sharp["read_temperature"] == 0.01
    plain = score_clips(trainer, test, means)
    assert trained["retrieval_err"] == pytest.approx(plain["retrieval_err"])
    assert sharp["address_perplexity"] < trained["address_perplexity"]
    assert sharp["retrieval_err"] != pytest.approx(trained["retrieval_err"])
    assert sharp["keypoint_l1_static"] == pytest.approx(trained["keypoint_l1_static"])


def test_training_learns_the_keypoints(stores, tmp_path):
    """After 150 steps the baseline beats predicting the neutral keypoints on training clips (L_p,j goes down)."""
    report, outs = run(stores, tmp_path, variant="baseline", steps=150, log_every=50)
    rows = read_loss_csv(outs["csv"])
    assert rows[-1]["pj"] < rows[0]["pj"]
    assert report["train"]["keypoint_l1"] < report["train"]["keypoint_l1_static"]


def test_cli_bad_variant_is_a_one_line_error(stores, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train_memory:\n  variant: eamm\n")
    result = CliRunner().invoke(app, ["--params", str(params), "--corpus", str(stores["corpus"]),
                                      "--out", str(tmp_path / "emmn.pt")])
    assert result.exit_code == 2
    assert "variant must be one of" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "emmn.pt").exists()


@pytest.mark.slow
def test_train_memory_on_the_tiny_pipeline(motion_inputs, tiny_audio, tiny_prosody, tmp_path):  # noqa: F811
    """The real upstream workers on the tiny corpus (FOMM keypoints, train_motion, decompose, audio features,
    train_audio), then train_memory: the stores and checkpoints they write are what this stage reads."""
    from pipeline.audio.train import run_train_audio
    from pipeline.motion.decompose import build_motion_store
    from pipeline.motion.train import run_train_motion

    corpus, audio_store = tiny_audio
    base = tiny_section("base")
    run_train_motion(motion_inputs["keypoints"], motion_inputs["pseudo"], tmp_path / "motion.pt",
                     tmp_path / "motion_losses.csv", base,
                     tiny_section("train_motion"), log=lambda *_: None)
    build_motion_store(motion_inputs["keypoints"], tmp_path / "motion.pt", corpus, tmp_path / "motion.zarr", base,
                       tiny_section("decompose"))
    run_train_audio(corpus, audio_store, tmp_path / "audio.pt", tmp_path / "audio.json", tmp_path / "audio.csv",
                    tmp_path / "confusion.png", base, tiny_section("train_audio"),
                    log=lambda *_: None, prosody_store=tiny_prosody)
    report = run_train_memory(corpus, motion_inputs["keypoints"], tmp_path / "motion.zarr", audio_store,
                              tmp_path / "audio.pt", tmp_path / "motion.pt", tmp_path / "emmn.pt",
                              tmp_path / "memory.json", tmp_path / "memory.csv", base,
                              tiny_section("train_memory"), prosody_store=tiny_prosody)
    assert 1.0 <= report["slots_used"] <= tiny_section("train_memory").slots
    assert report["align_kl"] >= 0 and report["retrieval_err"] > 0
    model = load_emmn(tmp_path / "emmn.pt")
    frames = 9
    n = model.config.num_kp
    out = model.predict(torch.rand(1, 3, 64, 64), torch.randn(1, frames, 28, 12), torch.zeros(1, n, 2),
                        torch.eye(2).expand(1, n, 2, 2),
                        mel=torch.randn(1, frames, 80, 16) if model.needs_mel else None,
                        prosody=torch.rand(1, frames, 4, 3) if model.needs_prosody else None)
    assert out["value"].shape == (1, frames, n, 2) and model.needs_prosody


def test_a_killed_run_resumes_to_the_same_weights_report_and_log(stores, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    straight.mkdir()
    report, outs = run(stores, straight, checkpoint_every=2)
    broken = tmp_path / "broken"
    broken.mkdir()
    kill_at(monkeypatch, 4)
    with pytest.raises(Killed):
        run(stores, broken, checkpoint_every=2)
    assert torch.load(broken / "emmn.pt", weights_only=True)["step"] == 4
    monkeypatch.undo()
    resumed, again = run(stores, broken, checkpoint_every=2, resume=True)
    assert same_weights(outs["pt"], again["pt"]) and resumed == report
    assert outs["csv"].read_bytes() == again["csv"].read_bytes()
    assert load_emmn(again["pt"]).step == 6
    with pytest.raises(InputError, match="cannot resume, model config differs from params .*slots"):
        run(stores, broken, checkpoint_every=2, resume=True, slots=5)
