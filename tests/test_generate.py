"""Inference: `emmn generate` on a photo end to end, its bad-input errors, and the pieces it is built from."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile
import torch
from sklearn.datasets import load_sample_image
from typer.testing import CliRunner

from pipeline.audio.features import frame_mfcc_windows
from pipeline.audio.stream import (
    mel_windows,
    mfcc_window_blocks,
    mfcc_windows,
    signal_mel,
    video_frame_count,
)
from pipeline.core.errors import InputError
from pipeline.core.media import has_audio_stream, read_video, write_wav
from pipeline.core.mp4_stream import Mp4StreamWriter
from pipeline.render.filters import OneEuroFilter
from pipeline.render.frames import (
    FilterSettings,
    KeypointSmoother,
    render_frames,
    to_uint8_frames,
)
from pipeline.render.photo import FacePaster, feather_mask
from stages.cli import app
from tests.conftest import tiny_params_dict, tiny_section
from tests.generate_fixtures import photo_with_face, speech_like, tiny_models, write_png  # noqa: F401
from tests.lipsync_fixtures import tiny_audio  # noqa: F401

runner = CliRunner()
SR = 16000


# ------------------------------------------------------------------------------------------ audio windows


@pytest.mark.parametrize("length", [3200, 37123])
def test_block_mfcc_windows_equal_the_whole_signal_features(length):
    """What audio_features computes for the whole clip, block by block, bit for bit (incl. the repeated tail)."""
    samples = (np.random.default_rng(length).standard_normal(length) * 0.1).astype(np.float32)
    n = video_frame_count(length, SR, 25.0) + 2  # two frames past the last window: the tail repeats
    whole = frame_mfcc_windows(samples, n)
    for block in (1, 7, 1000):
        np.testing.assert_array_equal(np.concatenate([b for _, b in mfcc_window_blocks(samples, n, block)]), whole)
    np.testing.assert_array_equal(mfcc_windows(samples, n, 3, n), whole[3:])


def test_wav_features_match_the_audio_store(tiny_audio):
    """The generate path reads a wav and computes exactly the MFCC rows the models were trained on."""
    import pandas as pd

    from pipeline.core.media import load_audio
    from pipeline.core.store import read_clip

    corpus, store = tiny_audio
    clip = pd.read_parquet(corpus / "manifest.parquet").query("kind == 'real'").iloc[0]
    samples = load_audio(corpus / clip.wav_path, SR)
    assert video_frame_count(len(samples), SR, 25.0) == clip.frames
    stored = read_clip(store, clip.clip_id, ("mfcc", "mel"))
    np.testing.assert_array_equal(mfcc_windows(samples, int(clip.frames), 0, int(clip.frames)), stored["mfcc"])
    mel = signal_mel(samples)  # the default pad mode, as the stage ran
    np.testing.assert_array_equal(mel_windows(mel, 0, int(clip.frames), 25.0), stored["mel"])
    np.testing.assert_array_equal(mel_windows(mel, 5, 9, 25.0), stored["mel"][5:9])


# ------------------------------------------------------------------------------------------ rendering


def test_relative_transfer_from_the_reference_is_the_absolute_prediction():
    """Why rendering drives with p^ as is: FOMM's relative motion with p_neu as the initial frame changes nothing."""
    from pipeline.models.motion_transfer import relative_motion

    g = torch.Generator().manual_seed(0)

    def keypoints(n: int) -> dict[str, torch.Tensor]:
        return {"value": torch.rand(n, 5, 2, generator=g),
                "jacobian": torch.eye(2) + 0.2 * torch.rand(n, 5, 2, 2, generator=g)}

    neu, pred = keypoints(1), keypoints(3)
    moved = relative_motion(neu, pred, {k: v.expand_as(pred[k]) for k, v in neu.items()})
    assert torch.allclose(moved["value"], pred["value"], atol=1e-6)
    assert torch.allclose(moved["jacobian"], pred["jacobian"], atol=1e-5)


