"""The Table 1 metrics on cases with known answers, the per-clip scorer, the rows of metrics.json and Table 1."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.ndimage

from pipeline.core.image_quality import psnr
from pipeline.evaluation.metrics import (
    clip_metrics,
    expression_errors,
    gaussian_window,
    match_lengths,
    ssim,
    sync_metrics,
)
from pipeline.evaluation.metrics_report import (
    METRICS,
    aggregate_rows,
    comparison_notes,
    table1_markdown,
)
from pipeline.judges.scores import (
    confusion_matrix,
    f_lmd,
    landmark_distance,
    m_lmd,
    write_confusion_png,
)
from tests.test_av_sync import SPF, CodeScorer, coded_clip


def random_clip(t=3, h=24, w=20, seed=0, low=0, high=256) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, size=(t, h, w, 3)).astype(np.uint8)


# ----------------------------------------------------------------------------------------- PSNR / SSIM


def test_identical_frames_give_psnr_inf_and_ssim_one():
    clip = random_clip()
    assert np.isinf(psnr(clip, clip, data_range=255.0)).all()
    np.testing.assert_allclose(ssim(clip, clip), 1.0, atol=1e-12)


def test_constant_offset_gives_the_exact_psnr():
    clip = random_clip(low=10, high=240)
    shifted = clip + np.uint8(5)  # every pixel off by 5: MSE = 25
    np.testing.assert_allclose(psnr(shifted, clip, data_range=255.0), 10 * math.log10(255 ** 2 / 25),
                               rtol=1e-12)  # 34.151 dB
    assert psnr(shifted, clip, data_range=255.0)[0] == pytest.approx(34.1514, abs=1e-4)


def test_ssim_of_two_flat_frames_is_the_luminance_term():
    # no variance: SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 255)^2 = 6.5025
    a, b = np.full((1, 16, 16, 3), 100, np.uint8), np.full((1, 16, 16, 3), 110, np.uint8)
    assert ssim(a, b)[0] == pytest.approx((2 * 100 * 110 + 6.5025) / (100 ** 2 + 110 ** 2 + 6.5025), rel=1e-12)


def test_ssim_of_one_window_equals_the_weighted_sums_of_wang_et_al():
    """An 11x11 frame holds exactly one window: SSIM from explicit Gaussian-weighted moments, per channel."""
    x, y = random_clip(1, 11, 11, seed=1), random_clip(1, 11, 11, seed=2)
    taps = gaussian_window()
    weights = np.outer(taps, taps)
    assert weights.sum() == pytest.approx(1.0) and taps[5] == taps.max()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    per_channel = []
    for c in range(3):
        a, b = x[0, :, :, c].astype(float), y[0, :, :, c].astype(float)
        mu_a, mu_b = (weights * a).sum(), (weights * b).sum()
        var_a, var_b = (weights * (a - mu_a) ** 2).sum(), (weights * (b - mu_b) ** 2).sum()
        cov = (weights * (a - mu_a) * (b - mu_b)).sum()
        per_channel.append((2 * mu_a * mu_b + c1) * (2 * cov + c2)
                           / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
    assert ssim(x, y)[0] == pytest.approx(np.mean(per_channel), rel=1e-10)


def test_ssim_equals_skimage_gaussian_algorithm_on_larger_frames():
    """skimage's structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False):
    reflect-padded Gaussian filtering (truncate 3.5: radius 5), border of 5 px cropped, mean per channel."""
    x = random_clip(2, 40, 33, seed=3)
    y = np.clip(x.astype(int) + np.random.default_rng(4).integers(-40, 41, x.shape), 0, 255).astype(np.uint8)

    def skimage_like(a: np.ndarray, b: np.ndarray) -> float:
        def g(z):
            return scipy.ndimage.gaussian_filter(z, sigma=1.5, truncate=3.5, mode="reflect")
        a, b = a.astype(np.float64), b.astype(np.float64)
        ux, uy = g(a), g(b)
        vx, vy, vxy = g(a * a) - ux * ux, g(b * b) - uy * uy, g(a * b) - ux * uy
        c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
        return float(s[5:-5, 5:-5].mean())

    expected = [np.mean([skimage_like(x[t, :, :, c], y[t, :, :, c]) for c in range(3)]) for t in range(2)]
    np.testing.assert_allclose(ssim(x, y), expected, rtol=1e-9)
    assert (ssim(x, y) < 0.99).all()  # noisy copies: clearly below 1


def test_metrics_refuse_mismatched_clips():
    with pytest.raises(ValueError):
        psnr(random_clip(3), random_clip(2), data_range=255.0)
    with pytest.raises(ValueError, match="SSIM window"):
        ssim(random_clip(1, 8, 8), random_clip(1, 8, 8))


# -------------------------------------------------------------------------------------------- LMD


def face_track(t=4, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(20, 100, size=(t, 68, 2))


def test_identical_landmarks_and_a_pure_shift_give_zero_lmd():
    truth = face_track()
    assert m_lmd(truth, truth) == 0.0 and f_lmd(truth, truth) == 0.0
    shifted = truth + np.array([3.0, -2.0])  # each frame's translation is removed by mean-centring
    per_frame = truth + np.random.default_rng(1).normal(size=(4, 1, 2)) * 5
    for moved in (shifted, per_frame):
        assert m_lmd(moved, truth) == pytest.approx(0.0, abs=1e-12)
        assert f_lmd(moved, truth) == pytest.approx(0.0, abs=1e-12)


def test_one_moved_mouth_point_gives_the_exact_lmd():
    truth = face_track()
    pred = truth.copy()
    pred[:, 50] += [3.0, 4.0]  # a mouth point moved 5 px in every frame
    # mouth: its mean moves by (3,4)/20 -> the moved point is off by 5 * 19/20, the 19 others by 5/20
    assert m_lmd(pred, truth) == pytest.approx((5 * 19 / 20 + 19 * 5 / 20) / 20)  # 0.475
    # face: mean moves by (3,4)/68 -> 5 * 67/68 + 67 * 5/68 over 68 points
    assert f_lmd(pred, truth) == pytest.approx(2 * 5 * 67 / 68 / 68)  # 0.1449


def test_scaled_landmarks_give_the_scaled_centred_norm_and_nan_frames_are_skipped():
    truth = face_track(3)
    centred = truth - truth.mean(axis=1, keepdims=True)
    pred = truth.mean(axis=1, keepdims=True) + 1.1 * centred  # 10% larger face, same centre
    assert f_lmd(pred, truth) == pytest.approx(0.1 * np.linalg.norm(centred, axis=-1).mean())
    pred[1] = np.nan  # no face found in frame 1 of the generated clip
    assert f_lmd(pred, truth) == pytest.approx(0.1 * np.linalg.norm(centred[[0, 2]], axis=-1).mean())
    assert landmark_distance(np.full((2, 5, 2), np.nan), np.zeros((2, 5, 2))) is None


def test_frames_are_matched_as_eat_does():
    gen, tru = match_lengths(10, 5)
    assert gen.tolist() == [0, 2, 4, 6, 8] and tru.tolist() == [0, 1, 2, 3, 4]
    gen, tru = match_lengths(4, 4)
    assert gen.tolist() == tru.tolist() == [0, 1, 2, 3]


# ------------------------------------------------------------------------------------ sync, one clip


def test_a_three_frame_audio_shift_gives_offset_three():
    """The metric-level entry point of tests/test_av_sync.py::test_known_audio_shift_is_recovered."""
    frames, samples = coded_clip(60)
    video, audio = frames[:-3], samples[3 * SPF:]  # the sound of frame t + 3 plays at t
    result = sync_metrics(CodeScorer(), video, audio)
    assert result["sync_offset"] == 3
    assert result["sync_conf"] > 0.5 and result["lse_d"] >= 0
    in_sync = sync_metrics(CodeScorer(), frames, samples)
    assert in_sync["sync_offset"] == 0 and in_sync["lse_d"] < result["lse_d"]


def test_clip_metrics_of_the_ground_truth_and_of_a_static_frame():
    truth = random_clip(8, 24, 24, seed=5)
    points = face_track(8)
    emotions = ("neutral", "happy")

    def logits(frames):  # brighter than mid-grey reads as happy
        happy = frames.reshape(len(frames), -1).mean(axis=1) / 255.0 - 0.5
        return np.stack([np.zeros_like(happy), happy], axis=1)

    def detector(frames):  # a judge that knows which frame it sees by its first pixel
        codes = {truth[t, 0, 0, 0]: t for t in range(len(truth))}
        return np.stack([points[codes.get(f[0, 0, 0], 0)] for f in frames])

    gt = clip_metrics(truth, truth, emotion="neutral", emotion_logits=logits, emotions=emotions,
                      landmarks=detector, truth_landmarks=points)
    assert gt["psnr"] is None and gt["ssim"] == pytest.approx(1.0) and gt["m_lmd"] == 0.0 and gt["f_lmd"] == 0.0
    assert gt["sync_conf"] is None and gt["frames"] == 8
    assert gt["emotion_pred"] == ("happy" if truth.mean() > 127.5 else "neutral")
    static = np.repeat(random_clip(1, 24, 24, seed=6), 8, axis=0)  # a reference frame, not one of the clip's
    st = clip_metrics(static, truth, landmarks=lambda frames: np.repeat(points[:1], len(frames), axis=0),
                      truth_landmarks=points)
    assert st["psnr"] == pytest.approx(float(np.mean(psnr(static, truth, data_range=255.0))), rel=1e-12)
    assert st["psnr"] < 20
    assert st["ssim"] == pytest.approx(float(np.mean(ssim(static, truth))), rel=1e-12)
    assert st["m_lmd"] == pytest.approx(m_lmd(np.repeat(points[:1], 8, axis=0), points)) and st["m_lmd"] > 1
    assert st["emotion_pred"] is None


def test_expression_errors_by_hand():
    """Mean |estimated - true| per control over frames; the mouth and upper means over their controls."""
    predicted = np.array([[0.5, 1.0, 0.0], [0.5, 0.0, 0.0]])
    truth = np.array([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    out = expression_errors(predicted, truth, ("jaw", "smile", "brow"), ("jaw", "smile"), ("brow",))
    assert out == {"expr_jaw": 0.5, "expr_smile": 0.5, "expr_brow": 0.5, "expr_err_mouth": 0.5,
                   "expr_err_upper": 0.5}
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    read = (lambda f: np.tile([[0.5, 1.0, 0.0]], (len(f), 1)))
    scored = clip_metrics(frames, frames[:2], expression=(("jaw", "smile", "brow"), read, ("jaw", "smile"), ("brow",)),
                          truth_controls=truth)
    assert (scored["expr_jaw"], scored["expr_smile"], scored["expr_err_mouth"], scored["expr_err_upper"]) == (
        0.5, 0.0, 0.25, 0.5)
    assert clip_metrics(frames, frames)["expr_err_mouth"] is None  # no judge: no number


def test_clip_metrics_match_lengths_and_score_sync():
    frames, samples = coded_clip(40)
    frames = frames.repeat(4, axis=1).repeat(4, axis=2)  # 16x16: room for the SSIM window
    out = clip_metrics(frames, frames[:20], scorer=CodeScorer(), samples=samples)
    assert out["frames"] == 20 and out["sync_offset"] == 0 and out["sync_conf"] > 0.5


# ----------------------------------------------------------------------------------- rows and tables


def per_clip_table() -> pd.DataFrame:
    rows = []
    for row, base in (("ground_truth", 0.0), ("static", 1.0), ("emmn", 2.0), ("baseline", 3.0)):
        for k in range(2):
            rows.append({"row": row, "clip_id": f"c{k}", "psnr": np.inf if row == "ground_truth" else 20 + base + k,
                         "ssim": 1.0 if row == "ground_truth" else 0.5 + 0.1 * k, "m_lmd": base + k,
                         "f_lmd": base + 2 * k, "sync_conf": 1.0 + k, "lse_d": 8.0 - base,
                         "expr_err_mouth": 0.1 * base + 0.1 * k, "expr_err_upper": 0.2 * base,
                         "expr_jaw_open": 0.1 * base, "expr_brow_raise": 0.3 * base + k,
                         "emotion_correct": (k == 0) or row in ("ground_truth", "emmn")})
    return pd.DataFrame(rows)


def test_rows_are_clip_means_and_psnr_of_the_ground_truth_is_null():
    rows = aggregate_rows(per_clip_table())
    assert list(rows) == ["ground_truth", "static", "baseline", "emmn"]  # table order, missing rows left out
    assert all(list(v) == [*METRICS, "expr_err_by_control"] for v in rows.values())
    assert rows["ground_truth"]["psnr"] is None and rows["ground_truth"]["ssim"] == 1.0
    assert rows["static"] == {"psnr": 21.5, "ssim": 0.55, "m_lmd": 1.5, "f_lmd": 2.0, "sync_conf": 1.5,
                              "lse_d": 7.0, "expr_err_mouth": 0.15, "expr_err_upper": 0.2, "emotion_acc": 0.5,
                              "expr_err_by_control": {"jaw_open": 0.1, "brow_raise": 0.8}}
    assert rows["emmn"]["emotion_acc"] == 1.0 and rows["baseline"]["m_lmd"] == 3.5


def test_table1_marks_the_best_generated_row_and_says_where_emmn_loses():
    rows = aggregate_rows(per_clip_table())
    md = table1_markdown(rows, notes=["Measured on the built-in corpus."])
    lines = md.splitlines()
    assert lines[2].startswith("| Method | PSNR") and "Emotion acc" in lines[2]
    gt_line = next(line for line in lines if line.startswith("| Ground truth"))
    assert "| n/a |" in gt_line and "**" not in gt_line
    static_line = next(line for line in lines if line.startswith("| Static"))
    assert "**1.50**" in static_line  # lowest M-LMD among the generated rows
    notes = comparison_notes(rows)
    assert any(n.startswith("M-LMD: Static reference frame beats EMMN (1.50 vs 2.50)") for n in notes)
    assert any(n.startswith("PSNR: Baseline") for n in notes)
    assert not any(n.startswith("Emotion") for n in notes)  # EMMN has the best emotion accuracy
    assert "Where EMMN does not win:" in md and md.rstrip().endswith("Measured on the built-in corpus.")


def test_confusion_matrix_counts_and_png(tmp_path):
    classes = ("neutral", "happy", "sad")
    matrix = confusion_matrix(["neutral", "happy", "happy", "sad"], ["neutral", "happy", "sad", "sad"], classes)
    assert matrix.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    path = tmp_path / "confusion.png"
    write_confusion_png(matrix, classes, path)
    import cv2

    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 3 * 56 and img.shape[1] > 3 * 56
