"""The generate stage on the tiny corpus: every row x held-out clip into frames.zarr + mp4s, the emotions sheet."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.core.config import with_field
from pipeline.core.media import has_audio_stream, read_video
from pipeline.core.store import open_store, read_clip, read_index
from pipeline.core.timings import read_timings
from tests.conftest import tiny_section
from tests.generate_fixtures import write_tiny_emmn, write_tiny_fomm, write_tiny_wav2lip
from tests.lipsync_fixtures import tiny_audio  # noqa: F401

ALL_ROWS = ("ground_truth", "static", "wav2lip_only", "emmn", "baseline", "mmn")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    num_kp = tiny_section("train_fomm").num_kp
    write_tiny_fomm(folder / "emmn_render.pt")
    write_tiny_emmn(folder / "emmn.pt", num_kp)
    write_tiny_emmn(folder / "emmn_mmn.pt", num_kp, variant="mmn")
    write_tiny_wav2lip(folder / "wav2lip.pt")
    return folder


@pytest.fixture(scope="module")
def outputs(tiny_audio, models, tmp_path_factory):
    from pipeline.render.generate_set import build_outputs

    corpus, audio = tiny_audio
    out = tmp_path_factory.mktemp("gen")
    p = with_field(tiny_section("generate"), rows=ALL_ROWS,
                   variant_models={"baseline": str(models / "emmn_baseline.pt"), "mmn": str(models / "emmn_mmn.pt")})
    summary = build_outputs(corpus, audio, models, out / "outputs", out / "generate.json", out / "sheet.png",
                            tiny_section("base"), p, told_sheet=out / "told.png")
    return corpus, out, summary


def test_every_row_has_every_heldout_clip_at_its_corpus_length(outputs):
    corpus, out, summary = outputs
    manifest = pd.read_parquet(corpus / "manifest.parquet")
    heldout = manifest[(manifest.split == "test") & (manifest.kind == "real")].sort_values("clip_id")
    rows = ["ground_truth", "static", "wav2lip_only", "emmn", "mmn"]
    assert summary["rows"] == rows and list(summary["skipped_rows"]) == ["baseline"]  # no emmn_baseline.pt
    store = out / "outputs" / "frames.zarr"
    index = read_index(store)
    assert list(index.clip_id) == [f"{r}/{c}" for r in rows for c in heldout.clip_id]
    assert (index.stop - index.start).tolist() == [int(f) for _ in rows for f in heldout.frames]
    frames = open_store(store)["frames"]
    assert frames.dtype == np.uint8 and frames.shape[1:] == (64, 64, 3)

    clip = heldout.iloc[0]
    corpus_frames = open_store(corpus / "frames.zarr")["frames"][int(clip.start):int(clip.stop)]
    np.testing.assert_array_equal(read_clip(store, f"ground_truth/{clip.clip_id}")["frames"], corpus_frames)
    static = read_clip(store, f"static/{clip.clip_id}")["frames"]
    assert (static == static[:1]).all()
    emmn = read_clip(store, f"emmn/{clip.clip_id}")["frames"]
    assert emmn.shape == corpus_frames.shape and emmn.std() > 0


def test_each_clip_has_a_playable_mp4_with_sound(outputs):
    corpus, out, summary = outputs
    index = read_index(out / "outputs" / "frames.zarr")
    clip_ids = [c.split("/", 1)[1] for c in index.clip_id if c.startswith("emmn/")]
    for row in summary["rows"]:
        mp4 = out / "outputs" / row / f"{clip_ids[0]}.mp4"
        video, fps = read_video(mp4)
        assert len(video) == read_clip(out / "outputs" / "frames.zarr", f"{row}/{clip_ids[0]}")["frames"].shape[0]
        assert has_audio_stream(mp4) and fps == 25.0
    assert len(list((out / "outputs" / "emmn").glob("*.mp4"))) == len(clip_ids)


def test_report_and_emotions_sheet(outputs):
    corpus, out, summary = outputs
    report = json.loads((out / "generate.json").read_text())
    assert report["rows"] == summary["rows"] and report["precision"] in ("fp32", "bf16")
    assert "ms_per_frame" not in report and "seconds" not in report  # wall-clock figures live beside it, untracked
    assert set(read_timings(out / "generate.json")["ms_per_frame"]) == set(summary["rows"])
    sheet = report["sheet"]
    assert sheet["emotions"] == ["neutral", "happy", "sad", "surprised"]  # every tiny-corpus emotion, corpus order
    import cv2

    image = cv2.imread(str(out / "sheet.png"))
    columns = 1 + 1 + tiny_section("generate").sheet_frames + 1  # label, reference, frames, real
    assert image.shape == (16 + 64 * len(sheet["emotions"]), 64 * columns, 3)  # a title strip, a row per emotion

    told = report["told_sheet"]  # one neutral speech clip of the sheet's actor and sentence, each emotion told
    assert told["emotions"] == sheet["emotions"] and told["actor"] == sheet["actor"]
    assert told["speech"].startswith(f"{sheet['actor']}_") and "neutral" in told["speech"]
    told_image = cv2.imread(str(out / "told.png"))
    assert told_image.shape == image.shape
    generated = [told_image[16 + 64 * r:16 + 64 * (r + 1), 128:64 * (columns - 1)]
                 for r in range(len(told["emotions"]))]
    assert not all(np.array_equal(generated[0], g) for g in generated[1:])  # the told emotion changes the frames


def test_stage_cli_refuses_a_missing_emmn_checkpoint(tiny_audio, models, tmp_path):
    import shutil

    import yaml

    from stages.cli import app
    from tests.conftest import tiny_params_dict

    corpus, audio = tiny_audio
    params = tmp_path / "params.yaml"
    data = tiny_params_dict()
    # no variant rows: their default checkpoints are data/models/*, which a fresh clone lacks and a workspace has
    data["generate"]["rows"] = ["ground_truth", "static", "wav2lip_only", "emmn"]
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    partial = tmp_path / "models"
    partial.mkdir()
    for name in ("wav2lip.pt", "emmn_render.pt"):  # everything but emmn.pt
        shutil.copy(models / name, partial / name)
    result = CliRunner().invoke(app, ["generate", "--params", str(params), "--corpus", str(corpus),
                                      "--audio-features", str(audio), "--models-dir", str(partial),
                                      "--out", str(tmp_path / "outputs"), "--report", str(tmp_path / "r.json"),
                                      "--sheet", str(tmp_path / "s.png")])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: {partial / 'emmn.pt'}: checkpoint for row emmn not found (run " \
                                    "train_memory first)"
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "r.json").exists()


def test_heldout_selection_keeps_every_emotion_of_the_sheet():
    """max_clips spreads clips evenly but always keeps the sheet's actor x first sentence x every emotion."""
    import pandas as pd

    from pipeline.render.generate_set import heldout_clips

    emotions, rows = ["neutral", "angry", "happy", "sad"], []
    for actor in ("W1", "W2", "W3"):
        for sentence in (30, 31):
            for emotion in emotions:
                for level in ((1,) if emotion == "neutral" else (1, 3)):
                    rows.append({"clip_id": f"{actor}_{emotion}_l{level}_{sentence}", "actor": actor,
                                 "emotion": emotion, "level": level, "sentence_id": sentence,
                                 "split": "test", "kind": "real"})
    manifest = pd.DataFrame(rows + [{**rows[0], "clip_id": "T_train", "split": "train"}])
    picked = heldout_clips(manifest, 10, keep_sheet=True, sheet_actor="W2")
    assert len(picked) == 10 and list(picked.clip_id) == sorted(picked.clip_id) and "T_train" not in set(picked.clip_id)
    sheet = picked[(picked.actor == "W2") & (picked.sentence_id == 30)]
    assert {(e, 3 if e != "neutral" else 1) for e in emotions} <= set(zip(sheet.emotion, sheet.level))
    assert picked.actor.nunique() == 3  # the rest still spreads over the other actors
    assert len(heldout_clips(manifest, 0)) == len(rows)
    even = heldout_clips(manifest, 5)  # table2's use: an even spread, no sheet
    assert len(even) == 5 and even.actor.nunique() == 3
    assert len(heldout_clips(manifest, 3, keep_sheet=True, sheet_actor="W2")) == 3  # never more than asked
