"""The Motion Reconstruction losses of paper §3.2, Eq. (1)-(5).

Notation: a quadruple (x^{i,a}, x^{j,b}, y^{i,b}, y^{j,a}) — real frames x with emotion i / j saying
sentence a / b, and pseudo labels y (Wav2Lip re-dubs: y^{i,b} keeps x^{i,a}'s expression and pose and
speaks sentence b). E_k is the FOMM keypoint detector (its output (p, j) is what the functions here
receive), f_e^i = E_e(E_k(x^{i,a})), f_m^a = E_m(E_k(x^{i,a})), f_e^j = E_e(E_k(x^{j,b})),
f_m^b = E_m(E_k(x^{j,b})).

Reductions (the paper writes ||.||_2 without saying how it is reduced):
* motion distance ||(p, j) - (p', j')||_2: per keypoint, the L2 norm of the 6-vector (value difference,
  jacobian_weight x Jacobian difference); mean over keypoints and over the batch (`motion_distance`).
* feature distance ||f - f'||_2: the L2 norm of the difference vector, mean over the batch
  (`feature_distance`).
A tiny epsilon inside the square root keeps the gradient finite at a zero difference.

Label weights: every term that involves a pseudo label y takes an optional per-sample weight (B,) of that
label; the term is then the weighted mean over the batch. Weight 0 drops a label that cannot be trusted
(a Wav2Lip re-dub the sync filter rejected), so it neither pulls the decoder nor the features; all-ones is the
plain mean of the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EPS = 1e-12  # inside every sqrt: a finite gradient at a zero difference, a 1e-6 offset at most
Motion = tuple[torch.Tensor, torch.Tensor]  # (value (B,N,2), jacobian (B,N,2,2))


def batch_mean(per_sample: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of (B,) values, or their `weight`-weighted mean (0 when every weight is 0)."""
    if weight is None:
        return per_sample.mean()
    weight = weight.to(per_sample.dtype)
    return (weight * per_sample).sum() / weight.sum().clamp_min(1e-12)


