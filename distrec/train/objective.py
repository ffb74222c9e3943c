"""The training objective wrapped around a model: what TorchRec's pipeline calls each step.

    teacher / base:   BCE(y, s)
    student:          BCE(y, s) + lambda * KD(y_soft, s) + beta * I_hat(Z; C)   (+ the critic's own loss)

The critic's loss is computed on Z.detach() and the penalty with the critic's parameters
detached (``distrec.causal.mi``), so a single backward trains the critic to fit q(c | z) and the
student to remove the confounder information it finds.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from distrec.causal.losses import distillation_loss, weighted_bce
from distrec.causal.mi import make_mi_estimator
from distrec.config import CRLConfig, DistillConfig
from distrec.data.batch import Batch


class StepOutput(NamedTuple):
    loss: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor


class Loss(nn.Module):
    """All loss terms, in a module of its own: TorchRec's pipeline FX-traces the model's forward
    and treats modules without sharded children as opaque leaves, so the data-dependent code
    here stays out of the trace."""

    def __init__(
        self,
        distill: DistillConfig | None,
        crl: CRLConfig | None,
        representation_dim: int | None,
        confounder_cardinalities: list[int],
    ) -> None:
        super().__init__()
        self.distill = distill if distill is not None and distill.weight > 0 else None
        self.crl = crl if crl is not None and crl.beta > 0 and confounder_cardinalities else None
        self.critic = (
            make_mi_estimator(
                self.crl.estimator,
                z_dim=representation_dim,
                c_cardinalities=confounder_cardinalities,
                hidden=self.crl.critic_hidden,
            )
            if self.crl is not None
            else None
        )

    def forward(self, logits: torch.Tensor, z: torch.Tensor | None, batch: Batch) -> torch.Tensor:
        loss = weighted_bce(logits, batch.labels, batch.weights)
        if self.distill is not None:
            target = batch.soft_labels.mean(dim=1)
            kd = distillation_loss(logits, target, self.distill.loss, self.distill.temperature, batch.weights)
            loss = loss + self.distill.weight * kd
        if self.critic is not None and self.crl is not None and z is not None:
            y = batch.labels if self.crl.conditional else None
            # padding batches (all weights 0) must move neither the critic nor the student
            live = (batch.weights.sum() > 0).to(logits.dtype)
            penalty = self.critic.mi(z, batch.confounders, y=y)
            critic_loss = self.critic.critic_loss(z.detach(), batch.confounders, y=y)
            loss = loss + live * (self.crl.beta * penalty + critic_loss)
        return loss


class Objective(nn.Module):
    """Wraps a model with its loss; ``forward(batch) -> (loss, StepOutput)`` as TorchRec expects."""

    def __init__(
        self,
        model: nn.Module,
        distill: DistillConfig | None = None,
        crl: CRLConfig | None = None,
        confounder_cardinalities: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = Loss(distill, crl, getattr(model, "representation_dim", None), confounder_cardinalities or [])
        self.needs_representation = self.loss.critic is not None

    def forward(self, batch: Batch) -> tuple[torch.Tensor, StepOutput]:
        if self.needs_representation:
            logits, z = self.model.logits_and_representation(batch)
        else:
            logits, z = self.model(batch), None
        loss = self.loss(logits, z, batch)
        return loss, StepOutput(loss.detach(), logits.detach(), batch.labels, batch.weights)
