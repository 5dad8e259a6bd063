"""Motion Memory-Net (paper §3.4) and the stage-1 losses (Eq. 6-14).

Two memories of S slots each (one learnable tensor per memory):
* M_exp (S, value_dim): slot i holds an expression motion feature m_exp^i. It is addressed by the ground-truth
  f_e during training (Eq. 7) and read out as f~_e (Eq. 8); L_exp-mem (Eq. 9) pulls the read-out onto f_e.
* M_em (S, key_dim): slot i holds an emo-mouth key m_em^i. It is addressed by the query f^_m ⊕ e_e (Eq. 10), and
  L_align (Eq. 11) makes that address point at the same slots as f_e's address, so that at inference, where f_e
  is unknown, Omega_em reads M_exp (Eq. 12): the key-value lookup "emo-mouth -> expression".

Addressing is a softmax over cosine similarities divided by a temperature tau (tau = 1 is the paper's formula as
printed). Why a temperature: a cosine lies in [-1, 1], so softmax of raw cosines over S slots gives weights whose
ratio is at most e^2 ≈ 7.4: with S = 64 even a perfectly matching slot (cos 1) against orthogonal ones (cos 0)
gets only e / (e + 63) ≈ 4% of the weight, the read-out is close to the mean of all slots and no slot can
specialise. Dividing by tau = 0.1 lets one slot take ≈ 100% (e^10 / (e^10 + 63) ≈ 99.7%).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

_EPS = 1e-8


# ------------------------------------------------------------------------------------------ addressing


def cosine_to_slots(query: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """cos(query, m^i) for every slot: query (..., D), slots (S, D) -> (..., S) in [-1, 1]."""
    q = query / query.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    m = slots / slots.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    return q @ m.T


def slot_log_address(query: torch.Tensor, slots: torch.Tensor, temperature: float) -> torch.Tensor:
    """log of the slot weights of Eq. 7 / Eq. 10 (log-softmax: what the KL of Eq. 11 needs, without log(0))."""
    return F.log_softmax(cosine_to_slots(query, slots) / temperature, dim=-1)


def slot_address(query: torch.Tensor, slots: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 7 (query f_e, slots M_exp) and Eq. 10 (query f^_m ⊕ e_e, slots M_em), with a temperature tau:

        alpha^i = Phi( (q · m^i) / (||q||_2 ||m^i||_2) / tau ),   Phi = softmax over the S slots.

    query (..., D), slots (S, D) -> Omega (..., S), each row summing to 1. tau = 1 is the printed formula; see
    the module docstring for why it needs tau < 1.
    """
    return slot_log_address(query, slots, temperature).exp()


def emo_mouth_query(mouth: torch.Tensor, emotion: torch.Tensor, balance: bool = True) -> torch.Tensor:
    """The query of Eq. 10, f^_m ⊕ e_e (⊕ = concatenation on the last axis).

    mouth (..., M), emotion (..., E) broadcastable on the leading axes. With `balance`, each part is scaled to unit
    L2 norm before concatenating: the cosine of Eq. 10 then weighs mouth and emotion equally instead of letting
    the part with the larger norm decide the address alone (the paper leaves the scales to training).
    """
    if balance:
        mouth = mouth / mouth.norm(dim=-1, keepdim=True).clamp_min(_EPS)
        emotion = emotion / emotion.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    lead = torch.broadcast_shapes(mouth.shape[:-1], emotion.shape[:-1])
    return torch.cat([mouth.expand(*lead, mouth.shape[-1]), emotion.expand(*lead, emotion.shape[-1])], dim=-1)


