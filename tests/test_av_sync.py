"""syncnet_python's offset search, the scorers' input windows, the sync filter rule and `emmn sync-score`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from pipeline.core.errors import InputError
from pipeline.lipsync.av_sync import av_offset, offset_distances, sync_window_count
from pipeline.lipsync.sync_filter import keep_mask, pseudo_report
from pipeline.lipsync.sync_scorers import (
    SyncScorer,
    expert_mel_windows,
    mfcc_windows,
    score_clip,
)
from stages.cli import app
from tests.lipsync_fixtures import tiny_audio  # noqa: F401  (fixture)

runner = CliRunner()
SPF = 640  # samples per video frame at 16 kHz / 25 fps


def official_evaluate(video: torch.Tensor, audio: torch.Tensor, vshift: int = 15):
    """syncnet_python's `calc_pdist` + `evaluate` tail, transcribed loop for loop."""
    win_size = vshift * 2 + 1
    feat2p = torch.nn.functional.pad(audio, (0, 0, vshift, vshift))
    dists = [torch.nn.functional.pairwise_distance(video[[i], :].repeat(win_size, 1), feat2p[i:i + win_size, :])
             for i in range(len(video))]
    mdist = torch.mean(torch.stack(dists, 1), 1)
    minval, minidx = torch.min(mdist, 0)
    return int(vshift - minidx), float(torch.median(mdist) - minval), float(minval)


