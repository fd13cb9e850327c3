"""BGAN loss terms (Eq. 10-14) and the quantisation term of the authors' code, as small functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def neighborhood_loss(codes: torch.Tensor, similarity: torch.Tensor, balance_pairs: bool = False) -> torch.Tensor:
    """Eq. 10: 1/2 * mean over the pairs i != j of the batch of (b_i^T b_j / L - s_ij)^2.

    `codes` (B, L) relaxed codes; `similarity` (B, B) with +1 / -1 entries. The sum of Eq. 10 is
    divided by the number of pairs so the scale does not depend on the batch size. With
    `balance_pairs`, positive and negative pairs each carry half of the weight.
    """
    n, n_bits = codes.shape
    inner = codes @ codes.T / n_bits
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=codes.device)
    squared = (inner - similarity)[off_diagonal] ** 2
    if not balance_pairs:
        return 0.5 * squared.mean()
    positive = similarity[off_diagonal] > 0
    weights = torch.empty_like(squared)
    n_positive = int(positive.sum())
    n_negative = positive.numel() - n_positive
    if n_positive == 0 or n_negative == 0:
        return 0.5 * squared.mean()
    weights[positive] = 0.5 / n_positive
    weights[~positive] = 0.5 / n_negative
    return 0.5 * (weights * squared).sum()


def bit_spread_loss(codes: torch.Tensor) -> torch.Tensor:
    """Balanced, uncorrelated bits: mean over bits of mean(b_k)^2 plus mean over bit pairs k != l of
    (b_k^T b_l / B)^2. Both are 0 when every bit splits the batch in half independently of the others,
    which no code that puts a whole pseudo-class on one vertex can do."""
    n, n_bits = codes.shape
    balance = codes.mean(dim=0).pow(2).mean()
    if n_bits < 2:
        return balance
    moments = codes.T @ codes / n
    off_diagonal = ~torch.eye(n_bits, dtype=torch.bool, device=codes.device)
    return balance + moments[off_diagonal].pow(2).mean()


def content_loss(real: torch.Tensor, fake: torch.Tensor, phi_real: torch.Tensor | None = None,
                 phi_fake: torch.Tensor | None = None, perceptual_weight: float = 1.0,
                 relative_perceptual: bool = False) -> torch.Tensor:
    """Eq. 11-13: pixel MSE + perceptual MSE between the discriminator's last-convolution maps.

    Pass `phi_real` already detached: it is a target, and the discriminator does not descend this loss.
    `relative_perceptual` divides the perceptual MSE by the mean square of `phi_real`, so the term keeps
    its scale while the discriminator's features grow (LossConfig.relative_perceptual).
    """
    loss = F.mse_loss(fake, real)
    if phi_real is not None and phi_fake is not None and perceptual_weight > 0:
        perceptual = F.mse_loss(phi_fake, phi_real)
        if relative_perceptual:
            perceptual = perceptual / phi_real.pow(2).mean().clamp_min(1e-12)
        loss = loss + perceptual_weight * perceptual
    return loss


def adversarial_objective(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 14 averaged over the batch: mean(log D(I)) + mean(log(1 - D(I^R))), from logits."""
    return F.logsigmoid(real_logits).mean() + F.logsigmoid(-fake_logits).mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """What the discriminator descends: -Eq. 14, as binary cross-entropy on logits (stable)."""
    return F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + \
        F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's adversarial term in the non-saturating form -mean(log D(I^R)) (Goodfellow et
    al.): same fixed point as descending log(1 - D(I^R)), but useful gradients while D wins."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def quantization_loss(z: torch.Tensor) -> torch.Tensor:
    """mean((z - sgn z)^2) with sgn(0) = +1: keeps z near the cube's vertices (authors' code)."""
    return ((z - torch.where(z >= 0, 1.0, -1.0)) ** 2).mean()
