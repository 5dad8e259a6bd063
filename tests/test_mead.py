"""MEAD ingest on a small fake MEAD tree (30 fps H.264 video, AAC audio, one missing clip) and its errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import zarr
from typer.testing import CliRunner

from pipeline.corpus.face import render_frame, sample_identity
from pipeline.media import ffmpeg_exe, write_mp4
from stages.cli import app
from tests.conftest import tiny_params_dict

N_SRC_FRAMES, SRC_FPS = 40, 30.0


def _face_video(path: Path, seed: int) -> None:
    """A face in the middle of a wider 30 fps frame, moving a little, as a camera would see it."""
    ident = sample_identity(np.random.default_rng(seed))
    frames = []
    for i in range(N_SRC_FRAMES):
        face = render_frame(ident, {"jaw_open": 0.4 * (i % 10) / 10, "yaw": 3 * np.sin(i / 6)}, size=160).image
        canvas = np.full((240, 320, 3), 90, np.uint8)
        canvas[40:200, 80 + i % 3:240 + i % 3] = face
        frames.append(canvas)
    write_mp4(path, np.stack(frames), SRC_FPS)


def _aac(path: Path, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"sine=frequency=220:sample_rate=48000:duration={seconds}", "-ac", "2", "-c:a", "aac", str(path)],
                   check=True)


@pytest.fixture(scope="module")
def mead_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mead") / "MEAD"
    for emotion, level, number in (("neutral", 1, 1), ("happy", 3, 1)):
        video = root / "M030" / "video" / "front" / emotion / f"level_{level}" / f"{number:03d}.mp4"
        _face_video(video, seed=number + level)
        _aac(root / "M030" / "audio" / emotion / f"level_{level}" / f"{number:03d}.m4a", N_SRC_FRAMES / SRC_FPS)
    # a clip whose audio is missing, and an actor without the front view
    _face_video(root / "M030" / "video" / "front" / "neutral" / "level_1" / "002.mp4", seed=7)
    _aac(root / "W011" / "audio" / "neutral" / "level_1" / "001.m4a", 1.0)
    return root


def _params(tmp_path: Path, mead_root: Path) -> Path:
    import yaml

    params = tiny_params_dict()
    params["corpus"].update({"source": "mead", "mead_root": str(mead_root), "size": 64,
                             "emotions": ["neutral", "happy"], "mead_test_actors": ["M030"]})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _run(tmp_path: Path, mead_root: Path):
    out = tmp_path / "corpus"
    result = CliRunner().invoke(app, ["corpus", "--params", str(_params(tmp_path, mead_root)), "--out", str(out),
                                      "--sheet", str(tmp_path / "sheet.png"), "--report", str(tmp_path / "c.json")])
    return result, out


def test_mead_ingest(mead_tree, tmp_path):
    result, out = _run(tmp_path, mead_tree)
    assert result.exit_code == 0, result.output
    m = pd.read_parquet(out / "manifest.parquet")
    assert sorted(m.clip_id) == ["M030_happy_l3_001", "M030_neutral_l1_001"]
    expected = round(N_SRC_FRAMES / SRC_FPS * 25)  # 30 -> 25 fps keeps the duration
    assert (m.frames == expected).all() and (m.split == "test").all()
    root = zarr.open_group(out / "frames.zarr", mode="r")
    assert root["frames"].shape == (2 * expected, 64, 64, 3)
    assert np.isnan(root["landmarks"][:]).all()
    # one crop box per clip: the face (skin, not the grey canvas) fills the crop's centre
    centre = root["frames"][expected // 2][24:40, 24:40].astype(float)
    assert np.abs(centre - 90).mean() > 10
    for row in m.itertuples():
        audio, sr = sf.read(out / row.wav_path)
        assert sr == 16000 and audio.ndim == 1 and len(audio) == row.frames * 640
    missing = pd.read_parquet(out / "missing.parquet")
    assert {"M030", "W011"} <= set(missing.actor)
    assert ((missing.actor == "M030") & (missing["clip"] == 2) & (missing["missing"] == "audio")).any()
    assert (missing[missing.actor == "W011"]["missing"] == "front video view").any()
    assert (out / "reference" / "M030.png").is_file()


def test_not_a_mead_tree_exits_2(tmp_path):
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "notes.txt").write_text("hello")
    result, out = _run(tmp_path, tmp_path / "random")
    assert result.exit_code == 2 and "not a MEAD tree" in result.output
    assert not out.exists()


def test_unreadable_video_exits_2_without_partial_store(mead_tree, tmp_path):
    import shutil

    root = tmp_path / "MEAD"
    shutil.copytree(mead_tree, root)
    bad = root / "M030" / "video" / "front" / "happy" / "level_3" / "001.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes())
    result, out = _run(tmp_path, root)
    assert result.exit_code == 2, result.output
    assert "001.mp4" in result.output and "unreadable video" in result.output
    assert not out.exists() and not list(tmp_path.glob(".corpus.tmp*"))


def test_audio_without_samples_exits_2(mead_tree, tmp_path):
    import shutil

    root = tmp_path / "MEAD"
    shutil.copytree(mead_tree, root)
    (root / "M030" / "audio" / "happy" / "level_3" / "001.m4a").write_bytes(b"")
    result, out = _run(tmp_path, root)
    assert result.exit_code == 2, result.output
    assert "001.m4a" in result.output
    assert not out.exists()


def test_mead_without_a_root_names_the_params_file_given(tmp_path):
    import yaml

    params = tiny_params_dict()
    params["corpus"].update({"source": "mead", "mead_root": None})
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, ["corpus", "--params", str(path), "--out", str(tmp_path / "corpus"),
                                      "--sheet", str(tmp_path / "s.png"), "--report", str(tmp_path / "c.json")])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: {path}: corpus.source is 'mead' but corpus.mead_root is not set"