def test_cached_source_features_render_exactly_what_the_generator_does():
    from pipeline.fomm.train import fomm_config, init_fomm

    kp_detector, generator = init_fomm(fomm_config(tiny_section("train_fomm")), 0)
    generator.eval()
    source = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        kp = kp_detector(source)
        driving = {k: v + 0.05 * torch.randn(3, *v.shape[1:]) for k, v in kp.items()}
        kp_src = {k: v.expand(3, *v.shape[1:]) for k, v in kp.items()}
        full = generator(source.expand(3, -1, -1, -1), kp_driving=driving, kp_source=kp_src)["prediction"]
        cached = generator.decode(source.expand(3, -1, -1, -1), generator.encode(source).expand(3, -1, -1, -1),
                                  driving, kp_src)["prediction"]
    assert torch.allclose(full, cached, atol=1e-6)
    # bf16 autocast (generate.bf16): the same frames up to bfloat16 rounding, uint8 out, batch split irrelevant
    kp_neu = {k: v.numpy() for k, v in kp.items()}
    value, jacobian = driving["value"].numpy(), driving["jacobian"].numpy()
    fp32 = render_frames(generator, source, kp_neu, value, jacobian, batch_size=2)
    bf16 = render_frames(generator, source, kp_neu, value, jacobian, batch_size=3, bf16=True)
    assert fp32.dtype == bf16.dtype == np.uint8 and fp32.shape == bf16.shape == (3, 64, 64, 3)
    np.testing.assert_array_equal(fp32, to_uint8_frames(full))
    mse = ((fp32.astype(float) - bf16.astype(float)) ** 2).mean()
    assert 0 < mse and 10 * math.log10(255 ** 2 / mse) > 35  # it did run in bf16, and it hardly shows


def test_keypoint_smoother_carries_its_state_across_blocks():
    rng = np.random.default_rng(0)
    value, jacobian = rng.normal(size=(30, 5, 2)), rng.normal(size=(30, 5, 2, 2))
    settings = FilterSettings(True, 1.0, 0.5, 1.0)
    whole = KeypointSmoother(25.0, settings)(value, jacobian)
    smoother = KeypointSmoother(25.0, settings)
    parts = [smoother(value[a:b], jacobian[a:b]) for a, b in ((0, 7), (7, 20), (20, 30))]
    np.testing.assert_allclose(np.concatenate([p[0] for p in parts]), whole[0])
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), whole[1])
    np.testing.assert_allclose(whole[0], OneEuroFilter(25.0, 1.0, 0.5, 1.0)(value))
    assert KeypointSmoother(25.0, FilterSettings(enabled=False))(value, jacobian)[0] is value


# ------------------------------------------------------------------------------------------ photo crop / paste


def test_feather_mask_by_hand():
    """side 4, band 2 px: distances to the edge 0.5, 1.5, 1.5, 0.5 -> 0.5 - 0.5 cos(pi d / 2)."""
    lo, hi = 0.5 - 0.5 * math.cos(math.pi / 4), 0.5 - 0.5 * math.cos(3 * math.pi / 4)  # 0.1464, 0.8536
    ramp = np.array([lo, hi, hi, lo])
    np.testing.assert_allclose(feather_mask(4, 0.5), np.outer(ramp, ramp), atol=1e-6)
    assert feather_mask(40, 0.1)[4:36, 4:36].min() == 1.0  # inside the band: the generated face only


def test_paste_keeps_the_photo_outside_the_box_even_when_the_box_leaves_it():
    photo = np.full((50, 60, 3), 10, np.uint8)
    crops = np.full((2, 16, 16, 3), 250, np.uint8)
    for box in ((20, 10, 24), (-8, 30, 32)):  # inside; off the left and bottom edges
        out = FacePaster(photo, box, 0.1).paste(crops)
        x0, y0, side = box
        inside = np.zeros((50, 60), bool)
        inside[max(y0, 0):y0 + side, max(x0, 0):x0 + side] = True
        assert out.shape == (2, 50, 60, 3)
        assert (out[:, ~inside] == 10).all()
        cy, cx = min(y0 + side // 2, 49), max(x0 + side // 2, 0)
        assert (out[:, cy, cx] == 250).all()  # the box centre is the generated face


# ------------------------------------------------------------------------------------------ mp4 writer


def test_mp4_stream_writer_writes_blocks_with_sound_and_leaves_nothing_on_error(tmp_path):
    wav = tmp_path / "a.wav"
    write_wav(wav, speech_like(1.0, SR), SR)
    out = tmp_path / "v.mp4"
    frames = np.random.default_rng(0).integers(0, 255, (25, 33, 45, 3), dtype=np.uint8)  # odd sides
    with Mp4StreamWriter(out, 45, 33, 25.0, audio=wav) as writer:
        for start in range(0, 25, 10):
            writer.write(frames[start:start + 10])
    video, fps = read_video(out)
    assert video.shape[0] == 25 and fps == 25.0 and has_audio_stream(out)

    broken = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError), Mp4StreamWriter(broken, 45, 33, 25.0, audio=wav) as writer:
        writer.write(frames[:5])
        raise RuntimeError("generation failed half way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "v.mp4"]


# ------------------------------------------------------------------------------------------ emmn generate


@pytest.fixture(scope="module")
def inputs(tiny_corpus, tmp_path_factory):
    """A photo-like image (a corpus reference face on a textured background) and speech-like audio files."""
    import zarr

    folder = tmp_path_factory.mktemp("inputs")
    face = zarr.open_group(tiny_corpus / "frames.zarr", mode="r")["reference_frames"][0]
    files = {"photo": write_png(folder / "photo.png", photo_with_face(face)),
             "no_face": write_png(folder / "wall.png", photo_with_face(np.full_like(face, 128))),
             "not_a_face": write_png(folder / "flower.png", load_sample_image("flower.jpg"))}
    speech = speech_like(1.3, SR)
    write_wav(folder / "speech.wav", speech, SR)
    write_wav(folder / "long.wav", speech_like(3.52, SR), SR)  # cut after 1.04 s of data: the header still says 3.52
    (folder / "truncated.wav").write_bytes((folder / "long.wav").read_bytes()[:44 + int(1.04 * SR) * 2])
    stereo = np.stack([speech_like(1.3, 44100, 1), speech_like(1.3, 44100, 2)], axis=1)
    soundfile.write(folder / "stereo44k.wav", stereo, 44100)  # 2 channels, 44.1 kHz
    write_wav(folder / "silent.wav", np.zeros(SR), SR)
    write_wav(folder / "short.wav", speech[: int(0.15 * SR)], SR)
    files.update({name: folder / f"{name}.wav" for name in ("speech", "stereo44k", "silent", "short", "truncated")})
    return files


@pytest.fixture(scope="module")
def params_file(tmp_path_factory):
    import yaml

    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params_dict(), sort_keys=False))
    return path


