"""Suppression losses (DESIGN §1). Each is minimised by the protected model on restricted data.

Classification losses take logits of shape (N, C) and take C from them; diffusion losses take the
predicted noise (and the true noise). All return a scalar mean over the batch.
"""

import math

import torch
import torch.nn.functional as F


def inverse_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """ICE, the paper's form: mean of -log(1 - p_y). Small when the true class is *unlikely*.

    log(1 - p_y) = logsumexp_{j != y} z_j - logsumexp_j z_j, which never forms 1 - p_y and so
    stays finite when p_y rounds to 1.
    """
    logits = logits.float()
    true_class = F.one_hot(targets, logits.shape[-1]).bool()
    others = logits.masked_fill(true_class, float("-inf"))
    log_one_minus_p = torch.logsumexp(others, dim=-1) - torch.logsumexp(logits, dim=-1)
    return -log_one_minus_p.mean()


def negated_logit_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """ICE as the released code computes it: cross-entropy of the negated logits.

    (`CE(1 - z, y)` there; the constant 1 cancels inside the softmax.) It rewards a *low* logit for
    the true class, which is not the same objective as -log(1 - p_y).
    """
    return F.cross_entropy(-logits.float(), targets)


def kl_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KLU: KL(U || p) with U uniform over the C classes of the logits.

    KL(U || p) = sum_c (1/C) (log(1/C) - log p_c) = -log C - mean_c log p_c.
    """
    log_p = F.log_softmax(logits.float(), dim=-1)
    num_classes = logits.shape[-1]
    return (-math.log(num_classes) - log_p.mean(dim=-1)).mean()


def denial_of_service(pred_noise: torch.Tensor) -> torch.Tensor:
    """DoS: mean of the squared predicted noise, driving the denoiser to predict zero.

    Averaged over elements (not summed per image) so it is on the same scale as the denoising MSE.
    """
    return pred_noise.float().pow(2).mean()


def mse_ascent(pred_noise: torch.Tensor, noise: torch.Tensor, clamp: float | None = None) -> torch.Tensor:
    """Negated denoising MSE (released code). Unbounded below; `clamp` caps the MSE being ascended."""
    mse = F.mse_loss(pred_noise.float(), noise.float())
    if clamp is not None:
        mse = torch.clamp(mse, max=clamp)
    return -mse


CLASSIFICATION_LOSSES = {
    "ice": inverse_cross_entropy,
    "ice-released": negated_logit_cross_entropy,
    "klu": lambda logits, targets: kl_uniform(logits),
}
