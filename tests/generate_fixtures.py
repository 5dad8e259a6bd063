"""Tiny seeded models for the inference tests: an EmmnNet (real classes, random weights) and a FOMM renderer,
written to disk in the pipeline's checkpoint formats, plus a photo-like image and speech-like audio."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import tiny_section

EMOTIONS = ("neutral", "happy", "sad", "surprised")  # the tiny profile's corpus emotions


def write_tiny_fomm(path: Path, seed: int = 0) -> None:
    """A fomm.pt at the tiny profile's FOMM size, freshly initialised (what train_fomm's format holds)."""
    from pipeline.fomm.train import fomm_config, init_fomm
    from pipeline.training.loop import save_training_state

    config = fomm_config(tiny_section("train_fomm"))
    kp_detector, generator = init_fomm(config, seed)
    save_training_state(path, modules={"kp_detector": kp_detector, "generator": generator}, config=config.to_dict(),
                        step=0, metrics={})


def write_tiny_emmn(path: Path, num_kp: int, seed: int = 0, variant: str = "emmn", prosody: bool = False) -> None:
    """An emmn.pt of tiny random modules: frozen audio encoders (with `prosody`, ones whose E_e also hears
    voice-relative prosody) and D_em embedded, emotion table filled.

    D_em's output layer starts at zero (an untrained decoder returns the neutral keypoints); it gets small
    random weights here so the predicted keypoints move with the audio, as a trained one's do.
    """
    from pipeline.models.emmn import EmmnConfig, EmmnNet, save_emmn
    from pipeline.models.motion import MotionConfig, init_motion
    from tests.memory_fixtures import tiny_audio, tiny_prosody_audio

    audio = (tiny_prosody_audio if prosody else tiny_audio)(seed)  # the memory tests' tiny frozen audio encoders
    audio_ckpt = {"model": {"evp_audio": audio.state_dict()},
                  "config": {"arch": "evp_audio", "model": audio.config.to_dict()}, "step": 0, "metrics": {}}
    motion = init_motion(MotionConfig(num_kp=num_kp, expression_dim=8, mouth_dim=4, hidden=16, layers=1), seed)
    with torch.no_grad():
        motion.decoder.net[-1].weight.normal_(0, 0.05)
    motion_ckpt = {"model": {"motion": motion.state_dict()}, "config": motion.config.as_dict(), "step": 0,
                   "metrics": {}}
    upper = (0, 1, 2) if variant == "mmn" else ()
    config = EmmnConfig(variant=variant, num_kp=num_kp, content_dim=audio.config.content_dim,
                        emotion_dim=audio.config.emotion_dim, mouth_dim=4,
                        expression_dim=6 * len(upper) if upper else 8, identity_dim=8, identity_channels=(4, 8),
                        hidden=16, decoder_blocks=1, kernel=3, slots=4, window=8, upper_keypoints=upper,
                        emotions=EMOTIONS, levels=(3,))
    model = EmmnNet(config, audio, motion if variant == "emmn" else None)
    model.emotion_table.fill(torch.rand(len(EMOTIONS), audio.config.emotion_dim), list(EMOTIONS), [3] * len(EMOTIONS))
    frozen = {"audio": audio_ckpt, **({"motion": motion_ckpt} if variant == "emmn" else {})}
    save_emmn(path, model, step=0, metrics={}, frozen=frozen)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """A models folder with emmn.pt and fomm.pt (no fine-tuned renderer: inference falls back to fomm.pt)."""
    folder = tmp_path_factory.mktemp("models")
    write_tiny_fomm(folder / "fomm.pt")
    write_tiny_emmn(folder / "emmn.pt", num_kp=tiny_section("train_fomm").num_kp)
    return folder


def photo_with_face(face_rgb: np.ndarray, face_side: int = 150, size: tuple[int, int] = (320, 240),
                    at: tuple[int, int] = (70, 40), seed: int = 0) -> np.ndarray:
    """A photo-like RGB image: a corpus face scaled up and pasted on a textured background, off centre."""
    width, height = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([60 + 0.3 * xx, 90 + 0.2 * yy, 120 - 0.1 * xx], axis=-1)
    background = np.clip(background + rng.normal(0, 6, background.shape), 0, 255).astype(np.uint8)
    face = cv2.resize(face_rgb, (face_side, face_side), interpolation=cv2.INTER_CUBIC)
    x, y = at
    background[y:y + face_side, x:x + face_side] = face
    return background


def speech_like(seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """Voiced-speech-like test audio: a 140 Hz harmonic source under a syllable-rate envelope, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    source = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 12))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0.2 * source * envelope / 3 + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def write_png(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def write_tiny_wav2lip(path: Path, seed: int = 0) -> None:
    """A wav2lip.pt of a freshly initialised 1/16-width generator (train_wav2lip's format)."""
    from pipeline.lipsync.io import lipsync_config
    from pipeline.models.wav2lip import Wav2Lip, Wav2LipConfig
    from pipeline.training.loop import save_training_state

    torch.manual_seed(seed)
    generator = Wav2Lip(Wav2LipConfig.scaled(0.0625))
    save_training_state(path, modules={"wav2lip": generator},
                        config=lipsync_config("wav2lip", generator.config, 25.0, "reflect"), step=0, metrics={})
