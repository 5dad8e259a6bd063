"""Per-window embeddings for the offset search: the trained SyncNet_color expert or syncnet_python's v2.

A scorer turns a clip (RGB face frames at 25 fps + 16 kHz samples) into one video and one audio
embedding per 5-frame window v = 0..n-1, following each model's own input conventions:

* `ExpertScorer` (Wav2Lip's SyncNet_color): 96x96 BGR faces in [0,1], lower halves of frames v..v+4
  stacked frame-major; Wav2Lip mel window of 16 steps from column int(v*80/fps). L2-normalised outputs.
* `SyncNetV2Scorer` (syncnet_python): 224x224 BGR crops as raw 0..255 floats, [3,5,224,224]; MFCC of the
  int16-scale samples, columns 4v..4v+19. Un-normalised 1024-d outputs, batches of 20 as officially.

`score_clip` then runs `pipeline.lipsync.av_sync.av_offset` (syncnet_python's offset/confidence rule);
`cached_scorer` loads a checkpoint's scorer once per worker process (sync_filter and evaluate workers).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

from pipeline.audio.frontends import mel_window_start, syncnet_mfcc, wav2lip_mel
from pipeline.core.errors import InputError
from pipeline.core.media import FACE_SIZE, faces_bgr
from pipeline.lipsync.av_sync import VSHIFT, SyncResult, av_offset, sync_window_count
from pipeline.lipsync.data import WINDOW, expert_face_windows, faces_tensor
from pipeline.lipsync.io import LoadedModel, load_syncnet_any
from pipeline.models.syncnet_color import SyncNetColor
from pipeline.models.syncnet_v2 import SyncNetV2

SAMPLE_RATE = 16000
SCORER_FPS = 25.0  # both models were trained on 25 fps video (MFCC: 4 columns per frame)


class SyncScorer(ABC):
    """One embedding per 5-frame window for the video and for the audio."""

    name: str = "scorer"

    @abstractmethod
    def video_embeddings(self, frames_rgb: np.ndarray, n_windows: int) -> torch.Tensor:
        """[n, D] for windows of frames v..v+4, v < n."""

    @abstractmethod
    def audio_embeddings(self, samples: np.ndarray, n_windows: int) -> torch.Tensor:
        """[n, D] for the audio window of frame v, v < n (float samples in [-1, 1] at 16 kHz)."""


class ExpertScorer(SyncScorer):
    name = "syncnet_color"

    def __init__(self, model: SyncNetColor, mel_pad_mode: str = "reflect", fps: float = SCORER_FPS,
                 batch_size: int = 64):
        self.model, self.mel_pad_mode, self.fps, self.batch_size = model.eval(), mel_pad_mode, fps, batch_size

    @torch.inference_mode()
    def video_embeddings(self, frames_rgb: np.ndarray, n_windows: int) -> torch.Tensor:
        faces = faces_tensor(faces_bgr(frames_rgb[:n_windows + WINDOW - 1], FACE_SIZE))  # [T,3,96,96]
        out = []
        for start in range(0, n_windows, self.batch_size):
            idx = np.arange(start, min(start + self.batch_size, n_windows))[:, None] + np.arange(WINDOW)
            windows = faces[torch.from_numpy(idx)].transpose(1, 2)  # [b,3,5,96,96]
            out.append(torch.nn.functional.normalize(self.model.face_encoder(expert_face_windows(windows))
                                                     .flatten(1), p=2, dim=1))
        return torch.cat(out)

    @torch.inference_mode()
    def audio_embeddings(self, samples: np.ndarray, n_windows: int) -> torch.Tensor:
        windows = torch.from_numpy(expert_mel_windows(samples, n_windows, self.fps, self.mel_pad_mode)).unsqueeze(1)
        out = [torch.nn.functional.normalize(self.model.audio_encoder(windows[i:i + self.batch_size]).flatten(1),
                                             p=2, dim=1) for i in range(0, n_windows, self.batch_size)]
        return torch.cat(out)


def expert_mel_windows(samples: np.ndarray, n_windows: int, fps: float = SCORER_FPS,
                       pad_mode: str = "reflect") -> np.ndarray:
    """[n,80,16] Wav2Lip mel windows of frames v < n, from column int(v*80/fps) (audio.zarr's rows)."""
    mel = wav2lip_mel(samples, pad_mode=pad_mode)
    starts = [mel_window_start(v, fps) for v in range(n_windows)]
    if starts and starts[-1] + 16 > mel.shape[1]:
        raise InputError(None, f"audio too short for {n_windows} windows")
    return np.stack([mel[:, s:s + 16] for s in starts]) if starts else np.zeros((0, 80, 16), np.float32)


def mfcc_windows(samples: np.ndarray, n_windows: int) -> np.ndarray:
    """[n,13,20] syncnet_python MFCC windows (columns 4v..4v+19) of the int16-scale samples."""
    # syncnet_python reads int16 with scipy and never rescales: c0 (log energy) depends on that scale.
    mfcc = syncnet_mfcc(np.asarray(samples, np.float64) * 32768.0)
    if 4 * (n_windows - 1) + 20 > mfcc.shape[1]:
        raise InputError(None, f"audio too short for {n_windows} windows")
    return np.stack([mfcc[:, 4 * v:4 * v + 20] for v in range(n_windows)])


class SyncNetV2Scorer(SyncScorer):
    name = "syncnet_v2"
    crop_size = 224

    def __init__(self, model: SyncNetV2, batch_size: int = 20):
        self.model, self.batch_size = model.eval(), batch_size

    @torch.inference_mode()
    def video_embeddings(self, frames_rgb: np.ndarray, n_windows: int) -> torch.Tensor:
        crops = torch.from_numpy(faces_bgr(frames_rgb[:n_windows + WINDOW - 1], self.crop_size)).float()
        video = crops.permute(3, 0, 1, 2)  # [3,T,224,224], raw 0..255 BGR
        out = []
        for start in range(0, n_windows, self.batch_size):
            stop = min(start + self.batch_size, n_windows)
            batch = torch.stack([video[:, v:v + WINDOW] for v in range(start, stop)])
            out.append(self.model.forward_lip(batch))
        return torch.cat(out)

    @torch.inference_mode()
    def audio_embeddings(self, samples: np.ndarray, n_windows: int) -> torch.Tensor:
        windows = torch.from_numpy(mfcc_windows(samples, n_windows)).unsqueeze(1)
        out = [self.model.forward_aud(windows[i:i + self.batch_size]) for i in range(0, n_windows, self.batch_size)]
        return torch.cat(out)


def make_scorer(loaded: LoadedModel, mel_pad_mode: str = "reflect") -> SyncScorer:
    if loaded.arch == "syncnet_v2":
        return SyncNetV2Scorer(loaded.module)
    if loaded.arch == "syncnet_color":
        return ExpertScorer(loaded.module, loaded.config.get("mel_pad_mode", mel_pad_mode))
    raise InputError(None, f"no sync scorer for a {loaded.arch} model")


def score_clip(scorer: SyncScorer, frames_rgb: np.ndarray, samples: np.ndarray, *, source: str | Path | None = None,
               vshift: int = VSHIFT) -> SyncResult:
    """syncnet_python's offset / confidence / min distance of one clip (25 fps frames, 16 kHz samples)."""
    n = sync_window_count(len(frames_rgb), len(samples), SAMPLE_RATE / SCORER_FPS)
    if n < 1:
        frames_of_audio = len(samples) / (SAMPLE_RATE / SCORER_FPS)
        raise InputError(source, f"too short to score: {len(frames_rgb)} video frames, {frames_of_audio:.1f} frames "
                                 f"of audio; need at least {WINDOW + 1} of both")
    return av_offset(scorer.video_embeddings(frames_rgb, n), scorer.audio_embeddings(samples, n), vshift)


@functools.lru_cache(maxsize=2)
def cached_scorer(path: str, mtime: float) -> SyncScorer:
    """One scorer per worker process (keyed by mtime so a rewritten file is re-read)."""
    return make_scorer(load_syncnet_any(path))
