"""Audio-visual offset and confidence exactly as syncnet_python's `SyncNetInstance.evaluate` computes them.

Given one embedding per 5-frame video window and one per audio window (same frame rate), the video
feature of window v is compared with the audio features of windows v-15..v+15 (zero vectors outside
the clip) by Euclidean distance (`torch.pairwise_distance`, eps 1e-6); the distances are averaged
over v; the smallest mean distance is the min distance (LSE-D), `median - min` the confidence
(LSE-C), and `offset = vshift - argmin`. A positive offset means the audio leads: the sound of
video frame t + offset plays at time t. Frame-wise confidence: median - the window's distance at the
best offset, 9-tap median filtered (scipy `medfilt`).

The window count follows the official code too: L = min(video frames, floor(samples / samples per
frame)) and windows v = 0 .. L-6 (L-5 of them, one fewer than would fit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.signal
import torch
import torch.nn.functional as F

VSHIFT = 15  # frames searched on each side (syncnet_python's default --vshift)
WINDOW_FRAMES = 5
FRAME_CONF_FILTER = 9  # median filter taps of the frame-wise confidence


@dataclass(frozen=True)
class SyncResult:
    """Offset (frames, audio leading when > 0), confidence (LSE-C), min distance (LSE-D), the mean distance
    per candidate offset (index k is offset vshift - k) and the filtered frame-wise confidence."""

    offset: int
    confidence: float
    min_dist: float
    mean_dists: np.ndarray
    frame_confidence: np.ndarray

    def as_row(self) -> dict[str, float | int]:
        return {"offset": self.offset, "confidence": self.confidence, "min_dist": self.min_dist}


def sync_window_count(n_frames: int, n_samples: int, samples_per_frame: float = 640.0) -> int:
    """Number of windows syncnet_python scores: min(frames, floor(samples / spf)) - 5 (may be <= 0)."""
    usable = min(int(n_frames), int(n_samples // samples_per_frame))
    return usable - WINDOW_FRAMES


def offset_distances(video: torch.Tensor, audio: torch.Tensor, vshift: int = VSHIFT) -> torch.Tensor:
    """[n, 2*vshift+1] distances: row v, column k = |video_v - audio_{v+k-vshift}| (zero audio outside)."""
    if video.ndim != 2 or video.shape != audio.shape:
        raise ValueError(f"need equal [n, D] embeddings, got video {tuple(video.shape)} audio {tuple(audio.shape)}")
    n, width = video.shape[0], 2 * vshift + 1
    padded = F.pad(audio, (0, 0, vshift, vshift))
    candidates = padded.unfold(0, width, 1).transpose(1, 2)  # [n, width, D]: window v holds audio v-15..v+15
    return F.pairwise_distance(video[:, None, :].expand(n, width, -1).reshape(n * width, -1),
                               candidates.reshape(n * width, -1)).reshape(n, width)


def av_offset(video: torch.Tensor, audio: torch.Tensor, vshift: int = VSHIFT) -> SyncResult:
    """syncnet_python's offset, confidence and min distance from per-window embeddings [n, D]."""
    if video.shape[0] < 1:
        raise ValueError("no windows to score")
    dists = offset_distances(video.float(), audio.float(), vshift)
    mean_dists = dists.mean(dim=0)
    min_dist, min_idx = torch.min(mean_dists, 0)
    median = torch.median(mean_dists)  # odd length (31): the middle value, as the official torch call
    frame_conf = (median - dists[:, min_idx]).numpy()
    frame_conf = scipy.signal.medfilt(frame_conf, kernel_size=FRAME_CONF_FILTER)
    return SyncResult(offset=int(vshift - int(min_idx)), confidence=float(median - min_dist),
                      min_dist=float(min_dist), mean_dists=mean_dists.numpy(), frame_confidence=frame_conf)
