"""Motion Memory-Net equations (paper Eq. 6-14) on small cases computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.models.memory import (
    MotionMemory,
    a2m_loss,
    align_loss,
    cosine_to_slots,
    emo_mouth_query,
    exp_memory_loss,
    expression_residual_loss,
    keypoint_loss,
    read_memory,
    slot_address,
    slot_log_address,
    stage1_loss,
)


def test_cosine_to_slots_ignores_length():
    slots = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    cos = cosine_to_slots(torch.tensor([[5.0, 0.0]]), slots)
    assert torch.allclose(cos, torch.tensor([[1.0, 0.0, 1 / math.sqrt(2)]]))


def test_slot_address_eq7_eq10_with_temperature():
    slots = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    query = torch.tensor([1.0, 0.0])  # cosines (1, 0)
    e = math.e
    assert torch.allclose(slot_address(query, slots, 1.0), torch.tensor([e / (e + 1), 1 / (e + 1)]))  # 0.731, 0.269
    assert torch.allclose(slot_address(query, slots, 0.5), torch.tensor([e**2 / (e**2 + 1), 1 / (e**2 + 1)]))
    assert torch.allclose(slot_log_address(query, slots, 0.5).exp(), slot_address(query, slots, 0.5))


def test_temperature_is_what_lets_one_slot_win():
    """The docstring's numbers: S = 64, one slot with cos 1, 63 orthogonal ones."""
    slots = torch.eye(64)
    query = torch.eye(64)[0]
    assert slot_address(query, slots, 1.0)[0].item() == pytest.approx(math.e / (math.e + 63), abs=1e-6)  # 0.041
    assert slot_address(query, slots, 0.1)[0].item() == pytest.approx(math.exp(10) / (math.exp(10) + 63), abs=1e-6)


def test_read_memory_eq8_eq12():
    values = torch.tensor([[4.0, 0.0], [0.0, 8.0]])
    assert torch.allclose(read_memory(torch.tensor([0.25, 0.75]), values), torch.tensor([1.0, 6.0]))


def test_emo_mouth_query_concatenates_and_balances():
    mouth, emotion = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0])
    assert torch.equal(emo_mouth_query(mouth, emotion, balance=False), torch.tensor([3.0, 4.0, 0.0, 2.0]))
    assert torch.allclose(emo_mouth_query(mouth, emotion), torch.tensor([0.6, 0.8, 0.0, 1.0]))
    # one emotion embedding per clip broadcast over its frames
    q = emo_mouth_query(torch.ones(2, 5, 3), torch.ones(2, 1, 4))
    assert q.shape == (2, 5, 7)


def test_a2m_loss_eq6_is_the_mean_l2_norm():
    f_m = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    f_m_hat = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    assert a2m_loss(f_m, f_m_hat).item() == pytest.approx(2.5)  # (5 + 0) / 2


def test_exp_memory_loss_eq9():
    assert exp_memory_loss(torch.tensor([[1.0, 2.0, 2.0]]), torch.zeros(1, 3)).item() == pytest.approx(3.0)


def test_align_loss_eq11_direction_and_gradients():
    em = torch.tensor([0.5, 0.5]).log().requires_grad_()
    exp = torch.tensor([0.25, 0.75]).log().requires_grad_()
    loss = align_loss(em, exp)
    # KL(em || exp) = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.143841; KL(exp || em) would be 0.130812
    assert loss.item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-6)
    loss.backward()
    assert em.grad is not None and em.grad.abs().sum() > 0
    assert exp.grad is None  # the ground-truth address is the target, never pulled toward the audio side
    same = torch.tensor([[0.1, 0.9], [0.6, 0.4]]).log()
    assert align_loss(same, same).item() == pytest.approx(0.0, abs=1e-7)


