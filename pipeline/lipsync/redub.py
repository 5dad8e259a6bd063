"""Wav2Lip inference on corpus faces: re-dub a clip with other audio, and paste the result back.

Inference as the official `inference.py` does it: every output frame t gets mel window t (start column
int(t*80/fps)); the face input is the source frame with its lower half masked plus the same frame
unmasked as the reference; the sigmoid output x255 is truncated to uint8. When the audio is longer
than the source video, the source frames repeat: `loop` (official: frame t % T) or `pingpong`
(0,1,..,T-1,T-2,..,1,0,1,..: no jump in head pose at the seam).
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.core.errors import InputError
from pipeline.core.media import FACE_SIZE
from pipeline.lipsync.data import bgr_to_rgb
from pipeline.models.wav2lip import Wav2Lip, wav2lip_face_input

EXTENSIONS = ("pingpong", "loop")
PASTE_MODES = ("lower", "full")


def source_frame_indices(n_source: int, n_out: int, mode: str = "pingpong") -> np.ndarray:
    """Which source frame each of `n_out` output frames shows (identity while t < n_source)."""
    if mode not in EXTENSIONS:
        raise InputError("params.yaml", f"frame extension must be one of {EXTENSIONS}, not '{mode}'")
    if n_source < 1:
        raise InputError(None, "source clip has no frames")
    t = np.arange(n_out)
    if mode == "loop" or n_source == 1:
        return t % n_source
    period = 2 * n_source - 2
    phase = t % period
    return np.where(phase < n_source, phase, period - phase)


@torch.inference_mode()
def generate_faces(generator: Wav2Lip, targets_bgr: np.ndarray, references_bgr: np.ndarray, mel_windows: np.ndarray,
                   batch_size: int = 32, bf16: bool = False) -> np.ndarray:
    """uint8 BGR faces [T,96,96,3] (lower half regenerated) from targets, references and mel [T,80,16].
    `bf16`: autocast the convs (CPU: about twice as fast; the default run trains Wav2Lip so)."""
    if not len(targets_bgr) == len(references_bgr) == len(mel_windows):
        raise InputError(None, f"targets {len(targets_bgr)}, references {len(references_bgr)} and mel windows "
                               f"{len(mel_windows)} differ in length")
    generator.eval()
    out = []
    for start in range(0, len(targets_bgr), batch_size):
        stop = start + batch_size
        face = torch.from_numpy(wav2lip_face_input(targets_bgr[start:stop], references_bgr[start:stop]))
        mel = torch.from_numpy(np.ascontiguousarray(mel_windows[start:stop], dtype=np.float32)).unsqueeze(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = generator(mel, face)
        pred = pred.float().permute(0, 2, 3, 1).numpy() * 255.0
        out.append(pred.astype(np.uint8))  # truncation, as the official code
    return np.concatenate(out) if out else np.zeros((0, FACE_SIZE, FACE_SIZE, 3), np.uint8)


def redub_faces(generator: Wav2Lip, source_bgr: np.ndarray, mel_windows: np.ndarray, mode: str = "pingpong",
                batch_size: int = 32, bf16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Re-dub source faces [T_a,96,96,3] to audio windows [T_b,80,16]: (faces [T_b,...], source indices)."""
    idx = source_frame_indices(len(source_bgr), len(mel_windows), mode)
    faces = source_bgr[idx]
    return generate_faces(generator, faces, faces, mel_windows, batch_size, bf16), idx


def paste_faces(frames_rgb: np.ndarray, generated_bgr: np.ndarray, mode: str = "lower") -> np.ndarray:
    """Put generated faces back into the (face-crop) frames, at the frames' size, RGB uint8.

    `full`: the whole generated face replaces the frame (the official paste into the detector box).
    `lower`: only the lower half, the part the generator was asked to change, blended over a band of
    size/8 rows around the middle so no seam shows; the upper half keeps its original sharpness.
    """
    if mode not in PASTE_MODES:
        raise InputError("params.yaml", f"paste must be one of {PASTE_MODES}, not '{mode}'")
    size = frames_rgb.shape[1]
    pasted = bgr_to_rgb(generated_bgr, size)
    if mode == "full":
        return pasted
    band = max(1, size // 16)
    rows = np.arange(size, dtype=np.float32)
    weight = np.clip((rows - (size / 2 - band)) / (2 * band), 0.0, 1.0)[None, :, None, None]
    blended = frames_rgb.astype(np.float32) * (1.0 - weight) + pasted.astype(np.float32) * weight
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
