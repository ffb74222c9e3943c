"""Per-row weighted losses: the label loss and the distillation loss towards soft labels.

Every loss here reduces through ``weighted_mean``: a row of weight 0 (padding, a row without a soft
label) contributes nothing, not even a NaN, and a batch whose weights are all 0 gives a loss of 0.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def weighted_mean(values: Tensor, weight: Tensor | None = None) -> Tensor:
    """sum(w * values) / sum(w); 0 when the weights sum to 0. ``weight`` must have ``values``' shape."""
    if weight is None:
        return values.mean()
    if weight.shape != values.shape:
        raise ValueError(f"weight has shape {list(weight.shape)}, expected {list(values.shape)}")
    weight = weight.to(values.dtype)
    # where() rather than a product alone: 0 * inf or 0 * nan at a dropped row would be nan
    total = torch.where(weight != 0, values * weight, 0.0).sum()
    weight_sum = weight.sum()
    return total / torch.where(weight_sum != 0, weight_sum, 1.0)


def weighted_bce(logits: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
    """Binary cross-entropy with logits, reduced by ``weighted_mean``."""
    return weighted_mean(F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none"), weight)


def distillation_loss(
    student_logits: Tensor,
    target_prob: Tensor,
    kind: Literal["bce", "kl"],
    temperature: float = 1.0,
    weight: Tensor | None = None,
) -> Tensor:
    """Loss pulling sigmoid(student_logits) towards the soft labels ``target_prob``.

    ``bce``: BCE-with-logits on the soft targets (temperature must be 1).
    ``kl``: tau^2 * KL(Bern(p_t) || Bern(p_s)) with p_t = sigmoid(logit(target)/tau) and
    p_s = sigmoid(student/tau), as in Hinton et al.; tau^2 keeps gradient sizes comparable across tau.

    For Bernoulli targets KL = BCE - H(p_t), and H(p_t) does not depend on the student, so at tau = 1
    both kinds give the same gradients; ``kl`` reads 0 at a perfect match, ``bce`` reads H(p_t).
    Targets at weight-0 rows are ignored, so a missing soft label may be stored as NaN there.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if weight is not None:
        target_prob = torch.where(weight != 0, target_prob, 0.5)
    target_prob = target_prob.to(student_logits.dtype)
    if kind == "bce":
        if temperature != 1.0:
            raise ValueError("the 'bce' distillation loss has no temperature; use kind='kl' for tau != 1")
        return weighted_mean(F.binary_cross_entropy_with_logits(student_logits, target_prob, reduction="none"), weight)
    if kind == "kl":
        if temperature != 1.0:
            target_prob = torch.sigmoid(torch.logit(target_prob) / temperature)
        cross_entropy = F.binary_cross_entropy_with_logits(student_logits / temperature, target_prob, reduction="none")
        entropy = -(torch.xlogy(target_prob, target_prob) + torch.xlogy(1 - target_prob, 1 - target_prob))
        return temperature**2 * weighted_mean(cross_entropy - entropy, weight)
    raise ValueError(f"unknown distillation loss {kind!r}; expected 'bce' or 'kl'")