def _generate(params_file, models, image, audio, out, *extra: str):
    return runner.invoke(app, ["generate", "--params", str(params_file), "--models-dir", str(models),
                               "--image", str(image), "--audio", str(audio), "--out", str(out), *extra])


@pytest.mark.parametrize("audio", ["speech", "stereo44k"])
def test_generate_on_a_photo_writes_an_mp4_with_sound(params_file, tiny_models, inputs, tmp_path, audio):
    out = tmp_path / "out.mp4"
    result = _generate(params_file, tiny_models, inputs["photo"], inputs[audio], out)
    assert result.exit_code == 0, result.output
    video, fps = read_video(out)
    assert video.shape == (round(1.3 * 25), 240, 320, 3) and fps == 25.0
    assert has_audio_stream(out)
    import cv2

    photo = cv2.imread(str(inputs["photo"]))[..., ::-1].astype(int)
    # left of the face the photo is untouched (up to H.264), while the face region changes over time
    assert np.abs(video[:, :, :60] - photo[None, :, :60]).mean() < 4
    assert np.abs(video[:, 60:180, 90:210].astype(int) - photo[None, 60:180, 90:210]).mean() > 4


def test_emotion_override_steers_the_keypoints_and_names_are_case_insensitive(params_file, tiny_models, inputs,
                                                                               tmp_path):
    from pipeline.fomm.io import frames_to_tensor
    from pipeline.render.generate import (
        load_animator,
        predict_keypoints,
        reference_keypoints,
        renderer_path,
    )

    animator = load_animator(tiny_models / "emmn.pt", renderer_path(tiny_models), torch.device("cpu"))
    crop = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    kp_neu = reference_keypoints(animator, crop)
    mfcc = mfcc_windows(speech_like(1.0, SR), 25, 0, 25)
    value = {e: predict_keypoints(animator.emmn, frames_to_tensor(crop[None], 64), mfcc, kp_neu, e, 1.0)[0]
             for e in (None, "happy", "sad")}
    assert np.abs(value["happy"] - value["sad"]).max() > 1e-4  # the memory query changed with the emotion
    assert np.abs(value[None] - value["happy"]).max() > 1e-4
    result = _generate(params_file, tiny_models, inputs["photo"], inputs["speech"], tmp_path / "o.mp4",
                       "--emotion", "HAPPY", "--intensity", "0.5")
    assert result.exit_code == 0, result.output
    assert '"emotion": "happy"' in result.output


