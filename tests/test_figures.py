"""The figures stage on the tiny corpus: Fig. 6-style sheet and side-by-side mp4 from a hand-made outputs store."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.core.config import with_field
from pipeline.core.errors import InputError
from pipeline.core.store import ArraySpec, RaggedStoreWriter, open_store
from pipeline.evaluation.figures import (
    CAPTION_LINE,
    HEADER,
    mouth_opening,
    select_clips,
)
from tests.conftest import tiny_params_dict, tiny_section

ROWS = ("ground_truth", "baseline", "emmn")  # no mmn, no wav2lip_only: both must be skipped and named


def fake_row(row: str, gt: np.ndarray) -> np.ndarray:
    """Distinct, checkable frames per row: the real clip, its negative, or a frame-index code."""
    if row == "ground_truth":
        return gt
    if row == "emmn":
        return 255 - gt
    codes = np.zeros_like(gt)
    codes[..., 0] = (np.arange(len(gt)) % 200)[:, None, None]
    codes[..., 1] = 77
    return codes


@pytest.fixture(scope="module")
def outputs(tiny_corpus, tmp_path_factory):
    """A generated frames.zarr as the generate stage lays it out, rows ROWS x the held-out clips."""
    manifest = pd.read_parquet(tiny_corpus / "manifest.parquet")
    heldout = manifest[(manifest.split == "test") & (manifest.kind == "real")].sort_values("clip_id")
    corpus = open_store(tiny_corpus / "frames.zarr")["frames"]
    size = corpus.shape[1]
    store = tmp_path_factory.mktemp("outputs") / "frames.zarr"
    writer = RaggedStoreWriter(store, [f"{r}/{c}" for r in ROWS for c in heldout.clip_id],
                               [int(n) for _ in ROWS for n in heldout.frames],
                               {"frames": ArraySpec((size, size, 3), "uint8", ("y", "x", "channel"))},
                               attrs={"stage": "test"}, chunk_frames=16, shard_frames=256)
    i = 0
    for row in ROWS:
        for c in heldout.itertuples():
            writer.write_clip(i, {"frames": fake_row(row, np.asarray(corpus[c.start:c.stop]))})
            i += 1
    writer.close()
    return tiny_corpus, store, heldout


def test_mouth_opening_is_the_mean_inner_lip_gap():
    landmarks = np.zeros((2, 68, 2))
    landmarks[1, [61, 62, 63], 1] = [10, 11, 12]  # upper inner lip
    landmarks[1, [67, 66, 65], 1] = [13, 15, 17]  # lower inner lip: gaps 3, 4, 5
    np.testing.assert_allclose(mouth_opening(landmarks), [0.0, 4.0])


def test_select_clips_prefers_the_level_then_the_highest():
    manifest = pd.DataFrame([
        {"clip_id": c, "actor": a, "sentence_id": s, "emotion": e, "level": lv}
        for c, a, s, e, lv in [("a", "W1", 5, "neutral", 1), ("b", "W1", 5, "happy", 1), ("c", "W1", 5, "happy", 3),
                               ("d", "W1", 5, "sad", 1), ("e", "W1", 5, "sad", 2), ("f", "W1", 4, "happy", 3),
                               ("g", "M0", 1, "happy", 3), ("h", "W1", 6, "sad", 3), ("i", "W1", 6, "happy", 3)]])
    p = with_field(tiny_section("figures"), emotions=("neutral", "happy", "sad", "fear"), actor="W1")
    chosen = select_clips(manifest, set(manifest.clip_id), p)
    # sentence 5 has 3 emotions, 6 has 2, 4 has 1 -> 5; happy at level 3 (c), sad at its highest, 2 (e)
    assert chosen.sentence_id == 5 and chosen.actor == "W1"
    assert chosen.clips.clip_id.tolist() == ["a", "c", "e"] and chosen.missing_emotions == ("fear",)
    # clips missing from the outputs do not count: without a, sentences 5 and 6 tie -> the first (5)
    thinned = select_clips(manifest, set(manifest.clip_id) - {"a"}, p)
    assert thinned.sentence_id == 5 and thinned.clips.clip_id.tolist() == ["c", "e"]
    assert select_clips(manifest, set(manifest.clip_id) - {"a", "b", "c"}, p).sentence_id == 6
    first = select_clips(manifest, set(manifest.clip_id), with_field(p, actor=None))
    assert first.actor == "M0" and first.clips.clip_id.tolist() == ["g"]
    with pytest.raises(InputError, match="figures.actor 'Z9'"):
        select_clips(manifest, set(manifest.clip_id), with_field(p, actor="Z9"))


def test_sheet_cells_are_the_chosen_frames_and_missing_rows_are_named(outputs, tmp_path):
    from pipeline.evaluation.figures import fig6_sheet

    corpus_dir, store, heldout = outputs
    p = tiny_section("figures")
    info = fig6_sheet(store, corpus_dir, tmp_path / "sheet.png", p, log=lambda *_: None)
    assert info["rows"] == ["reference", "baseline", "emmn", "ground_truth"] and info["skipped_rows"] == ["mmn"]
    assert any("mmn" in line for line in info["caption"])
    emotions = ["neutral", "happy", "sad", "surprised"]  # the tiny corpus's, in params (MEAD) order
    assert info["emotions"] == emotions
    assert info["missing_emotions"] == ["angry", "contempt", "disgusted", "fear"]

    sheet = cv2.cvtColor(cv2.imread(str(tmp_path / "sheet.png")), cv2.COLOR_BGR2RGB)
    size = 64
    assert sheet.shape[1] == size * (1 + len(emotions))  # label column + one per emotion
    body = sheet[HEADER:HEADER + size * len(info["rows"])]
    caption_height = sheet.shape[0] - HEADER - body.shape[0]
    assert caption_height > 0 and caption_height % CAPTION_LINE == 0

    corpus = open_store(corpus_dir / "frames.zarr")
    clips = heldout.set_index("emotion").loc[emotions]
    for j, (emotion, clip) in enumerate(clips.iterrows()):
        real = np.asarray(corpus["frames"][clip.start:clip.stop])
        t = int(np.argmax(mouth_opening(np.asarray(corpus["landmarks"][clip.start:clip.stop]))))
        assert info["frame_offsets"][j] == t and info["clips"][j] == clip.clip_id
        for i, row in enumerate(info["rows"][1:], start=1):
            cell = body[i * size:(i + 1) * size, (j + 1) * size:(j + 2) * size]
            np.testing.assert_array_equal(cell, fake_row(row, real)[t], err_msg=f"{row} / {emotion}")
    reference = corpus["reference_frames"][list(corpus["reference_actor"][:]).index(clips.actor.iloc[0])]
    np.testing.assert_array_equal(body[:size, size:2 * size], reference)
    assert (body[:size, 2 * size:] == 255).all()  # the rest of the reference row is blank


def test_sheet_fraction_moment_picks_the_relative_time(outputs, tmp_path):
    from pipeline.evaluation.figures import fig6_sheet

    corpus_dir, store, heldout = outputs
    for fraction, expected in ((0.0, lambda n: 0), (1.0, lambda n: n - 1), (0.5, lambda n: round(0.5 * (n - 1)))):
        p = with_field(tiny_section("figures"), moment="fraction", fraction=fraction)
        info = fig6_sheet(store, corpus_dir, tmp_path / "sheet.png", p, log=lambda *_: None)
        frames = heldout.set_index("clip_id").loc[info["clips"], "frames"]
        assert info["frame_offsets"] == [expected(int(n)) for n in frames]


def test_side_by_side_mp4_has_audio_labelled_columns_and_every_clip(outputs, tmp_path):
    from pipeline.core.media import has_audio_stream, load_audio, read_video
    from pipeline.evaluation.figures import side_by_side

    corpus_dir, store, heldout = outputs
    base, p = tiny_section("base"), tiny_section("figures")
    out = tmp_path / "sbs.mp4"
    info = side_by_side(store, corpus_dir, out, base, p, log=lambda *_: None)
    assert info["columns"] == ["reference", "ground_truth", "emmn"] and info["skipped_columns"] == ["wav2lip_only"]
    clips = heldout.set_index("emotion").loc[["neutral", "happy", "sad", "surprised"]]
    video, fps = read_video(out)
    assert len(video) == int(clips.frames.sum()) == info["frames"] and fps == base.fps
    assert video.shape[1:] == (2 * HEADER + 64, 3 * 64, 3)
    assert has_audio_stream(out)
    seconds = len(load_audio(out, base.sample_rate)) / base.sample_rate
    assert abs(seconds - len(video) / base.fps) < 0.1  # each clip's audio fitted to its frames

    # columns in params order: frame k of the second clip (happy) is GT k | EMMN (its negative) k
    first = int(clips.frames.iloc[0])
    happy = np.asarray(open_store(corpus_dir / "frames.zarr")["frames"][clips.start.iloc[1]:clips.stop.iloc[1]])
    cells = video[first + 10, HEADER:HEADER + 64]
    gt, emmn = cells[:, 64:128].astype(int), cells[:, 128:].astype(int)
    assert np.abs(gt - happy[10]).mean() < 6 and np.abs(emmn - (255 - happy[10].astype(int))).mean() < 6
    assert np.abs(gt - (255 - happy[10].astype(int))).mean() > 30  # not the other way round


def test_one_clip_video_and_unknown_rows(outputs, tmp_path):
    from pipeline.core.media import read_video
    from pipeline.evaluation.figures import side_by_side

    corpus_dir, store, heldout = outputs
    base = tiny_section("base")
    p = with_field(tiny_section("figures"), video_emotions=("happy",), video_columns=("ground_truth",))
    info = side_by_side(store, corpus_dir, tmp_path / "one.mp4", base, p, log=lambda *_: None)
    video, _ = read_video(tmp_path / "one.mp4")
    assert info["clips"] == [heldout.set_index("emotion").loc["happy", "clip_id"]]
    assert video.shape == (int(heldout.set_index("emotion").loc["happy", "frames"]), 2 * HEADER + 64, 64, 3)
    with pytest.raises(InputError, match="unknown row"):
        side_by_side(store, corpus_dir, tmp_path / "x.mp4", base, with_field(p, video_columns=("emnm",)))
    with pytest.raises(InputError, match="none of"):
        side_by_side(store, corpus_dir, tmp_path / "x.mp4", base, with_field(p, video_columns=("reference", "mmn")))
    assert not (tmp_path / "x.mp4").exists()


def test_stage_cli_writes_both_files_and_refuses_missing_outputs(outputs, tmp_path):
    from stages.cli import app

    corpus_dir, store, _ = outputs
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict(), sort_keys=False))
    args = ["figures", "--params", str(params), "--corpus", str(corpus_dir), "--sheet", str(tmp_path / "s.png"),
            "--video", str(tmp_path / "v.mp4")]
    result = CliRunner().invoke(app, [*args, "--outputs", str(store)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.png").stat().st_size > 1000 and (tmp_path / "v.mp4").stat().st_size > 1000
    missing = tmp_path / "nothing" / "frames.zarr"
    result = CliRunner().invoke(app, [*args[:-4], "--sheet", str(tmp_path / "s2.png"), "--video",
                                      str(tmp_path / "v2.mp4"), "--outputs", str(missing)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {missing}: generated outputs not found (run generate first)"
    assert not (tmp_path / "s2.png").exists() and not (tmp_path / "v2.mp4").exists()
