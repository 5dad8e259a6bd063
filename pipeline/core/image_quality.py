"""PSNR, the one implementation every report uses (evaluate's Table 1, table2, the FOMM report, finetune_render's
held-out PSNR, the Wav2Lip report).

The standard protocol (skimage's `peak_signal_noise_ratio` called frame by frame, as EAT's evaluation does): PSNR
is computed per image, 10 log10(data_range^2 / MSE) with the MSE over every pixel and channel of that image, and a
set of frames is reported as the mean of those per-frame values (not as one PSNR of the pooled MSE).

SSIM is not here: evaluation.metrics.ssim (NumPy float64, (T,H,W,3) uint8 frames, the Table 1 protocol) and
fomm.report.ssim (torch float32, [B,C,H,W] in [0, 1], the window shrunk for tiny images) differ in layout,
precision and edge rule, so one of them would change its report's numbers if merged.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np


def psnr(generated: Any, truth: Any, data_range: float, *, mse_floor: float = 0.0) -> Any:
    """Per-image PSNR in dB of two equally shaped stacks of images; the first axis indexes the images (any layout
    after it: (N,H,W,C) frames, [N,C,H,W] tensors). Average the result for a set of frames (module doc).

    `data_range`: the images' peak-to-peak range (255 for uint8 frames, 1.0 for images in [0, 1]).
    NumPy arrays are compared in float64 and give an (N,) float64 array; torch tensors stay on their device, are
    compared in float32 and give an (N,) float32 tensor (fast on training-report batches). Identical images give
    inf unless `mse_floor` > 0: an MSE below it counts as `mse_floor` (caps the dB of near-identical images).
    """
    if tuple(generated.shape) != tuple(truth.shape) or len(generated.shape) < 2:
        raise ValueError(f"need two stacks of images of one shape, got {tuple(generated.shape)} and "
                         f"{tuple(truth.shape)}")
    torch = sys.modules.get("torch")  # a tensor means torch is imported; numpy callers do not pay for it
    if torch is not None and isinstance(generated, torch.Tensor):
        mse = ((generated.float() - truth.float()) ** 2).flatten(1).mean(dim=1)
        return 10 * torch.log10(data_range ** 2 / mse.clamp_min(mse_floor))
    diff = np.asarray(generated).astype(np.float64) - np.asarray(truth).astype(np.float64)
    mse = (diff ** 2).reshape(len(diff), -1).mean(axis=1)
    if mse_floor > 0:
        mse = np.maximum(mse, mse_floor)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range ** 2 / mse)