@pytest.mark.parametrize("case, expected", [
    ("no_face", "no face found"),
    ("not_a_face", "no face found"),  # a real photo of a flower: the old relaxed pass animated a petal
    ("silent", "audio is silent"),
    ("truncated", "truncated WAV: its header says 3.52 s of audio, the file holds 1.04 s"),
    ("short", "audio too short"),
    ("emotion", "unknown --emotion 'joyful'; valid: neutral, happy, sad, surprised"),
    ("intensity", "intensity must be in [0, 2]"),
    ("unreadable", "not a readable image"),
])
def test_bad_input_is_one_line_exit_2_and_no_mp4(params_file, tiny_models, inputs, tmp_path, case, expected):
    image, audio, extra = inputs["photo"], inputs["speech"], []
    if case in ("no_face", "not_a_face"):
        image = inputs[case]
    elif case in ("silent", "short", "truncated"):
        audio = inputs[case]
    elif case == "emotion":
        extra = ["--emotion", "joyful"]
    elif case == "intensity":
        extra = ["--emotion", "happy", "--intensity", "3"]
    else:
        image = tmp_path / "notes.png"
        image.write_text("not an image")
    out_dir = tmp_path / "out"
    result = _generate(params_file, tiny_models, image, audio, out_dir / "out.mp4", *extra)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.output
    if case in ("no_face", "not_a_face", "unreadable"):
        assert str(image) in lines[0]
    if case in ("silent", "short", "truncated"):
        assert str(audio) in lines[0]
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_out_naming_a_folder_is_refused_before_any_work(params_file, tiny_models, inputs, tmp_path):
    folder = tmp_path / "existing.mp4"
    folder.mkdir()
    result = _generate(params_file, tiny_models, inputs["photo"], inputs["speech"], folder)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: {folder}: is an existing folder; --out must name an .mp4 file"], result.output
    assert not any(folder.iterdir())
    # before the models are read: with no models at all, the folder is still what is named
    result = _generate(params_file, tmp_path / "no_models", inputs["photo"], inputs["speech"], folder)
    assert result.exit_code == 2 and "is an existing folder" in result.output, result.output


