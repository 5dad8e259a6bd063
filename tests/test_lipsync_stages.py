"""The lip-sync stages on the tiny corpus: train_syncnet -> train_wav2lip -> pseudo_pairs -> sync_filter.

Tiny seeded models (a few steps): these tests check the outputs' structure, the frame and length rules,
resuming and determinism, not model quality (that is the default profile's report).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core.errors import CheckpointError
from pipeline.core.store import read_clip, read_index
from pipeline.lipsync.io import load_pipeline_model
from pipeline.lipsync.pseudo import relative_time_indices
from pipeline.lipsync.redub import paste_faces, source_frame_indices
from pipeline.training.loop import read_loss_csv, torch_threads
from tests.conftest import tiny_section
from tests.lipsync_fixtures import tiny_audio  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def chain(tiny_audio, tmp_path_factory):  # noqa: F811
    corpus, audio = tiny_audio
    out = tmp_path_factory.mktemp("lipsync")
    base = tiny_section("base")
    with torch_threads(1):  # the test machines share 2 cores: spinning torch threads stall under load
        return _run_chain(corpus, audio, out, base)


def _run_chain(corpus, audio, out, base) -> dict:
    from pipeline.lipsync.pseudo_pairs import build_pseudo_pairs
    from pipeline.lipsync.sync_filter import run_sync_filter
    from stages.train_evaluator import run_train_evaluator
    from stages.train_syncnet import run_train_syncnet
    from stages.train_wav2lip import run_train_wav2lip

    sync = run_train_syncnet(corpus, audio, out / "syncnet.pt", out / "syncnet.json", out / "syncnet_losses.csv",
                             base, tiny_section("train_syncnet"))
    run_train_syncnet(corpus, audio, out / "sync_scorer.pt", out / "sync_scorer.json", out / "scorer_losses.csv",
                      base, tiny_section("train_sync_scorer"), stage="train_sync_scorer")
    w2l = run_train_wav2lip(corpus, audio, out / "syncnet.pt", out / "wav2lip.pt", out / "wav2lip.json",
                            out / "wav2lip_losses.csv", base, tiny_section("train_wav2lip"))
    run_train_evaluator(corpus, out / "evaluator.pt", out / "evaluator.json", out / "evaluator_losses.csv",
                        out / "evaluator_confusion.png", base, tiny_section("train_evaluator"))
    pseudo = build_pseudo_pairs(corpus, audio, out / "wav2lip.pt", out / "evaluator.pt", out / "pseudo", base,
                                tiny_section("pseudo_pairs"))
    report = run_sync_filter(out / "pseudo", corpus, out / "sync_scorer.pt", out / "pseudo_pairs.json",
                             out / "sync_hist.png", base, tiny_section("sync_filter"))
    return {"corpus": corpus, "audio": audio, "out": out, "sync": sync, "w2l": w2l, "pseudo": pseudo,
            "report": report}


def test_train_syncnet_writes_checkpoint_report_and_losses(chain):
    out = chain["out"]
    loaded = load_pipeline_model(out / "syncnet.pt", "syncnet_color")
    assert loaded.step == 4 and loaded.config["model"]["embed_dim"] == 64  # 512 x width 0.125
    report = json.loads((out / "syncnet.json").read_text())
    for key in ("heldout_accuracy", "in_sync_accuracy", "off_sync_accuracy", "offset_recovery"):
        assert 0.0 <= report[key] <= 1.0
    assert report["heldout_windows"] == 64 and report["offset_trials"] == 4  # 4 held-out clips x 1 shift
    rows = read_loss_csv(out / "syncnet_losses.csv")
    assert [r["step"] for r in rows] == [2, 4] and 0.0 < rows[-1]["bce"] < 5.0


def test_sync_scorer_is_trained_from_another_seed(chain):
    out = chain["out"]
    expert = load_pipeline_model(out / "syncnet.pt", "syncnet_color").module.state_dict()
    scorer = load_pipeline_model(out / "sync_scorer.pt", "syncnet_color").module.state_dict()
    assert expert.keys() == scorer.keys()
    assert not torch.equal(expert["face_encoder.0.conv_block.0.weight"], scorer["face_encoder.0.conv_block.0.weight"])
    assert json.loads((out / "sync_scorer.json").read_text())["offset_trials"] == 4


def test_train_wav2lip_writes_checkpoint_and_heldout_report(chain):
    out = chain["out"]
    loaded = load_pipeline_model(out / "wav2lip.pt", "wav2lip")
    assert loaded.step == 3 and loaded.config["arch"] == "wav2lip"
    report = json.loads((out / "wav2lip.json").read_text())
    assert report["heldout_clips"] == 2 and 0.0 < report["heldout_l1"] < 1.0 and report["heldout_psnr"] > 3.0
    assert report["sync_conf_real"] is not None and report["sync_conf_generated"] is not None
    assert report["redub_clips"] == 0  # the tiny held-out actor says one sentence: nothing to re-dub
    assert [r["step"] for r in read_loss_csv(out / "wav2lip_losses.csv")] == [1, 2, 3]


def test_pseudo_clips_follow_the_length_and_counterfactual_rules(chain):
    corpus, pseudo = chain["corpus"], chain["out"] / "pseudo"
    manifest = pd.read_parquet(corpus / "manifest.parquet").set_index("clip_id")
    clips = pd.read_parquet(pseudo / "clips.parquet")
    train_real = manifest[(manifest.kind == "real") & (manifest.split == "train")]
    assert len(clips) == len(train_real) == 16  # two sentences per actor: one re-dub per clip
    assert clips.counterfactual_clip_id.notna().all()
    index = read_index(pseudo / "frames.zarr").set_index("clip_id")
    for row in clips.itertuples():
        audio_clip = manifest.loc[row.audio_clip_id]
        assert row.frames == audio_clip.frames == manifest.loc[row.counterfactual_clip_id].frames
        assert row.wav_path == audio_clip.wav_path and row.sentence_b == audio_clip.sentence_id
        assert index.loc[row.pseudo_clip_id, "stop"] - index.loc[row.pseudo_clip_id, "start"] == row.frames
    assert np.isfinite(clips.mouth_err).all() and (clips.compared_frames > 0).all()

    row = clips.iloc[0]
    stored = read_clip(pseudo / "frames.zarr", row.pseudo_clip_id)
    source = read_clip(corpus / "frames.zarr", row.source_clip_id, ("frames",))["frames"]
    expected = source_frame_indices(len(source), row.frames, "pingpong")
    np.testing.assert_array_equal(stored["source_frame"], expected)
    size = source.shape[1]
    keep = size // 2 - size // 16  # rows above the blend band are the source's own pixels
    np.testing.assert_array_equal(stored["frames"][:, :keep], source[expected][:, :keep])


def test_pairs_table_describes_every_quadruple(chain):
    pseudo = chain["out"] / "pseudo"
    clips = pd.read_parquet(pseudo / "clips.parquet").set_index("pseudo_clip_id")
    pairs = pd.read_parquet(pseudo / "pairs.parquet")
    assert len(pairs) == 2 * 16  # 2 training actors x 1 sentence pair x 4 x 4 emotion-levels
    assert pairs.same_style.sum() == 2 * 4
    for row in pairs.itertuples():
        y_ib, y_ja = clips.loc[row.y_ib], clips.loc[row.y_ja]
        assert y_ib.source_clip_id == row.x_ia and y_ja.source_clip_id == row.x_jb
        assert y_ib.sentence_b == row.sentence_b and y_ja.sentence_b == row.sentence_a
        assert len(row.y_ib_from_x_ia) == len(row.y_ib_from_x_jb) == row.y_ib_frames == y_ib.frames
        assert len(row.y_ja_from_x_jb) == len(row.y_ja_from_x_ia) == row.y_ja_frames == y_ja.frames
        assert max(row.y_ib_from_x_ia) == y_ib.source_frames - 1 or row.y_ib_frames < y_ib.source_frames
        assert max(row.y_ib_from_x_jb) == clips.loc[row.y_ja].source_frames - 1


def test_sync_filter_scores_every_clip_and_reports(chain):
    out = chain["out"]
    scores = pd.read_parquet(out / "pseudo" / "sync.parquet")
    clips = pd.read_parquet(out / "pseudo" / "clips.parquet")
    assert sorted(scores.pseudo_clip_id) == sorted(clips.pseudo_clip_id)
    assert scores.offset.abs().max() <= 15 and (scores.confidence >= 0).all()
    p = tiny_section("sync_filter")
    expected = (scores.confidence > p.threshold) & (scores.offset.abs() <= p.max_offset)
    assert scores.kept.tolist() == expected.tolist()
    report = json.loads((out / "pseudo_pairs.json").read_text())
    assert {"mouth_err_all", "mouth_err_kept", "kept_fraction", "threshold"} <= set(report)
    assert report["kept_fraction"] == pytest.approx(expected.mean(), abs=1e-4)
    assert report["mouth_err_all"] == pytest.approx(clips.mouth_err.mean(), abs=1e-3)
    assert (out / "sync_hist.png").stat().st_size > 1000


def test_training_is_seeded_and_resumes(chain, tmp_path):
    from stages.train_syncnet import run_train_syncnet

    corpus, audio, out = chain["corpus"], chain["audio"], chain["out"]
    base = tiny_section("base")
    again = tmp_path / "again.pt"
    with torch_threads(1):  # as the chain fixture trained: float reductions depend on the thread count
        run_train_syncnet(corpus, audio, again, tmp_path / "r.json", tmp_path / "l.csv", base,
                          tiny_section("train_syncnet"))
    first = load_pipeline_model(out / "syncnet.pt", "syncnet_color").module.state_dict()
    second = load_pipeline_model(again, "syncnet_color").module.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)

    shutil.copy(out / "syncnet_losses.csv", tmp_path / "resume.csv")
    with torch_threads(1):
        run_train_syncnet(corpus, audio, again, tmp_path / "r.json", tmp_path / "resume.csv",
                          base, tiny_section("train_syncnet", steps=6, resume=True))
    assert load_pipeline_model(again, "syncnet_color").step == 6
    assert [r["step"] for r in read_loss_csv(tmp_path / "resume.csv")] == [2, 4, 6]


def test_wav2lip_refuses_a_wrong_expert_checkpoint(chain, tmp_path):
    from stages.train_wav2lip import run_train_wav2lip

    corpus, audio, out = chain["corpus"], chain["audio"], chain["out"]
    with pytest.raises(CheckpointError, match="wrong model"):
        run_train_wav2lip(corpus, audio, out / "wav2lip.pt", tmp_path / "w.pt", tmp_path / "w.json", tmp_path / "l.csv", tiny_section("base"), tiny_section("train_wav2lip"))


def test_frame_index_rules():
    assert source_frame_indices(4, 10, "pingpong").tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert source_frame_indices(4, 10, "loop").tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert source_frame_indices(5, 3, "pingpong").tolist() == [0, 1, 2]
    assert relative_time_indices(10, 5).tolist() == [1, 3, 5, 7, 9]
    assert relative_time_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]


def test_paste_lower_keeps_the_upper_half():
    frames = np.full((2, 64, 64, 3), 200, np.uint8)
    generated = np.zeros((2, 96, 96, 3), np.uint8)
    lower = paste_faces(frames, generated, "lower")
    assert (lower[:, :28] == 200).all() and (lower[:, 36:] == 0).all()
    assert 0 < lower[0, 32, 0, 0] < 200  # blended band around the middle
    assert (paste_faces(frames, generated, "full") == 0).all()


def test_pseudo_pairs_names_a_missing_evaluator(chain, tmp_path):
    from pipeline.core.errors import InputError
    from pipeline.lipsync.pseudo_pairs import build_pseudo_pairs

    missing = tmp_path / "evaluator.pt"
    with pytest.raises(InputError, match="evaluator checkpoint not found"):
        build_pseudo_pairs(chain["corpus"], chain["audio"], chain["out"] / "wav2lip.pt", missing, tmp_path / "pseudo",
                           tiny_section("base"), tiny_section("pseudo_pairs"))
    assert not (tmp_path / "pseudo").exists()


def test_bf16_redub_stays_close_to_fp32(chain):
    from pipeline.lipsync.io import load_pipeline_model
    from pipeline.lipsync.redub import generate_faces

    generator = load_pipeline_model(chain["out"] / "wav2lip.pt", "wav2lip").module
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (4, 96, 96, 3), dtype=np.uint8)
    mel = rng.standard_normal((4, 80, 16)).astype(np.float32)
    exact = generate_faces(generator, faces, faces, mel).astype(np.int16)
    fast = generate_faces(generator, faces, faces, mel, bf16=True).astype(np.int16)
    assert fast.shape == exact.shape and np.abs(fast - exact).mean() < 3.0  # uint8 levels


def test_in_clip_contrastive_loss_hand_case():
    """W=3 windows starting at frames 0, 1, 5 with minimum shift 2: pair (0, 1) is neither in nor off sync.
    Cosines 0.6 on the diagonal, 0.5 elsewhere, temperature 0.1 -> logits 6 vs 5: rows 0 and 1 pick among
    two candidates, -log(e^6 / (e^6 + e^5)) = log(1 + e^-1); row 2 among three, log(1 + 2 e^-1)."""
    from pipeline.lipsync.syncnet_train import in_clip_contrastive_loss
    cosine = torch.full((1, 3, 3), 0.5) + 0.1 * torch.eye(3)
    first = torch.tensor([[0, 1, 5]])
    in_sync = torch.eye(3, dtype=torch.bool)[None]
    off_sync = ~in_sync & ((first[:, :, None] - first[:, None, :]).abs() >= 2)
    expected = (2 * np.log1p(np.exp(-1)) + np.log1p(2 * np.exp(-1))) / 3  # columns: the same (symmetric)
    assert float(in_clip_contrastive_loss(cosine, in_sync, off_sync, 0.1)) == pytest.approx(expected, rel=1e-5)


def test_block_sync_loss_adds_the_ranking_term_by_its_weight():
    """All cosines 0.5 (SyncNet's stall): BCE is ln 2, the ranking among 4 candidates ln 4; it is always
    logged and joins the loss by contrastive_weight."""
    from pipeline.lipsync.syncnet_train import block_sync_loss
    unit = torch.tensor([1.0, 1.0, 0.0, 0.0]) / np.sqrt(2)
    face = unit.repeat(4, 1)
    audio = torch.tensor([1.0, 0.0, 1.0, 0.0]).repeat(4, 1) / np.sqrt(2)  # cosine 0.5 with every face
    first = torch.tensor([[0, 3, 6, 9]])
    plain, terms = block_sync_loss(audio, face, first, 1)
    assert float(plain) == pytest.approx(np.log(2), rel=1e-5)
    assert terms["bce"] == pytest.approx(np.log(2), rel=1e-5) and terms["contrastive"] == pytest.approx(np.log(4))
    ranked, _ = block_sync_loss(audio, face, first, 1, contrastive_weight=0.5)
    assert float(ranked) == pytest.approx(np.log(2) + 0.5 * np.log(4), rel=1e-5)


def test_train_syncnet_runs_under_torchrun_with_two_ranks(chain, tmp_path):
    """base.processes: 2 relaunches the stage under torchrun (gloo): 2 clips a rank, rank 0 alone writes."""
    import subprocess
    import sys

    import yaml

    from tests.conftest import ROOT, tiny_params_dict

    params = tiny_params_dict()
    params["base"]["processes"] = 2
    params["train_syncnet"]["pretrain_wide"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "stages.train_syncnet", "--params", str(tmp_path / "params.yaml"),
                           "--corpus", str(chain["corpus"]), "--audio", str(chain["audio"]),
                           "--out", str(out / "syncnet.pt"), "--report", str(out / "syncnet.json"),
                           "--losses", str(out / "losses.csv")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert load_pipeline_model(out / "syncnet.pt", "syncnet_color").step == 4
    assert [r["step"] for r in read_loss_csv(out / "losses.csv")] == [2, 4]
    assert "heldout_accuracy" in json.loads((out / "syncnet.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["losses.csv", "syncnet.json", "syncnet.pt",
                                                    "syncnet.pt.timings.json"]