def read_memory(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Eq. 8 (f~_e = sum_i alpha_exp^i m_exp^i) and Eq. 12 (f^_e;em = sum_i alpha_em^i m_exp^i).

    weights (..., S), values (S, D) -> (..., D).
    """
    return weights @ values


# ---------------------------------------------------------------------------------------------- losses


def a2m_loss(f_m: torch.Tensor, f_m_hat: torch.Tensor) -> torch.Tensor:
    """Eq. 6, L_a2m = 1/T sum_t || f_m^(t) - f^_m^(t) ||_2.

    The L2 norm (not squared) of each frame's mouth-feature error, averaged over the frames (and the batch).
    f_m, f_m_hat (..., M).
    """
    return (f_m - f_m_hat).norm(dim=-1).mean()


def exp_memory_loss(f_e: torch.Tensor, f_e_tilde: torch.Tensor) -> torch.Tensor:
    """Eq. 9, L_exp-mem = || f_e - f~_e ||: the L2 norm per frame, averaged over frames. f_e, f_e_tilde (..., D)."""
    return (f_e - f_e_tilde).norm(dim=-1).mean()


def align_loss(log_omega_em: torch.Tensor, log_omega_exp: torch.Tensor) -> torch.Tensor:
    """Eq. 11, L_align = KL(Omega_em || Omega_exp) = sum_i alpha_em^i (log alpha_em^i - log alpha_exp^i).

    Direction exactly as printed: the expectation is under Omega_em (the audio-side address), so the loss is
    large wherever the emo-mouth query puts weight on a slot that f_e's address does not; it is zero only when
    the two addresses agree. (torch's F.kl_div(input, target) computes KL(target || input), the other
    direction, which is why this is written out.)

    Gradients: only the Omega_em side gets them. Omega_exp is the target (detached here): it comes from the
    ground-truth f_e and is shaped by L_exp-mem, and letting the KL pull it toward the audio-predicted address
    would degrade the very address M_em has to learn. Inputs are log-weights (..., S); the result is the mean
    over frames.
    """
    log_omega_exp = log_omega_exp.detach()
    return (log_omega_em.exp() * (log_omega_em - log_omega_exp)).sum(dim=-1).mean()


def keypoint_loss(value: torch.Tensor, value_hat: torch.Tensor, jacobian: torch.Tensor,
                  jacobian_hat: torch.Tensor) -> torch.Tensor:
    """Eq. 13, L_p,j = 1/T sum_t ( ||p^(t) - p^^(t)||_1 + ||j^(t) - j^^(t)||_1 ).

    The L1 norm of each frame's whole keypoint array (sum over the N keypoints and their coordinates) plus that of
    its Jacobians, averaged over frames (and the batch). value (..., N, 2), jacobian (..., N, 2, 2).
    """
    p = (value - value_hat).abs().flatten(-2).sum(-1)
    j = (jacobian - jacobian_hat).abs().flatten(-3).sum(-1)
    return (p + j).mean()


def expression_residual_loss(f_e: torch.Tensor, read: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
    """Not in the paper: the loss of D_t (`EmmnConfig.temporal_expression`), 1/T sum_t || f_e - f^_e ||_2 with
    f^_e = read + D_t and the memory's read detached, so only D_t learns from it (the memory keeps Eq. 7-12).
    Same form as Eq. 9. f_e, read, expression (..., D)."""
    return (f_e - (expression - read + read.detach())).norm(dim=-1).mean()


STAGE1_TERMS = ("a2m", "exp_mem", "align", "pj", "expression")


def stage1_loss(terms: Mapping[str, torch.Tensor], lambda_exp_mem: float, lambda_align: float,
                lambda_pj: float, lambda_expression: float = 1.0) -> torch.Tensor:
    """Eq. 14, L_stage1 = L_a2m + lambda_exp-mem L_exp-mem + lambda_align L_align + lambda_p,j L_p,j
    (+ lambda_expression L_expression, D_t's `expression_residual_loss`, our addition).

    `terms` maps a2m, exp_mem, align, pj (, expression) to the unweighted losses; a term an ablation has no use for
    (e.g. L_a2m without motion decomposition) may be missing and counts as zero.
    """
    unknown = set(terms) - set(STAGE1_TERMS)
    if unknown:
        raise ValueError(f"unknown stage-1 loss terms {sorted(unknown)}")
    weights = {"a2m": 1.0, "exp_mem": lambda_exp_mem, "align": lambda_align, "pj": lambda_pj,
               "expression": lambda_expression}
    total = None
    for name, value in terms.items():
        total = weights[name] * value if total is None else total + weights[name] * value
    if total is None:
        raise ValueError("no stage-1 loss terms given")
    return total


# ---------------------------------------------------------------------------------------------- module


class MotionMemory(nn.Module):
    """M_exp (S, value_dim) and M_em (S, key_dim), addressed with cosine softmax at `temperature`."""

    def __init__(self, slots: int, value_dim: int, key_dim: int, temperature: float):
        super().__init__()
        if slots < 1 or temperature <= 0:
            raise ValueError(f"need slots >= 1 and temperature > 0, got {slots}, {temperature}")
        self.temperature = float(temperature)
        self.expression = nn.Parameter(torch.randn(slots, value_dim))  # M_exp
        self.emo_mouth = nn.Parameter(torch.randn(slots, key_dim))  # M_em

    @property
    def slots(self) -> int:
        return self.expression.shape[0]

    @torch.no_grad()
    def init_expression(self, values: torch.Tensor) -> None:
        """Start M_exp from S real expression features (data-dependent init: every slot starts in the region f_e
        occupies, so every slot is somebody's nearest slot from step 0 instead of dying unused)."""
        if values.shape != self.expression.shape:
            raise ValueError(f"init values {tuple(values.shape)} != M_exp {tuple(self.expression.shape)}")
        self.expression.copy_(values)

    def log_address_expression(self, f_e: torch.Tensor) -> torch.Tensor:
        """log Omega_exp (Eq. 7) for queries f_e (..., value_dim)."""
        return slot_log_address(f_e, self.expression, self.temperature)

    def log_address_emo_mouth(self, query: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """log Omega_em (Eq. 10) for emo-mouth queries (..., key_dim), at `temperature` (None = the training tau)."""
        return slot_log_address(query, self.emo_mouth, self.temperature if temperature is None else temperature)

    def read(self, weights: torch.Tensor) -> torch.Tensor:
        """Eq. 8 / Eq. 12: a weighted sum of the M_exp slots."""
        return read_memory(weights, self.expression)


__all__ = [
    "MotionMemory", "STAGE1_TERMS", "a2m_loss", "align_loss", "cosine_to_slots", "emo_mouth_query",
    "exp_memory_loss", "expression_residual_loss", "keypoint_loss", "read_memory", "slot_address", "slot_log_address", "stage1_loss",
]
