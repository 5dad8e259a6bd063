"""Inference (paper §3.5): one face image + one speech clip -> an emotional talking-face mp4.

    reference crop --E_k--> (p_neu, j_neu)
    audio --EVP MFCC windows, a block of frames at a time--> EmmnNet --> (p^, j^) per frame
    one-euro filter --> FOMM flow estimator + generator (source p_neu, driving p^) --> face crops
    crops pasted back into the photo --> H.264 + AAC mp4 (frames piped to ffmpeg block by block)

Memory stays bounded for any audio length: only the decoded 16 kHz samples are held whole (230 MB an
hour); MFCC windows, keypoints and frames exist one block (`generate.block_frames`) at a time, and the
one-euro filter keeps its state across blocks. The emotion embedding is pooled over each block's audio
(the emotion encoder pools over the frames it is given), so a block is also the emotion's time scale.

Bad input (no face, unreadable image, silent or too short audio, unknown emotion) raises InputError
before any frame is made; the mp4 is written to a temp file and renamed only on success. `generate_from_photo` is
`emmn generate --image --audio --out` (photo mode): those checks, the models, `generate_video` with a progress bar.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.audio.prosody import block_prosody, measure_voice
from pipeline.audio.stream import (
    mel_windows,
    mfcc_windows,
    signal_mel,
    video_frame_count,
)
from pipeline.core.config import BaseParams, GenerateParams
from pipeline.core.errors import CheckpointError, InputError
from pipeline.core.media import SAMPLE_RATE, load_audio
from pipeline.core.mp4_stream import Mp4StreamWriter
from pipeline.core.precision import announce_precision, pick_device, resolve_precision
from pipeline.fomm.io import detect_keypoints, frames_to_tensor, load_fomm
from pipeline.models.fomm import KPDetector, OcclusionAwareGenerator
from pipeline.render.frames import FilterSettings, KeypointSmoother, render_frames
from pipeline.render.photo import FacePaster, crop_face, face_box, load_photo

EMMN_FILE = "emmn.pt"
RENDER_FILE = "emmn_render.pt"  # the stage-2 renderer (finetune_render; fomm.pt's own with steps 0), fomm.pt layout
FOMM_FILE = "fomm.pt"  # the renderer as train_fomm left it: used when no stage-2 one exists
PASTE_FRAMES = 16  # full-size frames pasted and piped at a time (16 x 1280 x 960 x 3 bytes = 59 MB)


# ------------------------------------------------------------------------------------------ inputs


def check_audio(samples: np.ndarray, sample_rate: int, path: str | Path, min_seconds: float,
                silence_dbfs: float) -> None:
    """Refuse audio shorter than `min_seconds` or whose RMS level is under `silence_dbfs` (one line)."""
    seconds = len(samples) / sample_rate
    if seconds < min_seconds:
        raise InputError(path, f"audio too short ({seconds:.3f} s; need at least {min_seconds:g} s)")
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    level = 20 * math.log10(rms) if rms > 0 else -math.inf
    if level < silence_dbfs:
        raise InputError(path, f"audio is silent (RMS level {level:.1f} dBFS, below the {silence_dbfs:g} dBFS "
                               "threshold)")


def load_speech(path: str | Path, sample_rate: int, min_seconds: float, silence_dbfs: float) -> np.ndarray:
    """Any audio file (any rate, any channel count) -> checked float32 mono samples at `sample_rate`."""
    samples = load_audio(path, sample_rate)
    check_audio(samples, sample_rate, path, min_seconds, silence_dbfs)
    return samples


def check_output_path(out: str | Path) -> Path:
    """The mp4 to write: an .mp4 name that is not an existing folder, under a folder (not a file)."""
    out = Path(out)
    if out.is_dir():
        raise InputError(out, "is an existing folder; --out must name an .mp4 file")
    if out.suffix.lower() != ".mp4":
        raise InputError(out, "output must be an .mp4 file")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(parent, "is a file, so the output cannot be written under it")
            break
    return out


def resolve_emotion(name: str | None, emotions: list[str]) -> str | None:
    """The model's spelling of an --emotion name (case-insensitive), or InputError listing the valid ones."""
    if name is None:
        return None
    by_lower = {e.lower(): e for e in emotions}
    if name.strip().lower() not in by_lower:
        raise InputError(None, f"unknown --emotion '{name}'; valid: {', '.join(emotions)}")
    return by_lower[name.strip().lower()]