def test_expression_residual_loss_trains_the_residual_only():
    """D_t's loss: || f_e - (read + D_t) ||_2 per frame, mean; the read gets no gradient from it."""
    f_e = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    read = torch.tensor([[0.0, 0.0], [1.0, 0.0]], requires_grad=True)
    residual = torch.tensor([[0.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss = expression_residual_loss(f_e, read, read + residual)
    assert loss.item() == pytest.approx(2.5)  # (5 + 0) / 2
    loss.backward()
    assert read.grad is None or read.grad.abs().sum() == 0
    assert residual.grad.abs().sum() > 0


def test_keypoint_loss_eq13_sums_l1_over_keypoints_and_averages_frames():
    value = torch.zeros(2, 1, 2)
    value_hat = torch.tensor([[[0.5, -0.25]], [[0.0, 0.0]]])
    jacobian = torch.eye(2).expand(2, 1, 2, 2)
    jacobian_hat = torch.stack([torch.tensor([[[1.0, 0.1], [0.0, 0.8]]]), torch.eye(2)[None]])
    # frame 1: 0.75 + 0.3; frame 2: 0
    assert keypoint_loss(value, value_hat, jacobian, jacobian_hat).item() == pytest.approx(0.525)


def test_stage1_loss_eq14_weights_and_missing_terms():
    terms = {"a2m": torch.tensor(1.0), "exp_mem": torch.tensor(2.0), "align": torch.tensor(3.0),
             "pj": torch.tensor(4.0)}
    assert stage1_loss(terms, 0.5, 0.1, 2.0).item() == pytest.approx(1 + 1 + 0.3 + 8)
    assert stage1_loss({"pj": torch.tensor(4.0)}, 0.5, 0.1, 2.0).item() == pytest.approx(8.0)  # the baseline
    with_expression = {**terms, "expression": torch.tensor(5.0)}
    assert stage1_loss(with_expression, 0.5, 0.1, 2.0, 0.2).item() == pytest.approx(1 + 1 + 0.3 + 8 + 1)
    with pytest.raises(ValueError, match="unknown"):
        stage1_loss({"l1": torch.tensor(1.0)}, 1, 1, 1)


def test_motion_memory_reads_the_matching_slot_when_sharp():
    torch.manual_seed(0)
    memory = MotionMemory(slots=3, value_dim=2, key_dim=4, temperature=0.01)
    memory.init_expression(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    log_w = memory.log_address_expression(torch.tensor([[0.0, 2.0]]))
    assert torch.allclose(memory.read(log_w.exp()), torch.tensor([[0.0, 1.0]]), atol=1e-4)
    assert memory.log_address_emo_mouth(torch.randn(5, 4)).exp().sum(-1).allclose(torch.ones(5))
    with pytest.raises(ValueError):
        MotionMemory(slots=3, value_dim=2, key_dim=4, temperature=0.0)


def test_temporal_motion_and_mouth_keypoints_hand_computed():
    """Two frames, four keypoints; the two lowest are the mouth. std is torch's (unbiased: |a - b| / sqrt 2)."""
    from pipeline.memory.train import mouth_keypoints, temporal_motion

    frames = torch.tensor([[[0, 0], [0, 0], [0, 1.0], [0, 1.0]],
                           [[0, 0.2], [0, 0.2], [0, 1.2], [0, 1.6]]])
    assert mouth_keypoints(frames[:1].numpy()) == (2, 3)
    lips, head = temporal_motion(frames, (2, 3))
    # centroid y: 0.5 -> 0.8, x still: head = (0 + 0.3 / sqrt 2) / 2
    assert head == pytest.approx(0.3 / math.sqrt(2) / 2, abs=1e-6)
    # relative to the centroid, keypoint 2's y: 0.5 -> 0.4, keypoint 3's: 0.5 -> 0.8
    assert lips == pytest.approx((0.1 + 0.3) / math.sqrt(2) / 4, abs=1e-6)
    assert temporal_motion(frames[[0, 0]], (2, 3)) == (0.0, 0.0)  # a still face
