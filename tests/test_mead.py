"""MEAD ingest on a small fake MEAD tree shaped like the real set: 1920x1080 30 fps H.264 with a ~124-px face,
48 kHz stereo AAC, a `left_30` view beside `front`, a cut-off mp4, a clip without a face, gaps on both sides."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import zarr
from typer.testing import CliRunner

from pipeline.core.media import ffmpeg_exe
from pipeline.corpus.face import render_frame, sample_identity
from stages.cli import app
from tests.conftest import tiny_params_dict

N_SRC_FRAMES, SRC_FPS = 40, 30.0
WIDTH, HEIGHT = 1920, 1080
FACE_SQUARE = 176  # px: the rendered face itself spans ~70% of its square (~124 px, as in MEAD's front view)


def _encode(path: Path, frames, width: int = WIDTH, height: int = HEIGHT) -> None:
    """Frames piped one at a time into H.264 (ultrafast: the fixture is about shapes, not quality)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
                             "-s", f"{width}x{height}", "-r", f"{SRC_FPS}", "-i", "-", "-c:v", "libx264",
                             "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(path)],
                            stdin=subprocess.PIPE)
    for frame in frames:
        proc.stdin.write(frame.tobytes())
    proc.stdin.close()
    assert proc.wait() == 0


def _face_frames(seed: int):
    """A small face off centre in a 1080p frame, moving a little, as MEAD's front camera sees it."""
    ident = sample_identity(np.random.default_rng(seed))
    canvas = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
    for i in range(N_SRC_FRAMES):
        face = render_frame(ident, {"jaw_open": 0.4 * (i % 10) / 10, "yaw": 3 * np.sin(i / 6)},
                            size=FACE_SQUARE).image
        frame = canvas.copy()
        frame[420:420 + FACE_SQUARE, 880 + i % 3:880 + i % 3 + FACE_SQUARE] = face
        yield frame


def _aac(path: Path, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"sine=frequency=220:sample_rate=48000:duration={seconds}", "-ac", "2", "-c:a", "aac", str(path)],
                   check=True)


def _clip(root: Path, actor: str, emotion: str, level: int, number: int, view: str = "front") -> tuple[Path, Path]:
    name = f"{emotion}/level_{level}/{number:03d}"
    return root / actor / "video" / view / f"{name}.mp4", root / actor / "audio" / f"{name}.m4a"