def test_cut_off_audio_files_are_refused(tmp_path):
    """A WAV whose data ends before its header says, and an m4a cut in half (its frames end mid-stream)."""
    import subprocess

    from pipeline.core.media import ffmpeg_exe, load_audio

    write_wav(tmp_path / "long.wav", speech_like(2.0, SR), SR)
    full = (tmp_path / "long.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(full[: len(full) // 2])
    with pytest.raises(InputError, match=r"truncated WAV: its header says 2.00 s of audio, the file holds 1.00 s"):
        load_audio(tmp_path / "cut.wav")
    assert len(load_audio(tmp_path / "long.wav")) == 2 * SR  # a whole file passes
    subprocess.run([ffmpeg_exe(), "-y", "-v", "error", "-i", str(tmp_path / "long.wav"), "-c:a", "aac", "-movflags",
                    "+faststart", str(tmp_path / "speech.m4a")], check=True)
    data = (tmp_path / "speech.m4a").read_bytes()
    (tmp_path / "cut.m4a").write_bytes(data[: len(data) // 2])
    assert abs(len(load_audio(tmp_path / "speech.m4a")) - 2 * SR) < 0.05 * SR
    with pytest.raises(InputError, match="audio stream is truncated or damaged"):
        load_audio(tmp_path / "cut.m4a")


def test_voice_recordings_set_the_baseline_the_emotion_is_heard_against(params_file, tiny_models, inputs, tmp_path):
    import shutil

    from pipeline.audio.prosody import frame_prosody, measure_voice
    from pipeline.fomm.io import frames_to_tensor
    from pipeline.render.generate import (
        load_animator,
        predict_keypoints,
        reference_keypoints,
    )
    from tests.generate_fixtures import write_tiny_emmn

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tiny_models / "fomm.pt", models / "fomm.pt")
    write_tiny_emmn(models / "emmn.pt", num_kp=tiny_section("train_fomm").num_kp, prosody=True)
    animator = load_animator(models / "emmn.pt", models / "fomm.pt", torch.device("cpu"))
    assert animator.emmn.needs_prosody
    crop = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    kp_neu = reference_keypoints(animator, crop)
    samples = speech_like(1.0, SR)
    mfcc, prosody = mfcc_windows(samples, 25, 0, 25), frame_prosody(samples, 25, 25.0, SR)
    voice = measure_voice([inputs["speech"]], 25.0, SR)
    np.testing.assert_allclose(voice[0], 12 * np.log2(140.0), atol=0.3)  # speech_like's 140 Hz source
    value = {name: predict_keypoints(animator.emmn, frames_to_tensor(crop[None], 64), mfcc, kp_neu, None, 1.0,
                                     None, prosody, v)[0]
             for name, v in (("default", None), ("own", voice), ("higher voice", voice + [7.0, 0.0]))}
    assert np.abs(value["own"] - value["higher voice"]).max() > 1e-5  # the same speech, heard lower than the voice
    assert np.abs(value["own"] - value["default"]).max() > 1e-5
    out = tmp_path / "o.mp4"
    result = _generate(params_file, models, inputs["photo"], inputs["speech"], out, "--voice", str(inputs["speech"]),
                       "--voice", str(inputs["stereo44k"]))
    assert result.exit_code == 0, result.output
    assert '"voice": [' in result.output and has_audio_stream(out)
    missing = tmp_path / "nobody.wav"
    result = _generate(params_file, models, inputs["photo"], inputs["speech"], tmp_path / "x.mp4", "--voice",
                       str(missing))
    assert result.exit_code == 2 and f"{missing}: voice recording not found" in result.output
    assert not (tmp_path / "x.mp4").exists()
    result = _generate(params_file, models, inputs["photo"], inputs["speech"], tmp_path / "y.mp4", "--voice",
                       str(inputs["silent"]))
    assert result.exit_code == 2 and "no voiced speech" in result.output and not (tmp_path / "y.mp4").exists()


def test_block_by_block_generation_equals_one_pass(tiny_models, inputs):
    """Blocks with the decoder's context on both sides and the filter's state carried over give the video a
    single block gives (with a fixed emotion; from the audio, e_e is pooled per block by design)."""
    from pipeline.render.generate import (
        animate_clip,
        filter_settings,
        load_animator,
        renderer_path,
    )
    from pipeline.render.photo import crop_face, face_box, load_photo

    animator = load_animator(tiny_models / "emmn.pt", renderer_path(tiny_models), torch.device("cpu"))
    p = tiny_section("generate")
    photo = load_photo(inputs["photo"], p.max_side)
    crop = crop_face(photo, face_box(photo, inputs["photo"], p.crop_enlarge, p.crop_shift_down), animator.image_size)
    samples = speech_like(1.3, SR)
    runs = [animate_clip(animator, crop, samples, 32, fps=25.0, filter_settings=filter_settings(p), block_frames=b,
                         emotion="happy", batch_size=4) for b in (32, 7)]
    assert runs[0].shape == (32, 64, 64, 3)
    assert np.abs(runs[0].astype(int) - runs[1]).max() <= 1


def test_models_of_different_runs_are_refused(tiny_models, tmp_path):
    from pipeline.core.errors import CheckpointError
    from pipeline.render.generate import load_animator
    from tests.generate_fixtures import write_tiny_emmn

    write_tiny_emmn(tmp_path / "emmn.pt", num_kp=7)
    with pytest.raises(CheckpointError, match="predicts 7 keypoints"):
        load_animator(tmp_path / "emmn.pt", tiny_models / "fomm.pt", torch.device("cpu"))


def test_generate_checks_the_audio_it_resamples(tmp_path):
    from pipeline.render.generate import check_audio, load_speech, resolve_emotion

    path = tmp_path / "s.wav"
    soundfile.write(path, np.stack([speech_like(0.5, 22050), speech_like(0.5, 22050, 3)], axis=1), 22050)
    samples = load_speech(path, SR, 0.2, -55.0)
    assert samples.ndim == 1 and abs(len(samples) - SR // 2) <= 1
    with pytest.raises(InputError, match="silent"):
        check_audio(np.full(SR, 1e-4, np.float32), SR, path, 0.2, -55.0)  # -80 dBFS
    with pytest.raises(InputError, match="too short"):
        check_audio(samples[: int(0.19 * SR)], SR, path, 0.2, -55.0)
    assert resolve_emotion(" SAD", ["neutral", "sad"]) == "sad" and resolve_emotion(None, ["sad"]) is None


@pytest.mark.parametrize("native", [False, True])
def test_the_renderer_runs_in_the_precision_auto_resolves_to(params_file, tiny_models, inputs, tmp_path, monkeypatch,
                                                             native):
    """On a CPU without native bf16 (AVX2) `auto` renders in fp32 (bf16 there is ~86x slower); with it, in bf16.
    The summary says which."""
    import pipeline.core.precision
    import pipeline.render.generate

    monkeypatch.setattr(pipeline.core.precision, "cpu_has_native_bf16", lambda: native)
    asked = []

    def spy(*args, **kwargs):
        asked.append(args[-1] if len(args) == 7 else kwargs.get("bf16", False))
        return render_frames(*args, **kwargs)

    monkeypatch.setattr(pipeline.render.generate, "render_frames", spy)
    result = _generate(params_file, tiny_models, inputs["photo"], inputs["speech"], tmp_path / "out.mp4")
    assert result.exit_code == 0, result.output
    assert asked and set(asked) == {native}
    assert f'"precision": "{"bf16" if native else "fp32"}"' in result.output