# ------------------------------------------------------------------------------------------ models


@dataclass
class Animator:
    """Everything inference needs, on one device: EmmnNet, E_k and the stage-2 renderer."""

    emmn: torch.nn.Module
    kp_detector: KPDetector
    generator: OcclusionAwareGenerator
    image_size: int
    renderer_path: Path
    device: torch.device

    @property
    def emotions(self) -> list[str]:
        """Emotions the --emotion override accepts (EmmnNet's emotion table rows that training filled)."""
        return list(self.emmn.emotions)


def renderer_path(models_dir: str | Path) -> Path:
    """emmn_render.pt when finetune_render has written it, else fomm.pt."""
    models_dir = Path(models_dir)
    fine_tuned = models_dir / RENDER_FILE
    return fine_tuned if fine_tuned.is_file() else models_dir / FOMM_FILE


def check_keypoint_count(emmn: torch.nn.Module, emmn_path: str | Path, num_kp: int, render_path: str | Path) -> None:
    """EmmnNet must predict as many keypoints as the renderer's E_k detects (one pipeline run's models)."""
    if emmn.config.num_kp != num_kp:
        raise CheckpointError(emmn_path, f"predicts {emmn.config.num_kp} keypoints, the renderer {render_path} "
                                         f"has {num_kp}: not models of one pipeline run")


def load_animator(emmn_path: str | Path, render_path: str | Path, device: torch.device) -> Animator:
    """EmmnNet from `emmn_path`, E_k + renderer from a fomm.pt-layout checkpoint, in eval mode on `device`."""
    from pipeline.models.emmn import load_emmn

    emmn = load_emmn(emmn_path).eval().to(device)
    fomm = load_fomm(render_path)
    check_keypoint_count(emmn, emmn_path, fomm.config.num_kp, render_path)
    # channels-last convolution weights: oneDNN's fast layout on the CPU (render 42 -> 32 ms a frame at 128 px on 2
    # AVX2 cores, pixels within 1 level); the same layout suits cuDNN's tensor cores
    generator = fomm.generator.to(device=device, memory_format=torch.channels_last)
    return Animator(emmn, fomm.kp_detector.to(device), generator, fomm.config.image_size, Path(render_path), device)


# ------------------------------------------------------------------------------------------ animation


@torch.inference_mode()
def reference_keypoints(animator: Animator, crop_rgb: np.ndarray) -> dict[str, np.ndarray]:
    """(p_neu, j_neu) of the reference crop: E_k's value (1,N,2) and jacobian (1,N,2,2)."""
    value, jacobian = detect_keypoints(animator.kp_detector, crop_rgb[None], animator.image_size)
    return {"value": value, "jacobian": jacobian}


