"""EVP's emotion-disentanglement losses (Ji et al., CVPR 2021, §3.1), as EMMN §3.3 takes them over.

Notation: x_{i,m} is audio with content i (a sentence, frame by frame) and emotion m. Four clips form a
training quad: x_{i,m}, x_{i,n} (same sentence and actor, another emotion, DTW-aligned to x_{i,m}) and
x_{j,n}, x_{j,m} (another sentence, the same two emotions, aligned to each other). E_c gives content per
frame, E_e one emotion embedding per utterance, D decodes (content, emotion) back to MFCC windows.
EVP writes the reconstruction terms as norms; its released trainer uses the mean L1 (`nn.L1Loss`) for
all of them, and so do these functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def self_reconstruction_loss(recon_im: torch.Tensor, x_im: torch.Tensor, recon_jn: torch.Tensor,
                             x_jn: torch.Tensor) -> torch.Tensor:
    """EVP's self-reconstruction:
    "L_self = ||D(E_c(x_{i,m}), E_e(x_{i,m})) - x_{i,m}|| + ||D(E_c(x_{j,n}), E_e(x_{j,n})) - x_{j,n}||",
    each term the mean absolute error over its windows."""
    return F.l1_loss(recon_im, x_im) + F.l1_loss(recon_jn, x_jn)


def cross_reconstruction_loss(recon_in: torch.Tensor, x_in: torch.Tensor, recon_jm: torch.Tensor,
                              x_jm: torch.Tensor) -> torch.Tensor:
    """EVP's cross-reconstruction:
    "L_cross = ||D(E_c(x_{i,m}), E_e(x_{j,n})) - x_{i,n}|| + ||D(E_c(x_{j,n}), E_e(x_{i,m})) - x_{j,m}||".

    The content of one sentence decoded with the emotion of the other must give the first sentence in the
    second emotion: e_c may not carry the emotion (the target has the other one) and e_e may not carry
    the words (it comes from another sentence). `x_in`, `x_jm` are the DTW-aligned targets."""
    return F.l1_loss(recon_in, x_in) + F.l1_loss(recon_jm, x_jm)


def content_consistency_loss(content_im: torch.Tensor, content_in: torch.Tensor) -> torch.Tensor:
    """EVP's content loss: "L_con = ||E_c(x_{i,m}) - E_c(x_{i,n})||_1" (mean over aligned frames and
    dimensions): the same sentence said with two emotions has the same content, frame by frame."""
    return F.l1_loss(content_im, content_in)


def emotion_classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """EVP's classification loss on the emotion embedding: "L_cla = -sum_k p_k log(q_k)", p the one-hot
    label, q = softmax(classifier(E_e(x))); cross-entropy averaged over the batch."""
    return F.cross_entropy(logits, labels)
