"""Corpus access for the lip-sync models: faces at the models' size in BGR, mel windows, window samplers.

The corpus frames are already face crops (RGB, corpus.size px); the Wav2Lip generator and its expert
want 96x96 BGR faces (OpenCV order, as the official code reads them), so `faces_bgr` resizes and swaps
channels. Mel windows come from `audio.zarr`, whose row i is the 16-step window of frame i starting at
mel column int(i*80/fps) (Wav2Lip's inference alignment; the expert's window for frames f..f+4 is row f).
Training clips are held in memory at 96 px (about 28 kB a frame), so sampling a batch costs no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from pipeline.core.errors import InputError
from pipeline.core.media import FACE_SIZE, faces_bgr
from pipeline.core.store import open_store, read_index
from pipeline.corpus.manifest import read_manifest, real_clips

WINDOW = 5  # frames per expert window


def bgr_to_rgb(frames_bgr: np.ndarray, size: int | None = None) -> np.ndarray:
    """uint8 BGR faces -> uint8 RGB, optionally resized to `size` (bilinear up, area down)."""
    if size is not None and frames_bgr.shape[1:3] != (size, size):
        interp = cv2.INTER_AREA if frames_bgr.shape[1] > size else cv2.INTER_LINEAR
        frames_bgr = np.stack([cv2.resize(f, (size, size), interpolation=interp) for f in frames_bgr])
    return np.ascontiguousarray(frames_bgr[..., ::-1])


def expert_face_windows(faces: torch.Tensor) -> torch.Tensor:
    """BGR faces in [0,1] [B,3,5,H,W] -> expert input [B,15,H//2,W]: lower halves, frame-major channels."""
    lower = faces[:, :, :, faces.shape[3] // 2:]
    return torch.cat([lower[:, :, i] for i in range(lower.shape[2])], dim=1)


def mel_pad_mode(audio_store: Path) -> str:
    """The STFT padding audio.zarr was computed with (scorers must cut their own mel the same way)."""
    params = open_store(audio_store).attrs.get("params", {})
    return params.get("audio_features", {}).get("mel_pad_mode", "reflect")


def check_aligned(corpus_dir: Path, audio_store: Path) -> None:
    """audio.zarr must have the corpus's per-clip index (row i = frame i), else windows would be misaligned."""
    frames_index = read_index(Path(corpus_dir) / "frames.zarr")
    audio_index = read_index(audio_store)
    if not frames_index.reset_index(drop=True).equals(audio_index.reset_index(drop=True)):
        raise InputError(audio_store, "per-clip index differs from the corpus frames (re-run audio_features)")


@dataclass
class ClipBank:
    """Clips held in memory: faces [F,96,96,3] uint8 BGR and mel [F,80,16] float32, concatenated by clip."""

    clip_ids: list[str]
    starts: np.ndarray  # row of each clip's first frame in `faces` / `mel`
    lengths: np.ndarray
    faces: np.ndarray
    mel: np.ndarray
    set_sizes: tuple[int, ...] = ()  # clips of each set `concat` joined, in order (empty: one set)

    @property
    def first_set_clips(self) -> int:
        """How many leading clips came from the first set (all of them for a one-set bank)."""
        return self.set_sizes[0] if self.set_sizes else len(self.clip_ids)

    @classmethod
    def load(cls, corpus_dir: Path, audio_store: Path, clips: pd.DataFrame, size: int = FACE_SIZE) -> ClipBank:
        if clips.empty:
            raise InputError(Path(corpus_dir) / "manifest.parquet", "no clips to load (check the split)")
        check_aligned(corpus_dir, audio_store)
        frames = open_store(Path(corpus_dir) / "frames.zarr")["frames"]
        mel = open_store(audio_store)["mel"]
        face_blocks, mel_blocks = [], []
        for row in clips.itertuples():
            face_blocks.append(faces_bgr(frames[int(row.start):int(row.stop)], size))
            mel_blocks.append(np.asarray(mel[int(row.start):int(row.stop)], dtype=np.float32))
        lengths = np.array([len(b) for b in face_blocks], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        return cls(list(clips.clip_id), starts, lengths, np.concatenate(face_blocks), np.concatenate(mel_blocks))

    @classmethod
    def concat(cls, banks: list[ClipBank]) -> ClipBank:
        """One bank holding the clips of several (a corpus and the wide set: clip ids never collide)."""
        if len(banks) == 1:
            return banks[0]
        lengths = np.concatenate([b.lengths for b in banks])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        return cls([c for b in banks for c in b.clip_ids], starts, lengths,
                   np.concatenate([b.faces for b in banks]), np.concatenate([b.mel for b in banks]),
                   tuple(len(b.clip_ids) for b in banks))

    def clip(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        s, n = int(self.starts[index]), int(self.lengths[index])
        return self.faces[s:s + n], self.mel[s:s + n]

    def window_rows(self, clip: np.ndarray, first: np.ndarray) -> np.ndarray:
        """[B,5] absolute rows of the 5-frame windows starting at clip-relative frame `first`."""
        return (self.starts[clip] + first)[:, None] + np.arange(WINDOW)[None, :]


def training_bank(sources: list[tuple[Path, Path]], min_frames: int) -> ClipBank:
    """The training clips (real, >= min_frames) of every (corpus folder, audio store) source, in one bank."""
    return ClipBank.concat([ClipBank.load(corpus, audio, real_clips(read_manifest(corpus), "train", min_frames))
                            for corpus, audio in sources])


def faces_tensor(faces: np.ndarray) -> torch.Tensor:
    """uint8 BGR [...,H,W,3] -> float [...,3,H,W] in [0,1] (channel axis moved before H)."""
    x = torch.from_numpy(np.ascontiguousarray(faces)).float().div_(255.0)
    return x.movedim(-1, -3)


def sample_expert_batch(bank: ClipBank, rng: np.random.Generator, batch: int, min_shift: int = 1
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Half in sync, half off: (mel [B,1,80,16], faces [B,15,48,96], label [B] float).

    A window of 5 frames f..f+4 of a random clip is paired with the mel window of frame f (in sync) or
    of another frame g of the same clip with |g - f| >= min_shift (off sync), as Wav2Lip's expert trains.
    """
    clip = rng.integers(len(bank.clip_ids), size=batch)
    span = bank.lengths[clip] - WINDOW + 1
    first = (rng.random(batch) * span).astype(np.int64)
    label = (np.arange(batch) % 2 == 0).astype(np.float32)
    audio_first = first.copy()
    for b in np.flatnonzero(label == 0):
        audio_first[b] = _other_start(rng, int(first[b]), int(span[b]), min_shift)
    mel = torch.from_numpy(bank.mel[bank.starts[clip] + audio_first]).unsqueeze(1)
    return mel, _lower_windows(bank, clip, first), torch.from_numpy(label)


def sample_expert_blocks(bank: ClipBank, rng: np.random.Generator, clips: int, windows: int,
                         pool: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`windows` random 5-frame windows from each of `clips` random clips, each with its own (in-sync) mel
    window: (mel [C*W,1,80,16], faces [C*W,15,48,96], first frames [C,W]). Pairing window i's faces with
    window j's audio (same clip) gives Wav2Lip's off-sync examples without another forward pass.
    `pool`: draw from the bank's first `pool` clips only (the first training set)."""
    clip = np.repeat(rng.integers(pool or len(bank.clip_ids), size=clips), windows)
    span = bank.lengths[clip] - WINDOW + 1
    first = (rng.random(clips * windows) * span).astype(np.int64)
    mel = torch.from_numpy(bank.mel[bank.starts[clip] + first]).unsqueeze(1)
    return mel, _lower_windows(bank, clip, first), torch.from_numpy(first).view(clips, windows)


def _lower_windows(bank: ClipBank, clip: np.ndarray, first: np.ndarray) -> torch.Tensor:
    """Expert face input [B,15,H/2,W] in [0,1] for windows `first..first+4` of `clip`."""
    lower = bank.faces[bank.window_rows(clip, first)][:, :, bank.faces.shape[1] // 2:]  # [B,5,H/2,W,3]
    b, _, h, w, _ = lower.shape
    faces = torch.from_numpy(np.ascontiguousarray(lower.transpose(0, 1, 4, 2, 3))).reshape(b, 3 * WINDOW, h, w)
    return faces.float().div_(255.0)


def _other_start(rng: np.random.Generator, first: int, span: int, min_shift: int) -> int:
    """A window start in [0, span) at least `min_shift` away from `first` (clips hold >= 2 windows)."""
    choices = np.flatnonzero(np.abs(np.arange(span) - first) >= min_shift)
    if choices.size == 0:  # a clip too short for the shift: take the farthest start
        return 0 if first >= span / 2 else span - 1
    return int(rng.choice(choices))


def sample_generator_batch(bank: ClipBank, rng: np.random.Generator, batch: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Wav2Lip training windows: (mel [B,5,1,80,16], face input [B,6,5,96,96], target [B,3,5,96,96],
    expert mel [B,1,80,16]).

    Target: 5 consecutive frames; reference: 5 consecutive frames of another window of the same clip
    (the official `wrong_window`), so the mouth must come from the audio, not from the reference.
    """
    clip = rng.integers(len(bank.clip_ids), size=batch)
    span = bank.lengths[clip] - WINDOW + 1
    first = (rng.random(batch) * span).astype(np.int64)
    ref_first = np.array([_other_start(rng, int(f), int(s), 1) for f, s in zip(first, span)], dtype=np.int64)
    target = faces_tensor(bank.faces[bank.window_rows(clip, first)]).transpose(1, 2)  # [B,3,5,H,W]
    reference = faces_tensor(bank.faces[bank.window_rows(clip, ref_first)]).transpose(1, 2)
    masked = target.clone()
    masked[:, :, :, target.shape[3] // 2:] = 0.0
    mel_rows = bank.window_rows(clip, first)
    mel = torch.from_numpy(bank.mel[mel_rows]).unsqueeze(2)  # [B,5,1,80,16]
    return mel, torch.cat([masked, reference], dim=1), target, mel[:, 0]