@pytest.fixture(scope="module")
def mead_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mead") / "MEAD"
    seconds = N_SRC_FRAMES / SRC_FPS
    for (emotion, level, number), seed in ((("neutral", 1, 1), 0), (("happy", 3, 1), 1)):
        video, audio = _clip(root, "M030", emotion, level, number)
        _encode(video, _face_frames(seed))
        _aac(audio, seconds)
    good_video, good_audio = _clip(root, "M030", "happy", 3, 1)
    # the other camera views hold the same clips; only `front` is read
    left = _clip(root, "M030", "neutral", 1, 1, view="left_30")[0]
    left.parent.mkdir(parents=True)
    os.link(_clip(root, "M030", "neutral", 1, 1)[0], left)
    # a download cut off halfway: the header (moved to the front) still lists all 40 frames
    cut, cut_audio = _clip(root, "M030", "happy", 3, 2)
    cut.write_bytes(good_video.read_bytes()[: good_video.stat().st_size // 2])
    shutil.copy(good_audio, cut_audio)
    # a clip with nobody in it
    empty, empty_audio = _clip(root, "M030", "happy", 3, 3)
    _encode(empty, (np.full((240, 320, 3), 90, np.uint8) for _ in range(10)), 320, 240)
    shutil.copy(good_audio, empty_audio)
    # outside corpus.levels ([3] in the tiny profile) and corpus.emotions: never read (not even valid files)
    for emotion, level in (("happy", 1), ("angry", 3)):
        video, audio = _clip(root, "M030", emotion, level, 1)
        for path in (video, audio):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"never read")
    # gaps: a video without audio, an audio without video, an actor without the front view
    video = _clip(root, "M030", "neutral", 1, 2)[0]
    os.link(_clip(root, "M030", "neutral", 1, 1)[0], video)
    shutil.copy(good_audio, _clip(root, "M030", "neutral", 1, 3)[1])
    _aac(_clip(root, "W011", "neutral", 1, 1)[1], 1.0)
    return root


def _params(tmp_path: Path, mead_root: Path) -> Path:
    import yaml

    params = tiny_params_dict()
    params["corpus"].update({"source": "mead", "mead_root": str(mead_root), "size": 64,
                             "emotions": ["neutral", "happy", "sad"], "mead_test_actors": ["M030"]})
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
    assert sorted(m.clip_id) == ["M030_happy_l3_001", "M030_neutral_l1_001"]  # level 1 of happy, angry: not asked
    expected = round(N_SRC_FRAMES / SRC_FPS * 25)  # 30 -> 25 fps keeps the duration
    assert (m.frames == expected).all() and (m.split == "test").all()
    root = zarr.open_group(out / "frames.zarr", mode="r")
    assert root["frames"].shape == (2 * expected, 64, 64, 3)
    assert np.isnan(root["landmarks"][:]).all()
    # one crop box per clip, on the small face: the face (skin, not the grey canvas) fills the crop's centre
    centre = root["frames"][expected // 2][24:40, 24:40].astype(float)
    assert np.abs(centre - 90).mean() > 10
    for row in m.itertuples():
        assert 880 < row.crop_x + row.crop_side / 2 < 880 + FACE_SQUARE and 150 < row.crop_side < 400
        audio, sr = sf.read(out / row.wav_path)
        assert sr == 16000 and audio.ndim == 1 and len(audio) == row.frames * 640
    missing = pd.read_parquet(out / "missing.parquet")
    print(missing.to_string())

    def reason(emotion: str, clip: int, kind: str) -> str:
        rows = missing[(missing.actor == "M030") & (missing.emotion == emotion) & (missing["clip"] == clip)
                       & (missing["missing"] == kind)]
        assert len(rows) == 1, (emotion, clip, kind)
        return rows.reason.iloc[0]

    assert "truncated" in reason("happy", 2, "unusable") and "002.mp4" in reason("happy", 2, "unusable")
    assert "no face found" in reason("happy", 3, "unusable")
    assert "no matching audio" in reason("neutral", 2, "audio")
    assert "no matching video" in reason("neutral", 3, "video")
    assert (missing[missing.actor == "W011"]["missing"] == "front video view").any()
    assert (missing[missing.actor == "M030"]["emotion"] == "sad").any()  # asked for, not there
    assert not (missing.emotion == "angry").any() and not ((missing.emotion == "happy") & (missing.level == 1)).any()
    assert (out / "reference" / "M030.png").is_file()
    assert "skipped" in result.stderr and "no face found" in result.stderr


def test_not_a_mead_tree_exits_2(tmp_path):
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "notes.txt").write_text("hello")
    result, out = _run(tmp_path, tmp_path / "random")
    assert result.exit_code == 2 and "not a MEAD tree" in result.output
    assert not out.exists()


def test_a_tree_without_any_usable_clip_exits_2_without_partial_store(mead_tree, tmp_path):
    root = tmp_path / "MEAD"
    shutil.copytree(mead_tree, root)
    for emotion, level in (("neutral", 1), ("happy", 3)):  # the two good clips: random bytes, then silence
        video, audio = _clip(root, "M030", emotion, level, 1)
        if emotion == "neutral":
            video.write_bytes(np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes())
        else:
            audio.write_bytes(b"")
    result, out = _run(tmp_path, root)
    assert result.exit_code == 2, result.output
    assert "no usable MEAD clip: all 4 skipped" in result.output and "001.mp4: unreadable video" in result.output
    assert not out.exists() and not list(tmp_path.glob(".corpus.tmp*"))


def test_silent_audio_skips_its_clip_only(mead_tree, tmp_path):
    root = tmp_path / "MEAD"
    shutil.copytree(mead_tree, root)
    audio = _clip(root, "M030", "happy", 3, 1)[1]
    audio.write_bytes(b"")
    result, out = _run(tmp_path, root)
    assert result.exit_code == 0, result.output
    assert list(pd.read_parquet(out / "manifest.parquet").clip_id) == ["M030_neutral_l1_001"]
    missing = pd.read_parquet(out / "missing.parquet")
    assert (missing.reason == f"{audio}: audio file is empty (0 bytes)").any()


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