class CodeScorer(SyncScorer):
    """Identity-like embeddings: each frame carries a random code, as brightness in the video and as the
    amplitude of its 640-sample block in the audio; a window's embedding is its 5 codes."""

    def video_embeddings(self, frames_rgb, n_windows):
        codes = frames_rgb[:, 0, 0, 0].astype(np.float32) / 255.0
        return torch.from_numpy(np.stack([codes[v:v + 5] for v in range(n_windows)]))

    def audio_embeddings(self, samples, n_windows):
        blocks = samples[: (len(samples) // SPF) * SPF].reshape(-1, SPF)
        codes = np.abs(blocks).max(axis=1).astype(np.float32)
        return torch.from_numpy(np.stack([codes[v:v + 5] for v in range(n_windows)]))


def coded_clip(n_frames: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    codes = np.random.default_rng(seed).integers(10, 250, size=n_frames)
    frames = np.repeat(codes.astype(np.uint8)[:, None, None, None], 4, axis=1).repeat(4, axis=2).repeat(3, axis=3)
    samples = np.repeat(codes / 255.0, SPF).astype(np.float32)
    return frames, samples


def test_offset_search_equals_syncnet_python_on_random_embeddings():
    gen = torch.Generator().manual_seed(3)
    video, audio = torch.randn(40, 16, generator=gen), torch.randn(40, 16, generator=gen)
    audio[5:] = video[:-5] + 0.3 * torch.randn(35, 16, generator=gen)  # video v matches audio v+5
    ours = av_offset(video, audio)
    offset, conf, min_dist = official_evaluate(video, audio)
    assert ours.offset == offset == -5
    assert ours.confidence == pytest.approx(conf, abs=1e-6) and ours.min_dist == pytest.approx(min_dist, abs=1e-6)
    assert offset_distances(video, audio).shape == (40, 31)
    assert ours.frame_confidence.shape == (40,)


@pytest.mark.parametrize("shift", [3, 0, -3])
def test_known_audio_shift_is_recovered(shift):
    frames, samples = coded_clip(60)
    if shift >= 0:  # audio leads: the sound of frame t + shift plays at t
        video, audio = frames[:len(frames) - shift], samples[shift * SPF:]
    else:
        video, audio = frames[-shift:], samples[:len(samples) + shift * SPF]
    result = score_clip(CodeScorer(), video, audio)
    assert result.offset == shift
    assert result.confidence > 0.5
    # at the right offset every window with a partner inside the clip matches exactly (only the
    # pairwise_distance eps remains); the |shift| windows whose partner is a zero pad carry min_dist
    n = sync_window_count(len(video), len(audio))
    scorer = CodeScorer()
    dists = offset_distances(scorer.video_embeddings(video, n), scorer.audio_embeddings(audio, n))[:, 15 - shift]
    inside = dists[max(shift, 0):n + min(shift, 0)]
    assert len(inside) == n - abs(shift) and float(inside.max()) < 1e-4
    assert result.min_dist == pytest.approx(float(dists.mean()), abs=1e-6)


def test_window_count_follows_syncnet_python():
    assert sync_window_count(100, 100 * SPF) == 95  # L - 5, one fewer than would fit
    assert sync_window_count(100, 40 * SPF + 639) == 35  # the shorter stream decides
    frames, samples = coded_clip(5)
    with pytest.raises(InputError, match="too short"):
        score_clip(CodeScorer(), frames, samples, source="x.wav")


def test_expert_mel_windows_equal_audio_store_rows(tiny_audio):
    from pipeline.core.media import load_audio
    from pipeline.core.store import read_clip

    corpus, store = tiny_audio
    manifest = pd.read_parquet(corpus / "manifest.parquet")
    row = manifest[manifest.kind == "real"].iloc[0]
    samples = load_audio(corpus / row.wav_path)
    n = sync_window_count(int(row.frames), len(samples))
    windows = expert_mel_windows(samples, n)
    stored = read_clip(store, row.clip_id, ("mel",))["mel"][:n]
    assert windows.shape == (n, 80, 16)
    np.testing.assert_allclose(windows, stored, atol=1e-5)
    mfcc = mfcc_windows(samples, n)
    assert mfcc.shape == (n, 13, 20)


def test_filter_rule_and_report_numbers():
    scores = pd.DataFrame({"pseudo_clip_id": list("abcd"), "confidence": [0.5, 0.1, 0.3, 0.25],
                           "offset": [0, 0, 2, -1], "confidence_original": [0.1, 0.2, 0.1, 0.1]})
    scores["kept"] = keep_mask(scores, threshold=0.2, max_offset=1)
    assert scores.kept.tolist() == [True, False, False, True]
    clips = pd.DataFrame({"pseudo_clip_id": list("abcd"), "counterfactual_clip_id": ["x", "y", "z", None],
                          "mouth_err": [1.0, 3.0, 2.0, np.nan], "mouth_err_original": [2.0, 2.0, 2.0, np.nan],
                          "mouth_err_counterfactual": [0.5, 0.5, 0.5, np.nan], "landmark_model_err": 0.4})
    pairs = pd.DataFrame({"y_ib": ["a", "b"], "y_ja": ["d", "a"]})
    report = pseudo_report(clips, scores, pairs, 0.2, 1, "test")
    assert report["mouth_err_all"] == pytest.approx(2.0) and report["mouth_err_kept"] == pytest.approx(1.0)
    assert report["kept_fraction"] == 0.5 and report["threshold"] == 0.2
    assert report["quadruples_kept"] == 1 and report["more_confident_than_original"] == 0.75
    assert report["checks"] == {"redubs_more_in_sync_than_original": True, "most_kept": False,
                                "redub_mouths_closer_than_source": False}  # 2.0 px is not below the source's 2.0
    # the committed default run's regression (re-dubs 0.059 vs original 0.164, 0 of 720 kept) fails two checks
    bad = scores.assign(confidence=0.059, confidence_original=0.164)
    bad["kept"] = keep_mask(bad, threshold=0.2, max_offset=1)
    checks = pseudo_report(clips, bad, pairs, 0.2, 1, "test")["checks"]
    assert checks["redubs_more_in_sync_than_original"] is False and checks["most_kept"] is False


# ------------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def scorer_checkpoint(tmp_path_factory):
    from pipeline.lipsync.io import lipsync_config
    from pipeline.models.syncnet_color import SyncNetColor, SyncNetColorConfig
    from pipeline.training.loop import save_training_state

    torch.manual_seed(0)
    model = SyncNetColor(SyncNetColorConfig.scaled(0.125))
    path = tmp_path_factory.mktemp("ckpt") / "syncnet.pt"
    save_training_state(path, modules={"syncnet_color": model}, config=lipsync_config("syncnet_color", model.config,
                                                                                        25.0, "reflect"), step=0)
    return path


@pytest.fixture(scope="module")
def clip_files(tiny_corpus, tmp_path_factory):
    from pipeline.core.media import write_mp4, write_wav
    from pipeline.core.store import read_clip

    out = tmp_path_factory.mktemp("media")
    manifest = pd.read_parquet(tiny_corpus / "manifest.parquet")
    row = manifest[manifest.kind == "real"].iloc[0]
    frames = read_clip(tiny_corpus / "frames.zarr", row.clip_id, ("frames",))["frames"]
    write_mp4(out / "with_audio.mp4", frames, 25.0, audio=tiny_corpus / row.wav_path)
    write_mp4(out / "silent.mp4", frames, 25.0)
    write_wav(out / "short.wav", np.zeros(4 * SPF, np.float32), 16000)
    return out, len(frames)


def test_sync_score_cli_on_an_mp4(clip_files, scorer_checkpoint):
    out, n_frames = clip_files
    result = runner.invoke(app, ["sync-score", str(out / "with_audio.mp4"), "--weights", str(scorer_checkpoint),
                                 "--crop", "none"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output.strip().splitlines()[-1])
    assert -15 <= scores["offset"] <= 15 and scores["lse_c"] >= 0 and scores["lse_d"] > 0
    assert scores["windows"] == n_frames - 5 and scores["scorer"] == "syncnet_color"


def test_sync_score_bad_inputs_exit_2(clip_files, scorer_checkpoint, tmp_path):
    out, _ = clip_files
    silent = runner.invoke(app, ["sync-score", str(out / "silent.mp4"), "--weights", str(scorer_checkpoint)])
    assert silent.exit_code == 2 and "no audio stream" in silent.output
    short = runner.invoke(app, ["sync-score", str(out / "with_audio.mp4"), "--audio", str(out / "short.wav"),
                                "--weights", str(scorer_checkpoint), "--crop", "none"])
    assert short.exit_code == 2 and "too short" in short.output and "short.wav" in short.output
    wrong = tmp_path / "fomm.pt"
    torch.save({"model": {"kp_detector": {"w": torch.zeros(1)}}, "config": {}, "step": 0}, wrong)
    bad = runner.invoke(app, ["sync-score", str(out / "with_audio.mp4"), "--weights", str(wrong)])
    assert bad.exit_code == 2 and "wrong model" in bad.output and len(bad.output.strip().splitlines()) == 1


def test_official_syncnet_v2_file_scores_an_mp4(clip_files, tmp_path):
    from pipeline.lipsync.io import load_syncnet_any
    from pipeline.models.syncnet_v2 import SyncNetV2

    torch.manual_seed(0)
    official = tmp_path / "syncnet_v2.model"
    state = SyncNetV2().state_dict()
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, official)  # bare, old
    assert load_syncnet_any(official).arch == "syncnet_v2"
    out, n_frames = clip_files
    result = runner.invoke(app, ["sync-score", str(out / "with_audio.mp4"), "--weights", str(official),
                                 "--crop", "none"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output.strip().splitlines()[-1])
    assert scores["scorer"] == "syncnet_v2" and scores["windows"] == n_frames - 5


def test_a_generator_file_is_not_a_scorer(tmp_path):
    from pipeline.core.errors import CheckpointError
    from pipeline.lipsync.io import load_syncnet_any

    path = tmp_path / "wav2lip.pth"
    torch.save({"state_dict": {"module.face_decoder_blocks.0.0.conv_block.0.weight": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="wrong model .a Wav2Lip generator"):
        load_syncnet_any(path)
