"""Voice-relative prosody (pipeline/audio/prosody.py), the prosody stage, and the emotion encoder's prosody branch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.audio.prosody import (
    ProsodyStore,
    block_prosody,
    frame_prosody,
    measure_voice,
    voice_baseline,
)
from pipeline.core.errors import InputError
from pipeline.models.audio import AudioConfig, AudioEncoders, relative_prosody
from tests.conftest import tiny_section
from tests.lipsync_fixtures import tiny_audio, tiny_prosody  # noqa: F401  (session fixtures)

SR, FPS = 16000, 25.0


def tone(hz: float, seconds: float, amplitude: float = 0.3, silence_s: float = 0.0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (amplitude * np.sin(2 * np.pi * hz * t) * (t >= silence_s)).astype(np.float32)


def test_frame_prosody_reads_pitch_voicing_and_energy_of_a_tone():
    track = frame_prosody(tone(220.0, 1.0, silence_s=0.2), 25, FPS, SR)
    assert track.shape == (25, 4, 3) and track.dtype == np.float32
    assert (track[:4, :, 1] == 0).all() and (track[:4, :, 0] == 0).all()  # the leading silence: unvoiced, no f0
    steady = track[8:20]
    assert (steady[..., 1] == 1).all()
    np.testing.assert_allclose(steady[..., 0], 12 * np.log2(220.0), atol=0.1)  # 93.38 semitones re 1 Hz
    np.testing.assert_allclose(steady[..., 2], 20 * np.log10(0.3 / np.sqrt(2)), atol=0.05)  # -13.47 dB FS


def test_frame_prosody_pads_a_short_signal_and_refuses_odd_rates():
    track = frame_prosody(tone(150.0, 0.5), 20, FPS, SR)  # 0.8 s of video over 0.5 s of audio
    assert track.shape == (20, 4, 3) and (track[-3:, :, 1] == 0).all()
    with pytest.raises(InputError, match="whole number"):
        frame_prosody(tone(150.0, 0.5), 5, 30.0, SR)  # 133.3 samples per sub-step


def test_block_prosody_of_the_whole_clip_equals_frame_prosody():
    samples = tone(180.0, 1.2, silence_s=0.1)
    np.testing.assert_array_equal(block_prosody(samples, 0, 30, FPS, SR), frame_prosody(samples, 30, FPS, SR))
    second_half = block_prosody(samples, 15, 30, FPS, SR)
    np.testing.assert_allclose(second_half[2:-2, :, 0], frame_prosody(samples, 30, FPS, SR)[17:28, :, 0], atol=0.05)


def test_voice_baseline_hand_computed():
    # voiced f0 60, 62, 70 -> median 62; voiced energies -20, -30, -10 -> mean -20; the unvoiced step is ignored
    a = np.array([[[60, 1, -20], [0, 0, -70]]], np.float32).reshape(1, 2, 3)
    b = np.array([[[62, 1, -30], [70, 1, -10]]], np.float32).reshape(1, 2, 3)
    np.testing.assert_allclose(voice_baseline([a, b]), [62.0, -20.0])
    with pytest.raises(InputError, match="no voiced speech"):
        voice_baseline([np.zeros((2, 4, 3), np.float32)])


def test_relative_prosody_hand_computed():
    prosody = torch.tensor([[[[74.0, 1.0, -10.0], [50.0, 0.0, -200.0], [62.0, 1.0, -40.0], [68.0, 1.0, -20.0]]]])
    prosody = prosody.expand(2, 1, 4, 3)
    voice = torch.tensor([[62.0, -20.0], [float("nan"), float("nan")]])  # known; unknown: the fallback stands in
    fallback = torch.tensor([50.0, -40.0])
    expected = torch.tensor([[[[1.0, 1.0, 0.5, 1.0], [0.0, 0.0, -3.0, 1.0], [0.0, 1.0, -1.0, 1.0],
                               [0.5, 1.0, 0.0, 1.0]]],  # octaves, voiced, 20 dB (clamped), voice known
                             [[[2.0, 1.0, 1.5, 0.0], [0.0, 0.0, -3.0, 0.0], [1.0, 1.0, 0.0, 0.0],
                               [1.5, 1.0, 1.0, 0.0]]]])
    torch.testing.assert_close(relative_prosody(prosody, voice, fallback), expected)
    with pytest.raises(InputError, match="voice"):
        relative_prosody(prosody, voice[0], fallback)


def test_measure_voice_reads_recordings_in_blocks(tmp_path):
    import soundfile

    path = tmp_path / "voice.wav"
    soundfile.write(path, np.concatenate([tone(200.0, 1.0), tone(100.0, 1.0)]), SR)
    whole = measure_voice([path], FPS, SR)
    blocks = measure_voice([path], FPS, SR, block_seconds=0.4)
    np.testing.assert_allclose(whole[0], blocks[0], atol=0.2)  # median between the two tones' 91.7 and 79.7
    assert 79.0 < whole[0] < 92.5
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(SR, np.float32), SR)
    with pytest.raises(InputError, match="no voiced speech") as err:
        measure_voice([silent], FPS, SR)
    assert err.value.path == str(silent)


def prosody_encoder(seed: int = 0) -> AudioEncoders:
    torch.manual_seed(seed)
    config = AudioConfig.scaled(1 / 16, emotions=("neutral", "happy"), content_dim=8, emotion_dim=6,
                                temporal_channels=8, prosody_channels=4)
    model = AudioEncoders(config)
    model.set_voice_default(torch.tensor([80.0, -25.0]))
    return model.eval()


def test_encoder_hears_prosody_only_relative_to_the_voice():
    model = prosody_encoder()
    mfcc = torch.randn(1, 10, 28, 12)
    prosody = torch.from_numpy(frame_prosody(tone(200.0, 0.4) + tone(230.0, 0.4) * 0.5, 10, FPS, SR))[None]
    voice = torch.tensor([[85.0, -20.0]])
    e = model.encode_emotion(mfcc, None, prosody, voice)
    shifted = prosody.clone()
    shifted[..., 0] += 5.0 * shifted[..., 1]  # the same speech five semitones higher and 6 dB louder ...
    shifted[..., 2] += 6.0
    torch.testing.assert_close(model.encode_emotion(mfcc, None, shifted, voice + torch.tensor([[5.0, 6.0]])), e)
    assert not torch.allclose(model.encode_emotion(mfcc, None, shifted, voice), e)  # ... against the old voice
    no_voice = model.encode_emotion(mfcc, None, prosody)  # the default baseline, flagged as unknown
    torch.testing.assert_close(no_voice, model.encode_emotion(mfcc, None, prosody, torch.full((1, 2), float("nan"))))
    assert not torch.allclose(no_voice, model.encode_emotion(mfcc, None, prosody, torch.tensor([[80.0, -25.0]])))
    with pytest.raises(InputError, match="prosody"):
        model.encode_emotion(mfcc)
    with pytest.raises(InputError, match="temporal_channels"):
        AudioConfig.scaled(1 / 16, temporal_channels=0, prosody_channels=4)


def test_stage_writes_tracks_and_one_voice_per_actor(tiny_audio, tiny_prosody):  # noqa: F811
    import pandas as pd

    from pipeline.core.store import read_index

    corpus, audio_store = tiny_audio
    manifest = pd.read_parquet(corpus / "manifest.parquet")
    store = ProsodyStore(tiny_prosody)
    assert set(store.voices) == set(manifest.actor)
    pd.testing.assert_frame_equal(read_index(tiny_prosody), read_index(audio_store))
    clip = manifest[manifest.kind == "real"].iloc[0]
    track = store.clip(clip.clip_id)
    assert track.shape == (clip.frames, 4, 3) and 0.3 < track[..., 1].mean() < 1.0  # speech, with pauses
    from pipeline.core.media import load_audio

    again = frame_prosody(load_audio(corpus / clip.wav_path), int(clip.frames), tiny_section("base").fps, SR)
    np.testing.assert_array_equal(track, again)
    mine = [store.clip(c) for c in manifest[(manifest.actor == clip.actor) & (manifest.kind == "real")].clip_id]
    np.testing.assert_allclose(store.voice(clip.actor), voice_baseline(mine), atol=1e-3)
    with pytest.raises(InputError, match="no voice baseline"):
        store.voice("nobody")
    with pytest.raises(InputError, match="not a prosody store"):
        ProsodyStore(audio_store)