@torch.inference_mode()
def predict_keypoints(emmn: torch.nn.Module, reference: torch.Tensor, mfcc: np.ndarray,
                      kp_neu: dict[str, np.ndarray], emotion: str | None = None, intensity: float = 1.0,
                      mel: np.ndarray | None = None, prosody: np.ndarray | None = None,
                      voice: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """EmmnNet on MFCC windows (T,28,12) [+ mel windows (T,80,16) for an emotion encoder that reads them; +
    prosody (T,4,3) and the speaker's voice baseline (2,), if known, for one that hears prosody] of one clip
    -> p^ (T,N,2), j^ (T,N,2,2) float32 on the CPU.

    `emotion` None: e_e comes from the audio (the paper). A name replaces it by EmmnNet's emotion-table
    embedding e_neutral + intensity (e_name - e_neutral), which steers only the emo-mouth memory query
    (Eq. 10); the mouth still follows the audio's content.
    """
    out = emmn.predict(reference, torch.as_tensor(np.asarray(mfcc, np.float32))[None],
                       torch.as_tensor(kp_neu["value"]), torch.as_tensor(kp_neu["jacobian"]),
                       emotion=emotion, intensity=intensity,
                       mel=None if mel is None else torch.as_tensor(np.asarray(mel, np.float32))[None],
                       prosody=None if prosody is None else torch.as_tensor(np.asarray(prosody, np.float32))[None],
                       voice=None if voice is None else torch.as_tensor(np.asarray(voice, np.float32))[None])
    return out["value"][0].float().cpu().numpy(), out["jacobian"][0].float().cpu().numpy()


def animate_blocks(animator: Animator, crop_rgb: np.ndarray, samples: np.ndarray, n_frames: int, *, fps: float,
                   filter_settings: FilterSettings, block_frames: int, emotion: str | None = None,
                   intensity: float = 1.0, batch_size: int = 16, mel_pad_mode: str = "reflect", bf16: bool = False,
                   voice: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Reference crop (S,S,3) uint8 + speech samples -> uint8 crop blocks (<= block_frames, S,S,3), in order.

    Each block's MFCC windows get EmmnNet's temporal context (`config.context` frames) on both sides, so
    the mouth decoder sees the same neighbours at a block edge as inside a block; the one-euro filter
    runs on across blocks. The audio emotion embedding is pooled per block; an encoder that hears prosody hears
    it relative to `voice` (the speaker's baseline, pipeline.audio.prosody), or to the training voices' average.
    """
    reference = frames_to_tensor(crop_rgb[None], animator.image_size)
    kp_neu = reference_keypoints(animator, crop_rgb)
    smoother = KeypointSmoother(fps, filter_settings)
    margin = int(getattr(getattr(animator.emmn, "config", None), "context", 0))
    # the emotion encoder may read mel windows; the mel of the whole signal is small (unlike its MFCC frames)
    mel = signal_mel(samples, mel_pad_mode) if getattr(animator.emmn, "needs_mel", False) else None
    hears_prosody = emotion is None and getattr(animator.emmn, "needs_prosody", False)
    for start in range(0, n_frames, block_frames):
        stop = min(start + block_frames, n_frames)
        lo, hi = max(start - margin, 0), min(stop + margin, n_frames)
        mfcc = mfcc_windows(samples, n_frames, lo, hi)
        mel_block = None if mel is None else mel_windows(mel, lo, hi, fps)
        prosody = block_prosody(samples, lo, hi, fps, SAMPLE_RATE) if hears_prosody else None
        value, jacobian = predict_keypoints(animator.emmn, reference, mfcc, kp_neu, emotion, intensity, mel_block,
                                            prosody, voice if hears_prosody else None)
        keep = slice(start - lo, stop - lo)
        value, jacobian = smoother(value[keep], jacobian[keep])
        yield render_frames(animator.generator, reference, kp_neu, value, jacobian, batch_size, bf16)


def animate_clip(animator: Animator, crop_rgb: np.ndarray, samples: np.ndarray, n_frames: int, *, fps: float,
                 filter_settings: FilterSettings, block_frames: int, emotion: str | None = None,
                 intensity: float = 1.0, batch_size: int = 16, bf16: bool = False,
                 voice: np.ndarray | None = None) -> np.ndarray:
    """A whole clip of generated crops (n_frames, S, S, 3) (what the generate stage stores)."""
    return np.concatenate(list(animate_blocks(animator, crop_rgb, samples, n_frames, fps=fps,
                                              filter_settings=filter_settings, block_frames=block_frames,
                                              emotion=emotion, intensity=intensity, batch_size=batch_size,
                                              bf16=bf16, voice=voice)))


# ------------------------------------------------------------------------------------------ photo -> mp4


def filter_settings(p: GenerateParams) -> FilterSettings:
    return FilterSettings(p.filter, p.filter_min_cutoff, p.filter_beta, p.filter_d_cutoff)


def generate_video(image: str | Path, audio: str | Path, out: str | Path, animator: Animator, base: BaseParams,
                   p: GenerateParams, *, emotion: str | None = None, intensity: float | None = None,
                   voice: Sequence[str | Path] = (), progress: Callable[[int, int], None] | None = None,
                   log: Callable[[str], None] | None = None) -> dict:
    """Animate the face in `image` with the speech in `audio`; write `out` (mp4 with the input audio).

    Every input is checked before the first frame is rendered. `intensity` (default 1) needs `emotion`.
    `voice`: other recordings of the same speaker; the emotion is then heard relative to their voice baseline
    (pipeline.audio.prosody) instead of the training voices' average (models whose E_e hears prosody).
    `progress(done, total)` is called after each block; `log` gets the resolved precision once every input
    passed its checks (a refused input stays a one-line error). Returns a summary (frames, size, box, emotion,
    renderer).
    """
    out = check_output_path(out)
    if intensity is not None and emotion is None:
        raise InputError(None, "--intensity scales an --emotion override; give --emotion too (without it the "
                               "emotion comes from the audio)")
    emotion = resolve_emotion(emotion, animator.emotions)
    intensity = 1.0 if intensity is None else float(intensity)
    if emotion is not None:
        animator.emmn.emotion_embedding(emotion, intensity)  # refuses an intensity out of range, in one line
    photo = load_photo(image, p.max_side)
    box = face_box(photo, image, p.crop_enlarge, p.crop_shift_down)
    samples = load_speech(audio, base.sample_rate, p.min_seconds, p.silence_dbfs)
    baseline = measure_voice(list(voice), base.fps, base.sample_rate) if voice else None
    crop = crop_face(photo, box, animator.image_size)
    paster = FacePaster(photo, box, p.feather)
    n_frames = video_frame_count(len(samples), base.sample_rate, base.fps)
    precision = resolve_precision(base.precision, animator.device)
    if log is not None:
        announce_precision(precision, "generate", log)
    height, width = photo.shape[:2]
    done = 0
    with Mp4StreamWriter(out, width, height, base.fps, audio=audio, crf=p.crf) as writer:
        for crops in animate_blocks(animator, crop, samples, n_frames, fps=base.fps,
                                    filter_settings=filter_settings(p), block_frames=p.block_frames,
                                    emotion=emotion, intensity=intensity, batch_size=p.batch_size,
                                    bf16=precision.bf16, voice=baseline):
            for start in range(0, len(crops), PASTE_FRAMES):  # full-size frames exist a few at a time
                writer.write(paster.paste(crops[start:start + PASTE_FRAMES]))
                done += len(crops[start:start + PASTE_FRAMES])
                if progress is not None:
                    progress(done, n_frames)
    return {"frames": n_frames, "seconds": round(len(samples) / base.sample_rate, 3), "width": width, "height": height,
            "face_box": list(box), "emotion": emotion or "from audio", "intensity": intensity if emotion else None,
            "voice": None if baseline is None else [round(float(v), 2) for v in baseline],
            "renderer": str(animator.renderer_path), "precision": precision.resolved, "out": str(out)}


def generate_from_photo(image: Path, audio: Path, out: Path, models_dir: Path, base: BaseParams, p: GenerateParams,
                        emotion: str | None, intensity: float | None, device: str, voice: Sequence[Path] = ()
                        ) -> dict:
    """`emmn generate --image --audio --out`: one mp4, with a progress bar (plain lines off a terminal)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    check_output_path(out)  # the cheap checks first, before any model is loaded or frame rendered
    if not Path(image).is_file():
        raise InputError(image, "image file not found")
    if not Path(audio).is_file():
        raise InputError(audio, "audio file not found")
    for path in voice:
        if not Path(path).is_file():
            raise InputError(path, "voice recording not found")
    animator = load_animator(models_dir / EMMN_FILE, renderer_path(models_dir), pick_device(device))
    interactive = sys.stderr.isatty()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  disable=not interactive) as bar:
        task = bar.add_task("generate: frames", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
            if not interactive and (done == total or done % 250 < PASTE_FRAMES):  # a log line every ~10 s of video
                print(f"generate: {done}/{total} frames", file=sys.stderr, flush=True)

        # stdout carries the JSON summary: the log (the resolved precision) goes to stderr
        return generate_video(image, audio, out, animator, base, p, emotion=emotion, intensity=intensity,
                              voice=voice, progress=progress, log=lambda line: print(line, file=sys.stderr, flush=True))
