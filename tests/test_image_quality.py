"""pipeline.core.image_quality.psnr, the one PSNR: hand-computed cases, NumPy and torch alike, per image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.core.image_quality import psnr


def two_pairs() -> tuple[np.ndarray, np.ndarray]:
    """Two 2x2 one-channel images per side: image 0 differs in one pixel by 10 (MSE 100/4 = 25), image 1 in every
    pixel by 255 (MSE 255^2)."""
    truth = np.zeros((2, 2, 2, 1), np.uint8)
    generated = truth.copy()
    generated[0, 0, 0, 0] = 10
    generated[1] = 255
    return generated, truth


def test_two_2x2_images_with_known_mse():
    generated, truth = two_pairs()
    values = psnr(generated, truth, data_range=255.0)
    assert values.shape == (2,) and values.dtype == np.float64
    assert values[0] == pytest.approx(10 * math.log10(255 ** 2 / 25), rel=1e-12)  # 34.1514 dB
    assert values[0] == pytest.approx(34.1514, abs=1e-4)
    assert values[1] == 0.0  # MSE = range^2


def test_per_image_values_not_one_pooled_mse():
    generated, truth = two_pairs()
    per_frame = psnr(generated, truth, data_range=255.0).mean()  # the protocol: mean of per-frame PSNR
    pooled = 10 * math.log10(255 ** 2 / ((25 + 255 ** 2) / 2))  # one PSNR over all pixels of both
    assert per_frame == pytest.approx((34.1514 + 0.0) / 2, abs=1e-4) and abs(per_frame - pooled) > 10


def test_torch_tensors_in_0_1_give_the_same_numbers_in_float32():
    generated, truth = two_pairs()
    values = psnr(torch.from_numpy(generated / 255.0), torch.from_numpy(truth / 255.0), data_range=1.0)
    assert isinstance(values, torch.Tensor) and values.dtype == torch.float32 and values.shape == (2,)
    np.testing.assert_allclose(values.numpy(), psnr(generated, truth, data_range=255.0), atol=1e-4)
    half = torch.zeros(1, 1, 2, 2)
    half[0, 0, 0, 0] = 0.5  # MSE 0.25 / 4 = 1/16
    assert float(psnr(half, torch.zeros(1, 1, 2, 2), data_range=1.0)[0]) == pytest.approx(10 * math.log10(16),
                                                                                           abs=1e-5)


def test_identical_images_give_inf_unless_an_mse_floor_caps_them():
    image = np.full((1, 2, 2, 3), 7, np.uint8)
    assert np.isinf(psnr(image, image, data_range=255.0)).all()
    assert psnr(image, image, data_range=255.0, mse_floor=255 ** 2 * 1e-10)[0] == pytest.approx(100.0)
    tensor = torch.full((1, 3, 2, 2), 0.5)
    assert torch.isinf(psnr(tensor, tensor, data_range=1.0)).all()
    assert float(psnr(tensor, tensor, data_range=1.0, mse_floor=1e-10)[0]) == pytest.approx(100.0, abs=1e-4)


def test_mismatched_stacks_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        psnr(np.zeros((2, 4, 4, 3)), np.zeros((1, 4, 4, 3)), data_range=255.0)
    with pytest.raises(ValueError, match="one shape"):
        psnr(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5), data_range=1.0)