def motion_distance(prediction: Motion, target: Motion, jacobian_weight: float = 1.0,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over batch (optionally weighted per sample) and keypoints of sqrt(|dp_k|^2 + w^2 |dj_k|_F^2):
    the ||.||_2 of Eq. (1)-(2)."""
    dv = prediction[0] - target[0]
    dj = (prediction[1] - target[1]).flatten(2)
    squared = dv.pow(2).sum(-1) + (jacobian_weight ** 2) * dj.pow(2).sum(-1)
    return batch_mean(torch.sqrt(squared + EPS).mean(-1), weight)


def feature_distance(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch (optionally weighted per sample) of ||a - b||_2 (feature vectors (B, D)):
    the ||.||_2 of Eq. (3)-(4)."""
    return batch_mean(torch.sqrt((a - b).pow(2).sum(-1) + EPS), weight)


def cross_reconstruction_loss(pred_ib: Motion, y_ib: Motion, pred_ja: Motion, y_ja: Motion,
                              jacobian_weight: float = 1.0, weight_ib: torch.Tensor | None = None,
                              weight_ja: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (1) as printed:
    L_rec = ||D_{e,m}(f_e^i, f_m^a) - E_k(y^{i,b})||_2 + ||D_{e,m}(f_e^j, f_m^b) - E_k(y^{j,a})||_2.

    As printed it decodes the same pairs as Eq. (2); the text says the features "are crossly recombined"
    to reconstruct (p^{i,b}, j^{i,b}) and (p^{j,a}, j^{j,a}), so here `pred_ib` = D(f_e^i, f_m^b)
    (x^{i,a}'s expression, x^{j,b}'s mouth) against E_k(y^{i,b}), and `pred_ja` = D(f_e^j, f_m^a) against
    E_k(y^{j,a}) (each decoded with the actor's (p_neu, j_neu)). `weight_ib` / `weight_ja`: label weights (B,).
    """
    return (motion_distance(pred_ib, y_ib, jacobian_weight, weight_ib)
            + motion_distance(pred_ja, y_ja, jacobian_weight, weight_ja))


def self_reconstruction_loss(pred_ia: Motion, x_ia: Motion, pred_jb: Motion, x_jb: Motion,
                             jacobian_weight: float = 1.0) -> torch.Tensor:
    """Eq. (2): L_self = ||D_{e,m}(f_e^i, f_m^a) - E_k(x^{i,a})||_2 + ||D_{e,m}(f_e^j, f_m^b) - E_k(x^{j,b})||_2."""
    return (motion_distance(pred_ia, x_ia, jacobian_weight)
            + motion_distance(pred_jb, x_jb, jacobian_weight))


def expression_consistency_loss(fe_x_ia: torch.Tensor, fe_y_ib: torch.Tensor, fe_x_jb: torch.Tensor,
                                fe_y_ja: torch.Tensor, weight_ib: torch.Tensor | None = None,
                                weight_ja: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (3) as printed:
    L_e-con = ||E_e(E_k(x^{i,a})) - E_e(E_k(y^{i,b}))||_2 + ||E_e(E_k(x^{j,a})) - E_e(E_k(y^{j,b}))||_2.

    Its second term names x^{j,a} and y^{j,b}, frames that are not in the quadruple
    (x^{i,a}, x^{j,b}, y^{i,b}, y^{j,a}). The consistent reading, used here: each real frame against the
    pseudo label that keeps its expression (emotion i / j) but says the other sentence,
    L_e-con = ||E_e(E_k(x^{i,a})) - E_e(E_k(y^{i,b}))||_2 + ||E_e(E_k(x^{j,b})) - E_e(E_k(y^{j,a}))||_2.
    `weight_ib` / `weight_ja`: label weights (B,) of y^{i,b} / y^{j,a}.
    """
    return feature_distance(fe_x_ia, fe_y_ib, weight_ib) + feature_distance(fe_x_jb, fe_y_ja, weight_ja)


def mouth_consistency_loss(fm_x_ia: torch.Tensor, fm_y_ja: torch.Tensor, fm_x_jb: torch.Tensor,
                           fm_y_ib: torch.Tensor, weight_ja: torch.Tensor | None = None,
                           weight_ib: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (4): L_m-con = ||E_m(E_k(x^{i,a})) - E_m(E_k(y^{j,a}))||_2 + ||E_m(E_k(x^{j,b})) - E_m(E_k(y^{i,b}))||_2.

    A real frame and the pseudo label that says the same sentence (a / b) with the other expression.
    `weight_ja` / `weight_ib`: label weights (B,) of y^{j,a} / y^{i,b}.
    """
    return feature_distance(fm_x_ia, fm_y_ja, weight_ja) + feature_distance(fm_x_jb, fm_y_ib, weight_ib)


def actor_centering_loss(features: torch.Tensor, actor: torch.Tensor) -> torch.Tensor:
    """Share of the variance of features (B, D) that lies between actors (rows of actors (B,)); not in the paper:
    sum_k n_k / B * ||mean_k - mean||^2 / (mean over rows of ||f - mean||^2).

    Why: trained on 8 actors, E_m spent f_m on WHO speaks (training actors' f_m sat in 8 tight clusters, 0.09 apart
    within an actor, 2.7 between), a code no unseen face or voice can be mapped into; Audio2Mouth then had to
    guess the cluster. With the share pushed down, f_m keeps what changes within an actor: the mouth's motion (the
    input is already relative to the actor's neutral keypoints). A share, not the variance itself, so the features'
    scale cannot meet it."""
    ids, inverse = torch.unique(actor, return_inverse=True)
    counts = torch.zeros(len(ids), dtype=features.dtype, device=features.device).index_add_(
        0, inverse, torch.ones_like(inverse, dtype=features.dtype))
    sums = torch.zeros(len(ids), features.shape[1], dtype=features.dtype, device=features.device).index_add_(
        0, inverse, features)
    overall = features.mean(0)
    between = ((counts / len(features)) * (sums / counts[:, None] - overall).pow(2).sum(-1)).sum()
    return between / (features - overall).pow(2).sum(-1).mean().clamp_min(1e-12)


@dataclass(frozen=True)
class DisentanglementWeights:
    """Weights of Eq. (5); the paper's L_dis has 1 for L_rec and L_self. 0 switches a term off (ablations)."""

    rec: float = 1.0
    self_rec: float = 1.0
    e_con: float = 1.0  # lambda_e-con
    m_con: float = 1.0  # lambda_m-con


def disentanglement_loss(l_rec: torch.Tensor, l_self: torch.Tensor, l_e_con: torch.Tensor, l_m_con: torch.Tensor,
                         weights: DisentanglementWeights) -> torch.Tensor:
    """Eq. (5): L_dis = L_rec + L_self + lambda_e-con L_e-con + lambda_m-con L_m-con
    (with `weights.rec` / `weights.self_rec` = 0 for the "w/o L_rec" / "w/o L_self" ablations)."""
    return weights.rec * l_rec + weights.self_rec * l_self + weights.e_con * l_e_con + weights.m_con * l_m_con


__all__ = ["DisentanglementWeights", "actor_centering_loss", "batch_mean", "cross_reconstruction_loss",
           "disentanglement_loss", "expression_consistency_loss", "feature_distance", "motion_distance",
           "mouth_consistency_loss", "self_reconstruction_loss"]
