"""Audio emotion/content disentanglement (EVP, EMMN 3.3): DTW, losses, the EVP layout and its import, the
data pairing, the probes and the `train_audio` stage on the tiny profile.

Golden outputs (`tests/golden/evp_audio_official_outputs.npz`) were computed by EVP's official modules
(jixinya/EVP @ 990ea8b, train/disentanglement/code/models_content_cla.py and ops.conv2d, rebuilt outside
this repo) with the weights of `recipe_state_dict` (decoder.decon.12.weight x 0.1, so the output tanh is
not saturated) and 20 * randn(2, 3, 28, 12) windows; the npz keeps the seeds and checksums of both.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.audio.data import AudioBank, sample_batch, sample_quad
from pipeline.audio.dtw import align_clips, dtw, l1_cost, warp_index
from pipeline.audio.losses import (
    content_consistency_loss,
    cross_reconstruction_loss,
    emotion_classification_loss,
    self_reconstruction_loss,
)
from pipeline.audio.report import (
    confusion_matrix,
    probe_accuracy,
    ridge_classifier_accuracy,
)
from pipeline.core.errors import CheckpointError, InputError
from pipeline.models.audio import (
    AudioConfig,
    AudioEncoders,
    import_evp_state_dict,
    load_audio_encoders,
    load_official_evp_audio,
)
from tests.conftest import tiny_section
from tests.lipsync_fixtures import tiny_audio, tiny_prosody  # noqa: F401  (session fixtures)
from tests.test_lipsync_models import checksums, recipe_state_dict

GOLDEN = Path(__file__).parent / "golden"
TOLERANCE = 1e-4


def spec_entries(component: str) -> list[tuple[str, tuple[int, ...], str]]:
    data = json.loads((GOLDEN / "evp_audio_state_dict_spec.json").read_text())["components"][component]
    return [(name, tuple(shape), dtype) for name, shape, dtype in data["entries"]]


# ----------------------------------------------------------------------------------------------- DTW

def test_dtw_hand_computed_case():
    # a = [0, 1, 3], b = [0, 3], L1 costs [[0,3],[1,2],[3,0]]:
    # D = [[0,3],[1,2],[4,1]]: D[1,1] = 2 + min(0,3,1) = 2, D[2,1] = 0 + min(D[1,0]=1, D[1,1]=2, D[2,0]=4) = 1
    cost = l1_cost(np.array([[0.0], [1.0], [3.0]]), np.array([[0.0], [3.0]]))
    np.testing.assert_array_equal(cost, [[0, 3], [1, 2], [3, 0]])
    total, path = dtw(cost)
    assert total == 1.0
    np.testing.assert_array_equal(path, [[0, 0], [1, 0], [2, 1]])
    np.testing.assert_array_equal(warp_index(path, 3), [0, 0, 1])  # a frames -> b frames
    np.testing.assert_array_equal(warp_index(path[:, ::-1], 2), [1, 2])  # b frame 0 matches a 0 and 1: the later


def naive_dtw(cost: np.ndarray) -> tuple[float, list[tuple[int, int]]]:
    n, m = cost.shape
    acc = np.full((n, m), np.inf)
    for i in range(n):
        for j in range(m):
            if i == 0 and j == 0:
                acc[i, j] = cost[0, 0]
                continue
            prev = min(acc[i - 1, j - 1] if i and j else np.inf, acc[i - 1, j] if i else np.inf,
                       acc[i, j - 1] if j else np.inf)
            acc[i, j] = cost[i, j] + prev
    i, j, path = n - 1, m - 1, [(n - 1, m - 1)]
    while i or j:
        options = [(i - 1, j - 1), (i - 1, j), (i, j - 1)]
        i, j = min((o for o in options if o[0] >= 0 and o[1] >= 0), key=lambda o: acc[o])
        path.append((i, j))
    return float(acc[-1, -1]), path[::-1]


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (6, 1), (7, 9), (12, 5)])
def test_dtw_equals_the_textbook_double_loop(shape):
    cost = np.random.default_rng(sum(shape)).random(shape)
    total, path = dtw(cost)
    ref_total, ref_path = naive_dtw(cost)
    assert total == pytest.approx(ref_total, abs=1e-12)
    assert [tuple(p) for p in path] == ref_path


def test_dtw_recovers_a_known_time_stretch_under_a_timbre_shift():
    rng = np.random.default_rng(0)
    clip = 20 * rng.standard_normal((12, 28, 12)).astype(np.float32)
    stretched_from = np.array([0, 0, 1, 2, 3, 3, 3, 4, 5, 6, 7, 8, 8, 9, 10, 11, 11])
    slow = clip[stretched_from] + 7.0  # slower take, every coefficient shifted (removed by the per-clip mean)
    slow_to_clip, clip_to_slow, cost = align_clips(slow, clip)
    np.testing.assert_array_equal(slow_to_clip, stretched_from)
    np.testing.assert_array_equal(stretched_from[clip_to_slow], np.arange(12))
    _, _, unrelated = align_clips(slow, 20 * rng.standard_normal((12, 28, 12)).astype(np.float32))
    assert cost < 0.5 * unrelated  # not 0: repeated frames move the stretched clip's mean a little


def test_dtw_rejects_bad_costs():
    with pytest.raises(ValueError):
        dtw(np.zeros((0, 3)))
    with pytest.raises(ValueError):
        dtw(np.array([[0.0, np.nan]]))


# -------------------------------------------------------------------------------------------- losses

def test_losses_on_hand_computed_values():
    recon_a, x_a = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])  # mean |.| = 1.5
    recon_b, x_b = torch.tensor([[3.0]]), torch.tensor([[1.0]])  # 2
    assert float(self_reconstruction_loss(recon_a, x_a, recon_b, x_b)) == pytest.approx(3.5)
    assert float(cross_reconstruction_loss(recon_b, x_b, recon_a, x_a)) == pytest.approx(3.5)
    assert float(content_consistency_loss(torch.tensor([1.0, -1.0, 0.5]), torch.tensor([0.0, 0.0, 0.5]))) \
        == pytest.approx(2.0 / 3.0)
    # softmax([0, ln 3]) = [1/4, 3/4]: -log(3/4) for label 1, -log(1/4) for label 0
    logits = torch.tensor([[0.0, float(np.log(3.0))], [0.0, float(np.log(3.0))]])
    expected = (np.log(4 / 3) + np.log(4)) / 2
    assert float(emotion_classification_loss(logits, torch.tensor([1, 0]))) == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------- EVP layout and import

def test_evp_config_has_exactly_the_released_disentanglement_layout():
    model = AudioEncoders(AudioConfig.evp())
    ours = [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()]
    unused = ("emo_encoder.last_fc.", "emo_encoder.re_id")
    assert ours == [e for e in spec_entries("disentanglement") if not e[0].startswith(unused)]
    n_unused = sum(int(np.prod(s)) for n, s, d in spec_entries("disentanglement") if n.startswith(unused)
                   and "running" not in n and "num_batches" not in n)
    assert sum(p.numel() for p in model.parameters()) + n_unused == 74_053_713


def golden_model(tmp_path: Path, *, prefix: str = "", batch_counts: bool = True):
    golden = np.load(GOLDEN / "evp_audio_official_outputs.npz")
    state = recipe_state_dict(spec_entries("disentanglement"), int(golden["weight_seed"]),
                              {"decoder.decon.12.weight": 0.1})
    np.testing.assert_allclose(checksums(state), golden["weight_checksums"], rtol=1e-9)
    if not batch_counts:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "50_pretrain.pth"  # EVP's trainer container, legacy pickle
    torch.save({"model": {prefix + k: v for k, v in state.items()}, "epoch": 50, "train_step": 1, "test_step": 1},
               path, _use_new_zipfile_serialization=False)
    gen = torch.Generator().manual_seed(int(golden["input_seed"]))
    mfcc = 20 * torch.randn(2, 3, 28, 12, generator=gen)
    np.testing.assert_allclose(checksums({"mfcc": mfcc}), golden["input_checksums"], rtol=1e-9)
    return load_official_evp_audio(path), mfcc, golden


@pytest.mark.parametrize("prefix,batch_counts", [("", True), ("module.", False)])
def test_evp_import_matches_official_outputs(tmp_path, prefix, batch_counts):
    model, mfcc, golden = golden_model(tmp_path, prefix=prefix, batch_counts=batch_counts)
    with torch.no_grad():
        content = model.encode_content(mfcc)
        windows = model.window_emotions(mfcc)
        decoded = model.decode(content.reshape(6, 1, -1), windows.reshape(6, -1))  # per window, as EVP decodes
        logits = model.classify_emotion(windows.reshape(6, -1))
        pooled = model.encode_emotion(mfcc)
    assert np.abs(content.reshape(6, -1).numpy() - golden["content"]).max() < TOLERANCE
    assert np.abs(windows.reshape(6, -1).numpy() - golden["window_emotion"]).max() < TOLERANCE
    assert np.abs(decoded.reshape(6, 1, 28, 12).numpy() - golden["decoded"]).max() < 1e-3  # 90 x tanh scale
    assert np.abs(logits.numpy() - golden["logits"]).max() < TOLERANCE
    # the EVP layout pools an utterance as the mean of its window embeddings
    np.testing.assert_allclose(pooled.numpy(), golden["window_emotion"].reshape(2, 3, -1).mean(axis=1), atol=1e-5)
    assert model.emotions == ["angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised"]


def test_evp_audio2lm_file_imports_encoders_only():
    entries = spec_entries("audio2lm")
    state = recipe_state_dict([e for e in entries if ".lstm." not in e[0]], seed=3)
    state.update({name: 0.1 * torch.randn(shape) for name, shape, _ in entries if ".lstm." in name})
    with pytest.raises(CheckpointError, match="encoders_only"):
        import_evp_state_dict(state)
    model = import_evp_state_dict(state, encoders_only=True)
    key = "con_encoder.audio_eocder_fc.2.weight"
    torch.testing.assert_close(model.state_dict()[key], state[key])
    key = "emo_encoder.emotion_eocder.5.0.weight"
    torch.testing.assert_close(model.state_dict()[key], state[key])


def test_evp_import_names_missing_and_mis_shaped_keys():
    state = recipe_state_dict(spec_entries("disentanglement"), seed=5)
    missing = {k: v for k, v in state.items() if k != "decoder.decon.3.weight"}
    with pytest.raises(CheckpointError, match="missing key 'decoder.decon.3.weight'"):
        import_evp_state_dict(missing)
    bad = dict(state, **{"classify.last_fc.weight": torch.zeros(7, 128)})
    with pytest.raises(CheckpointError, match="classify.last_fc.weight"):
        import_evp_state_dict(bad)
    with pytest.raises(CheckpointError, match="unexpected key 'extra.weight'"):
        import_evp_state_dict(dict(state, **{"extra.weight": torch.zeros(1)}))


# ------------------------------------------------------------------------------------ model contract

def small_config(**changes) -> AudioConfig:
    values = dict(emotions=("happy", "neutral", "sad"), content_dim=12, emotion_dim=6, temporal_channels=8,
                  emotion_stride=2)
    values.update(changes)
    return AudioConfig.scaled(0.0625, **values)


def test_encoders_follow_the_contract_shapes_and_per_frame_content():
    torch.manual_seed(0)
    model = AudioEncoders(small_config()).eval()
    mfcc = 20 * torch.randn(3, 9, 28, 12)
    with torch.no_grad():
        content = model.encode_content(mfcc)
        emotion = model.encode_emotion(mfcc)
        assert content.shape == (3, 9, 12) and emotion.shape == (3, 6) and (emotion >= 0).all()
        assert model.decode(content, emotion).shape == (3, 9, 28, 12)
        assert model.classify_emotion(emotion).shape == (3, 3)
        # content is per frame: a frame encoded alone gives the same e_c; e_e depends on the utterance only
        torch.testing.assert_close(model.encode_content(mfcc[1:2, 4:5])[0, 0], content[1, 4])
        torch.testing.assert_close(model.encode_emotion(mfcc[2:3])[0], emotion[2])
        assert model.encode_emotion(mfcc[:, :1]).shape == (3, 6)  # a single frame still gives an embedding
    with pytest.raises(InputError, match="MFCC windows"):
        model.encode_content(torch.zeros(3, 28, 12))


def test_mel_emotion_input_reads_mel_windows():
    torch.manual_seed(0)
    model = AudioEncoders(small_config(emotion_input="mel")).eval()
    assert not hasattr(model, "emo_encoder") and model.needs_mel
    mel = 4 * torch.rand(2, 10, 80, 16) - 4
    with torch.no_grad():
        emotion = model.encode_emotion(None, mel)
        assert emotion.shape == (2, 6) and (emotion >= 0).all()
        torch.testing.assert_close(model.encode_emotion(None, mel[1:])[0], emotion[1])
        assert model.encode_emotion(None, mel[:, :1]).shape == (2, 6)
        # the mel sequence is the first 3 columns of each window: the other columns are never read
        changed = mel.clone()
        changed[..., 3:] = 0
        torch.testing.assert_close(model.encode_emotion(None, changed), emotion)
    with pytest.raises(InputError, match="mel windows"):
        model.encode_emotion(20 * torch.randn(2, 10, 28, 12))


def test_standardized_model_reads_and_writes_mfcc_units():
    torch.manual_seed(0)
    model = AudioEncoders(small_config(standardize=True, output_scale=4.0)).eval()
    mean, std = torch.linspace(-20, 20, 12), torch.linspace(5, 30, 12)
    model.set_standardization(mean, std)
    plain = AudioEncoders(small_config()).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("mfcc_")})
    mfcc = mean + std * torch.randn(2, 5, 28, 12)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_content(mfcc), plain.encode_content((mfcc - mean) / std))
        torch.testing.assert_close(model.encode_emotion(mfcc), plain.encode_emotion((mfcc - mean) / std))
        # the decoder's last layer starts small: the first reconstruction is near the training mean
        decoded = model.decode(model.encode_content(mfcc), model.encode_emotion(mfcc))
        assert ((decoded - mean) / std).abs().max() < 1.0 < ((mfcc - mean) / std).abs().max()
    with pytest.raises(InputError, match="standardize off"):
        plain.set_standardization(mean, std)


def test_config_validation_and_round_trip():
    config = small_config()
    assert AudioConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(InputError, match="emotion_stride"):
        small_config(emotion_stride=8)
    with pytest.raises(InputError, match="distinct"):
        small_config(emotions=("happy", "happy"))


# ----------------------------------------------------------------------------------------- probes

def test_ridge_classifier_probe_separates_and_does_not_invent():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    separable = np.eye(3)[labels] * 5 + rng.normal(0, 0.1, (60, 3))
    acc, predicted = ridge_classifier_accuracy(separable[::2], labels[::2], separable[1::2], labels[1::2], 3, 1.0)
    assert acc == 1.0 and predicted.shape == (30,)
    noise = rng.normal(size=(60, 5))
    groups = np.tile(np.arange(4), 15)
    acc_noise, alpha = probe_accuracy(noise[:40], labels[:40], groups[:40], noise[40:], labels[40:], 3,
                                      (0.1, 10.0, 1000.0))
    assert acc_noise < 0.7 and alpha in (0.1, 10.0, 1000.0)
    np.testing.assert_array_equal(confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 3),
                                  [[1, 1, 0], [0, 1, 0], [0, 1, 0]])


# --------------------------------------------------------------------------- corpus pairing (tiny)

@pytest.fixture(scope="module")
def tiny_bank(tiny_audio):  # noqa: F811
    from pipeline.corpus.manifest import read_manifest
    from pipeline.corpus.manifest import real_clips

    corpus, store = tiny_audio
    return AudioBank.load(store, real_clips(read_manifest(corpus), "train", 2))


def test_bank_aligns_every_pair_of_takes_of_a_sentence(tiny_bank):
    bank = tiny_bank
    assert len(bank.groups) == 4  # 2 actors x 2 sentences
    for members in bank.groups.values():
        takes = sorted(members.values())
        for a in takes:
            for b in takes:
                if a != b:
                    warp = bank.warp(a, b)
                    assert len(warp) == bank.lengths[a] and warp.min() >= 0 and warp.max() < bank.lengths[b]
                    assert (np.diff(warp) >= 0).all()  # monotone in time
    assert len(bank.warps) == sum(len(m) * (len(m) - 1) for m in bank.groups.values())


@pytest.mark.parametrize("cross_actor_prob", [0.0, 1.0])
def test_quads_pair_same_sentences_and_same_emotions(tiny_bank, cross_actor_prob):
    bank, rng = tiny_bank, np.random.default_rng(1)
    for _ in range(20):
        q = sample_quad(bank, rng, cross_actor_prob)
        assert bank.group_of(q.a) == bank.group_of(q.b) and bank.group_of(q.c) == bank.group_of(q.d)
        assert bank.group_of(q.a) != bank.group_of(q.c)
        assert bank.cell_of(q.a) == bank.cell_of(q.d) and bank.cell_of(q.b) == bank.cell_of(q.c)
        assert bank.emotions[q.a] != bank.emotions[q.b]
        assert (bank.actors[q.a] != bank.actors[q.c]) == (cross_actor_prob == 1.0)


def test_batches_hold_aligned_segments_and_labels_in_quad_order(tiny_bank):
    bank = tiny_bank
    emotions = tuple(sorted(set(bank.emotions)))
    labels = bank.labels(emotions)
    batch = sample_batch(bank, labels, np.random.default_rng(2), quads=3, segment_frames=8, emotion_frames=12,
                         cross_actor_prob=0.5)
    assert batch.seg_a.shape == batch.seg_b.shape == batch.seg_c.shape == batch.seg_d.shape == (3, 8, 28, 12)
    assert batch.emo.shape == (12, 12, 28, 12) and batch.labels.shape == (12,)
    # replay the draws: b's frames are a's segment mapped through the DTW warp
    rng = np.random.default_rng(2)
    quads = [sample_quad(bank, rng, 0.5) for _ in range(3)]
    from pipeline.audio.data import segment

    frames_a = segment(bank, quads[0].a, 8, rng)
    np.testing.assert_array_equal(batch.seg_a[0].numpy(), bank.clip(quads[0].a)[frames_a])
    aligned_b = bank.warp(quads[0].a, quads[0].b)[frames_a]
    np.testing.assert_array_equal(batch.seg_b[0].numpy(), bank.clip(quads[0].b)[aligned_b])
    expected = [labels[getattr(q, part)] for part in "abcd" for q in quads]
    np.testing.assert_array_equal(batch.labels.numpy(), expected)


def test_batchnorm_recalibration_uses_exact_batch_statistics(tiny_bank):
    from pipeline.audio.train import (
        audio_config,
        mfcc_statistics,
        recalibrate_batchnorm,
    )

    bank = tiny_bank
    emotions = tuple(sorted({str(e) for e in bank.emotions}))
    p = tiny_section("train_audio", bn_recalibration_batches=1, emotion_input="mfcc", prosody_channels=0)
    torch.manual_seed(0)
    model = AudioEncoders(audio_config(p, emotions))
    model.set_standardization(*mfcc_statistics(bank))
    base = tiny_section("base")
    assert recalibrate_batchnorm(model, bank, bank.labels(emotions), base, p, torch.device("cpu")) == 1
    assert not model.training
    first_bn = model.con_encoder.audio_eocder[0][1]
    assert first_bn.momentum == 0.1 and int(first_bn.num_batches_tracked) == 1
    # the one batch drawn: its segments a, b, c, d feed E_c; the first BN's running mean is their channel mean
    from pipeline.training.loop import step_rngs

    rng, _ = step_rngs(base.seed + 1, 0)
    batch = sample_batch(bank, bank.labels(emotions), rng, p.batch_quads, p.segment_frames, p.emotion_frames,
                         p.cross_actor_prob, p.emotion_input)
    windows = torch.cat([batch.seg_a, batch.seg_b, batch.seg_c, batch.seg_d]).reshape(-1, 1, 28, 12)
    with torch.no_grad():
        conv = model.con_encoder.audio_eocder[0][0]((windows - model.mfcc_mean) / model.mfcc_std)
    torch.testing.assert_close(first_bn.running_mean, conv.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------- stage (tiny)

def stage_paths(root: Path) -> dict[str, Path]:
    names = {"model_out": "audio.pt", "report": "audio.json", "losses_csv": "audio_losses.csv",
             "confusion_png": "audio_confusion.png"}
    return {k: root / v for k, v in names.items()}


@pytest.fixture(scope="module")
def trained_audio(tiny_audio, tiny_prosody, tmp_path_factory):  # noqa: F811
    from pipeline.audio.train import run_train_audio

    corpus, store = tiny_audio
    paths = stage_paths(tmp_path_factory.mktemp("train_audio"))
    metrics = run_train_audio(corpus, store, base=tiny_section("base"), p=tiny_section("train_audio"),
                              log=lambda *_: None, prosody_store=tiny_prosody, **paths)
    return corpus, store, paths, metrics


def test_stage_writes_checkpoint_report_and_pictures(trained_audio):
    import cv2

    from pipeline.training.loop import read_loss_csv

    corpus, store, paths, metrics = trained_audio
    report = json.loads(paths["report"].read_text())
    assert report == json.loads(json.dumps(metrics))
    for key in ("emotion_acc_from_ee", "emotion_acc_from_ec", "emotion_acc_from_ee_probe", "cross_rec_err",
                "self_rec_err", "copy_baseline_err"):
        assert np.isfinite(report[key]), key
    assert 0 <= report["emotion_acc_from_ee"] <= 1 and 0 <= report["emotion_acc_from_ec"] <= 1
    assert report["chance"] == 0.25 and report["heldout_actors"] == 1 and report["steps"] == 6
    assert set(report["per_emotion_acc_from_ee"]) == {"happy", "neutral", "sad", "surprised"}
    model = load_audio_encoders(paths["model_out"])
    assert model.emotions == ["happy", "neutral", "sad", "surprised"] and not model.training
    assert model.needs_prosody and 0 <= report["emotion_acc_from_ee_default_voice"] <= 1
    assert model.voice_default[0] > 12 * np.log2(60)  # the training voices' mean f0 in semitones, not zeros
    rows = read_loss_csv(paths["losses_csv"])
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert {"total", "self_rec", "cross_rec", "content", "classification", "train_accuracy"} <= set(rows[0])
    image = cv2.imread(str(paths["confusion_png"]))
    assert image is not None and image.shape[0] > 100


def test_stage_metrics_are_reproducible_from_the_checkpoint(trained_audio, tiny_prosody):  # noqa: F811
    from pipeline.audio.report import evaluate_audio
    from pipeline.corpus.manifest import read_manifest
    from pipeline.corpus.manifest import real_clips

    corpus, store, paths, metrics = trained_audio
    manifest = read_manifest(corpus)
    p = tiny_section("train_audio")
    with_mel = p.emotion_input == "mel"
    train = AudioBank.load(store, real_clips(manifest, "train", 2), with_mel=with_mel, prosody_store=tiny_prosody)
    test = AudioBank.load(store, real_clips(manifest, "test", 2), with_mel=with_mel, prosody_store=tiny_prosody)
    again, _ = evaluate_audio(load_audio_encoders(paths["model_out"]), train, test, seed=tiny_section("base").seed,
                              eval_quads_count=p.eval_quads, probe_alphas=p.probe_alphas)
    for key in ("emotion_acc_from_ee", "emotion_acc_from_ec", "cross_rec_err"):
        assert again[key] == metrics[key]


def test_stage_resumes_where_it_stopped(trained_audio, tiny_prosody, tmp_path):  # noqa: F811
    import shutil

    from pipeline.training.loop import read_loss_csv
    from pipeline.audio.train import run_train_audio

    corpus, store, paths, _ = trained_audio
    resumed = stage_paths(tmp_path)
    shutil.copy(paths["model_out"], resumed["model_out"])
    shutil.copy(paths["losses_csv"], resumed["losses_csv"])
    p = tiny_section("train_audio", resume=True, steps=8)
    metrics = run_train_audio(corpus, store, base=tiny_section("base"), p=p, log=lambda *_: None,
                              prosody_store=tiny_prosody, **resumed)
    assert metrics["steps"] == 8
    rows = read_loss_csv(resumed["losses_csv"])
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    assert rows[:3] == read_loss_csv(paths["losses_csv"])


@pytest.mark.parametrize("emotion_input", ["mfcc", "mel"])
def test_losses_fall_when_fitting_one_batch(tiny_audio, tiny_prosody, emotion_input):  # noqa: F811
    from pipeline.audio.train import (
        audio_config,
        disentanglement_losses,
        mfcc_statistics,
    )
    from pipeline.corpus.manifest import read_manifest
    from pipeline.corpus.manifest import real_clips

    corpus, store = tiny_audio
    bank = AudioBank.load(store, real_clips(read_manifest(corpus), "train", 2), with_mel=emotion_input == "mel",
                          prosody_store=tiny_prosody)
    emotions = tuple(sorted({str(e) for e in bank.emotions}))
    p = tiny_section("train_audio", emotion_input=emotion_input)
    torch.manual_seed(0)
    model = AudioEncoders(audio_config(p, emotions))
    model.set_standardization(*mfcc_statistics(bank))
    assert model.needs_prosody
    batch = sample_batch(bank, bank.labels(emotions), np.random.default_rng(0), p.batch_quads, p.segment_frames,
                         p.emotion_frames, p.cross_actor_prob, emotion_input)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(60):
        loss, terms = disentanglement_losses(model, batch, p)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(terms)
    for key in ("total", "self_rec", "cross_rec", "classification"):
        assert history[-1][key] < 0.8 * history[0][key], key


def test_stage_with_mel_emotion_input_and_no_prosody(tiny_audio, tmp_path):  # noqa: F811
    from pipeline.audio.train import run_train_audio

    corpus, store = tiny_audio
    paths = stage_paths(tmp_path)
    metrics = run_train_audio(corpus, store, base=tiny_section("base"), log=lambda *_: None,
                              p=tiny_section("train_audio", steps=2, emotion_input="mel", prosody_channels=0),
                              prosody_store=tmp_path / "absent.zarr", **paths)  # not read without prosody
    model = load_audio_encoders(paths["model_out"])
    assert model.needs_mel and not model.needs_prosody and metrics["steps"] == 2
    assert "emotion_acc_from_ee_default_voice" not in metrics
    assert np.isfinite(metrics["cross_rec_err"])


def test_bad_inputs_are_one_line_errors_without_outputs(tiny_audio, tmp_path):  # noqa: F811
    from typer.testing import CliRunner

    from stages.cli import app

    corpus, _ = tiny_audio
    out = tmp_path / "audio.pt"
    params = tmp_path / "params.yaml"
    import yaml

    from tests.conftest import tiny_params_dict

    params.write_text(yaml.safe_dump(tiny_params_dict()))
    for audio, problem in ((tmp_path / "missing.zarr", "not a Zarr store"),
                           (corpus / "frames.zarr", "no 'mfcc' array")):
        result = CliRunner().invoke(app, ["train-audio", "--params", str(params), "--corpus", str(corpus),
                                          "--audio", str(audio), "--out", str(out),
                                          "--report", str(tmp_path / "audio.json")])
        assert result.exit_code == 2, result.output
        assert problem in result.output and len(result.output.strip().splitlines()) == 1
        assert not out.exists() and not (tmp_path / "audio.json").exists()
