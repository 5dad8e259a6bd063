"""The emotion ceilings: the landmark warp of the reference onto other landmarks, and the EMMN row."""

from __future__ import annotations

import numpy as np

from pipeline.evaluation.emotion_ceiling import (
    border_points,
    delaunay_triangles,
    landmark_warps,
    piecewise_affine_warp,
)
from tests.lipsync_fixtures import tiny_audio  # noqa: F401


def grid_points(size: int) -> np.ndarray:
    ticks = np.linspace(size * 0.3, size * 0.7, 3, dtype=np.float32)
    return np.stack(np.meshgrid(ticks, ticks), -1).reshape(-1, 2)


def test_triangles_cover_the_frame_and_unmoved_points_copy_it():
    size = 32
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    points = np.concatenate([grid_points(size), border_points(size)])
    triangles = delaunay_triangles(points, size)
    # Euler: a triangulation of n points with h on the hull has 2n - h - 2 triangles (here the 8 border points)
    assert len(triangles) == 2 * len(points) - 8 - 2
    np.testing.assert_array_equal(piecewise_affine_warp(image, points, points, triangles), image)


def test_moving_the_inner_points_moves_the_picture_between_them():
    size = 32
    image = np.zeros((size, size, 3), np.uint8)
    image[14:18, 14:18] = 255  # a white square around the centre point (16, 16)... of the 3x3 grid at 9.6..22.4
    inner = grid_points(size)
    moved = inner + np.float32([3, 0])  # every inner point 3 px to the right; the border stays
    out = landmark_warps(image, inner, moved[None])[0]
    # Inside the inner grid the map is a pure translation by (3, 0).
    np.testing.assert_array_equal(out[14:18, 17:21], image[14:18, 14:18])
    assert out[14:18, 14:17].max() == 0


def test_the_emmn_row_renders_a_clip_as_the_product_does(tiny_audio, tmp_path):  # noqa: F811
    """EmmnNet's keypoints from the clip's audio drive the actor's reference: every stride-th frame, at the
    asked frame size; keypoints that do not move give one unchanging frame."""
    import pandas as pd
    import torch

    from pipeline.evaluation.emotion_ceiling import EmmnRow
    from tests.conftest import tiny_section
    from tests.generate_fixtures import write_tiny_emmn, write_tiny_fomm

    corpus, audio = tiny_audio
    write_tiny_fomm(tmp_path / "fomm.pt")
    write_tiny_emmn(tmp_path / "emmn.pt", num_kp=tiny_section("train_fomm").num_kp)
    row = EmmnRow(tmp_path / "emmn.pt", tmp_path / "fomm.pt", corpus, audio, tmp_path / "no_prosody.zarr")
    manifest = pd.read_parquet(corpus / "manifest.parquet")
    clip = next(manifest[(manifest.kind == "real")].itertuples(index=False))
    frames = row(clip, 2, 40)
    assert frames.shape == ((int(clip.frames) + 1) // 2, 40, 40, 3) and frames.dtype == np.uint8
    with torch.no_grad():  # an all-zero EmmnNet predicts the same keypoints for every frame
        for q in row.emmn.parameters():
            q.zero_()
    still = row(clip, 2, 40)
    assert np.abs(still.astype(int) - still[:1].astype(int)).max() <= 1
    sharper = EmmnRow(tmp_path / "emmn.pt", tmp_path / "fomm.pt", corpus, audio, tmp_path / "no_prosody.zarr",
                      read_temperature=0.25)
    assert sharper.emmn.config.read_temperature == 0.25 != row.emmn.config.read_temperature


def test_per_emotion_accuracy_is_each_emotion_s_share_of_right_clips():
    from pipeline.evaluation.emotion_ceiling import per_emotion_accuracy

    hits = {"real": [True, False, True, True], "fomm_keypoints": [False, False, True, False]}
    emotions = ["happy", "happy", "sad", "sad"]
    assert per_emotion_accuracy(hits, emotions) == {"real": {"happy": 0.5, "sad": 1.0},
                                                    "fomm_keypoints": {"happy": 0.0, "sad": 0.5}}


def test_the_sheet_defaults_to_the_first_held_out_actor_and_sentence_and_refuses_others():
    import pandas as pd
    import pytest

    from pipeline.core.errors import InputError
    from pipeline.render.generate_set import sheet_clips

    def sheet_clip(actor, sentence):
        chosen = sheet_clips(clips, actor, sentence, section="emotion_ceiling")
        return str(chosen.actor.iloc[0]), int(chosen.sentence_id.iloc[0])

    clips = pd.DataFrame({"actor": ["W2", "M1", "M1", "W2"], "sentence_id": [7, 9, 8, 6], "emotion": "happy",
                          "level": 3})
    assert sheet_clip(None, None) == ("M1", 8)
    assert sheet_clip("W2", None) == ("W2", 6)
    with pytest.raises(InputError, match="M9 is not a held-out actor"):
        sheet_clip("M9", None)
    with pytest.raises(InputError, match="no held-out sentence 6"):
        sheet_clip("M1", 6)


def test_a_corpus_without_landmarks_leaves_the_warp_row_out_and_names_it(tiny_audio, tmp_path):  # noqa: F811
    """MEAD corpora have no exact landmarks: the ceilings still run, without the landmark-warp row."""
    import shutil

    import torch
    import zarr

    from pipeline.evaluation.emotion_ceiling import emotion_ceilings
    from pipeline.judges.evaluator import EmotionNet, Evaluator
    from tests.generate_fixtures import write_tiny_fomm

    corpus, _ = tiny_audio
    torch.manual_seed(0)
    judge = Evaluator(EmotionNet(4, 4), ("neutral", "happy", "sad", "surprised"), 32)
    write_tiny_fomm(tmp_path / "fomm.pt")
    report, sheet = emotion_ceilings(corpus, judge, tmp_path / "fomm.pt", stride=8)
    assert {"real", "reference", "landmark_warp", "fomm_keypoints"} <= set(report) and "rows_left_out" not in report
    assert set(report["per_emotion"]["landmark_warp"]) == {"neutral", "happy", "sad", "surprised"}
    size = sheet.shape[0] // 4  # four emotions, one row each: real | landmark warp | FOMM | reference
    assert sheet.shape[1] == 4 * size

    shutil.copytree(corpus, tmp_path / "corpus")
    del zarr.open_group(tmp_path / "corpus" / "frames.zarr", mode="a")["reference_landmarks"]
    report, sheet = emotion_ceilings(tmp_path / "corpus", judge, tmp_path / "fomm.pt", stride=8)
    assert "landmark_warp" not in report and "landmark_warp" not in report["per_emotion"]
    assert "MEAD" in report["rows_left_out"]["landmark_warp"]
    assert sheet.shape[1] == 3 * size
