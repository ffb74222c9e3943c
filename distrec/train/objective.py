"""The training objective wrapped around a model: what TorchRec's pipeline calls each step.

    teacher / base:   BCE(y, s)
    student:          BCE(y, s + b(C)) + lambda_t * KD(y_soft, s) + beta_t * I_hat(Z; C)

with Z the model's representation or, with ``crl.representation=score``, the logit s itself, and
b(C) the confounders' own logit offsets (``crl.confounder_bias``; 0 without it), which exist in
training only: the model exports, serves and is evaluated on s.

lambda_t and beta_t follow their warm-up schedules (``distill.schedule``, ``crl.warmup_steps``) over
the count of training steps, a buffer of ``Loss``. The critic of I_hat is not part of that loss: it
alternates with the student. Each training forward first gives the critic ``crl.critic_steps``
updates of its own Adam (``crl.critic_lr``) on Z.detach(), then evaluates the penalty with the
critic's parameters detached (``distrec.causal.mi``), so the backward reaches Z but never the
critic, and the critic is left out of the main optimiser.

Under DistributedModelParallel the critic stays a replica per rank, kept identical by hand: its
gradients are all-reduced in the forward, each rank weighted by its live rows, and every rank takes
the same step (none when no rank has a live row). DDP (which DMP wraps the dense parameters in, with
``static_graph=True``) sees the critic's parameters get no gradient in any backward, treats them as
globally unused and leaves their ``.grad`` alone; tests/test_objective.py checks this under a real
2-rank DMP and TrainPipelineSparseDist.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, cast

import torch
import torch.distributed as dist
from torch import nn

from distrec.causal.frontdoor import average_teachers
from distrec.causal.losses import distillation_loss, weighted_bce, weighted_mean
from distrec.causal.mi import make_mi_estimator
from distrec.config import CRLConfig, DistillConfig
from distrec.data.batch import Batch
from distrec.models.architectures import Recommender
from distrec.models.base import sum_parts

COMPONENTS = ("bce", "kd", "mi", "critic")
"""What ``StepOutput.components`` holds, unweighted: BCE, KD, the MI estimate, the critic's loss."""


class StepOutput(NamedTuple):
    loss: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    components: torch.Tensor  # [len(COMPONENTS)], 0 for the terms a model does not have


def warmup_factor(step: torch.Tensor, warmup_steps: int) -> torch.Tensor:
    """min(1, step / warmup_steps): 0 at the first step, 1 from step ``warmup_steps`` on (1 if 0)."""
    if warmup_steps <= 0:
        return torch.ones((), dtype=torch.float32, device=step.device)
    return (step.to(torch.float32) / warmup_steps).clamp(max=1.0)


class ConfounderBias(nn.Module):
    """A learned logit offset per value of each confounder column: the direct path C -> Y.

    Added to the logit of the label loss only, it fits what a session or a position does to clicks
    by itself, beside the score instead of through it, so the score need not carry C and the MI
    penalty is left to remove what the score says about C through the exposure. The serving model
    has no C and no offset (a shallow tower dropped at serving, as YouTube's position-bias tower or
    PAL, Guo et al., RecSys 2019). The offsets are centred on the batch's live rows, so the intercept
    stays in the score and the exported model keeps its calibration on average. The distillation term
    fits the score alone: a soft label does not depend on the row's C (the teachers never see it), so
    offsets there would only be pulled to 0 (tried: valid_random 0.7483 against 0.7477, a tie).
    """

    def __init__(self, cardinalities: list[int]) -> None:
        super().__init__()
        # zeros, drawing nothing from the random generator: turning the offsets on changes no other
        # parameter's initialisation (the critic's, built next)
        self.offsets = nn.ParameterList(nn.Parameter(torch.zeros(c)) for c in cardinalities)

    def forward(self, confounders: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """[B] centred offsets of the rows' confounder values (``confounders``: [B, columns])."""
        offset = sum_parts([table[confounders[:, j]] for j, table in enumerate(self.offsets)])
        return offset - weighted_mean(offset, weights)


class Loss(nn.Module):
    """All loss terms and the critic's updates, in a module of its own: TorchRec's pipeline
    FX-traces the model's forward and treats modules without sharded children as opaque leaves,
    so the data-dependent code here (and the critic's optimiser steps) stays out of the trace.

    ``forward(logits, z, batch) -> (loss, components)``.
    """

    step: torch.Tensor  # a buffer, registered in __init__

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
        self.critic = None
        use_bias = self.crl is not None and self.crl.confounder_bias
        self.confounder_bias = ConfounderBias(confounder_cardinalities) if use_bias else None
        if self.crl is not None:
            if representation_dim is None:
                raise ValueError(
                    "crl.representation=penultimate needs a model that exposes its representation Z (the 'mlp' "
                    "architecture); crl.representation=score works with any"
                )
            self.critic = make_mi_estimator(
                self.crl.estimator,  # type: ignore[arg-type]
                representation_dim,
                c_cardinalities=confounder_cardinalities,
                hidden=self.crl.critic_hidden,
            )
        self.lambda_warmup = (
            self.distill.warmup_steps if self.distill is not None and self.distill.schedule == "linear_warmup" else 0
        )
        self.beta_warmup = self.crl.warmup_steps if self.crl is not None else 0
        # training steps with a live row on some rank; counted only when something depends on it
        self.counts_steps = self.critic is not None or self.lambda_warmup > 0 or self.beta_warmup > 0
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.process_group: dist.ProcessGroup | None = None  # None: the default group, if initialised
        self._critic_optimizer: torch.optim.Optimizer | None = None

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lambda_t, beta_t) at the current step count."""
        lam = self.distill.weight if self.distill is not None else 0.0
        beta = self.crl.beta if self.crl is not None else 0.0
        return lam * warmup_factor(self.step, self.lambda_warmup), beta * warmup_factor(self.step, self.beta_warmup)

    def forward(self, logits: torch.Tensor, z: torch.Tensor | None, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        training = self.training and torch.is_grad_enabled()
        local_weight = batch.weights.sum()
        # padding batches (all weights 0) must move neither the critic nor the student
        live = (local_weight > 0).to(logits.dtype)
        # the live rows' weight over every rank, where something counts steps; with a critic, its first
        # gradient all-reduce carries it (one collective a step fewer)
        global_weight = None
        if training and self.counts_steps and self.critic is None:
            global_weight = self._global_sum(local_weight.detach().reshape(1))
        lam, beta = (c.to(logits.device, logits.dtype) for c in self.coefficients())

        label_logits = logits
        if self.confounder_bias is not None:
            label_logits = logits + self.confounder_bias(batch.confounders, batch.weights)
        bce = weighted_bce(label_logits, batch.labels, batch.weights)
        loss = bce
        zero = torch.zeros((), dtype=logits.dtype, device=logits.device)
        kd = mi = critic_loss = zero
        if self.distill is not None:
            target = average_teachers(batch.soft_labels)
            kind = cast(Literal["bce", "kl"], self.distill.loss)  # config.check allows these two only
            kd = distillation_loss(logits, target, kind, self.distill.temperature, batch.weights)
            loss = loss + lam * kd
        if self.critic is not None and self.crl is not None and z is not None:
            y = batch.labels if self.crl.conditional else None
            if training:
                critic_loss, global_weight = self._train_critic(z.detach(), batch.confounders, y, local_weight.detach())
            mi = self.critic.mi(z, batch.confounders, y=y)
            loss = loss + live * beta * mi
        if global_weight is not None and global_weight.item() > 0:
            self.step += 1
        components = torch.stack([bce, kd, mi, critic_loss]).detach() * live
        return loss, components

    def _global_sum(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of ``x`` over the ranks (a copy of ``x`` when not distributed)."""
        x = x.clone()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size(self.process_group) > 1:
            dist.all_reduce(x, group=self.process_group)
        return x

    def critic_optimizer(self) -> torch.optim.Optimizer | None:
        """The critic's own Adam (None without a critic), with its state materialised.

        Created on first use, after DistributedModelParallel has materialised the critic's parameters.
        Its state exists before the first step (zero moments at step 0, which is what Adam's first step
        would create), so a checkpoint can hold it from the start and be loaded into it in place.
        """
        if self.critic is None or self.crl is None:
            return None
        if self._critic_optimizer is None:
            self._critic_optimizer = torch.optim.Adam(list(self.critic.parameters()), lr=self.crl.critic_lr)
        optimizer = self._critic_optimizer
        for p in self.critic.parameters():
            if not optimizer.state[p]:
                optimizer.state[p] = {
                    "step": torch.zeros((), dtype=torch.float32),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }
        return optimizer

    def _train_critic(
        self, z: torch.Tensor, c: torch.Tensor, y: torch.Tensor | None, local_weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``crl.critic_steps`` Adam steps on the critic's loss over every rank's live rows.

        Each step's gradient is sum_r w_r g_r / sum_r w_r over ranks r with live-row weight w_r, so
        every replica takes the same step; no step when no rank has a live row. The first step's
        all-reduce carries the weights too. Returns the loss before the first step (the critic's fit on
        rows it has not trained on yet; 0 on padding) and sum_r w_r.
        """
        optimizer = self.critic_optimizer()
        assert self.critic is not None and self.crl is not None and optimizer is not None
        params = list(self.critic.parameters())
        first = torch.zeros((), dtype=z.dtype, device=z.device)
        local_live = local_weight.item() > 0
        global_weight = local_weight.reshape(1)
        for k in range(self.crl.critic_steps):
            if local_live:
                loss = self.critic.critic_loss(z, c, y)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                flat = torch.cat(
                    [
                        (g if g is not None else torch.zeros_like(p)).reshape(-1)
                        for g, p in zip(grads, params, strict=True)
                    ]
                )
                flat = flat * local_weight.to(flat.dtype)
                if k == 0:
                    first = loss.detach()
            else:
                flat = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
            if k == 0:  # [w_r, w_r g_r] summed: the weight every rank agrees on, with the first gradient
                summed = self._global_sum(torch.cat([local_weight.reshape(1).to(flat.dtype), flat]))
                global_weight, flat = summed[:1], summed[1:]
                if global_weight.item() <= 0:  # every rank skips together: the sum is the same everywhere
                    return first, global_weight
            else:
                flat = self._global_sum(flat)
            flat = flat / global_weight.to(flat.dtype)
            offset = 0
            for p in params:
                p.grad = flat[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return first, global_weight


class Objective(nn.Module):
    """Wraps a model with its loss; ``forward(batch) -> (loss, StepOutput)`` as TorchRec expects."""

    def __init__(
        self,
        model: Recommender,
        distill: DistillConfig | None = None,
        crl: CRLConfig | None = None,
        confounder_cardinalities: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        # Z for CRL: the model's representation, or its score (crl.representation)
        self.penalises_score = crl is not None and crl.representation == "score"
        representation_dim = 1 if self.penalises_score else model.representation_dim
        self.loss = Loss(distill, crl, representation_dim, confounder_cardinalities or [])
        self.needs_representation = self.loss.critic is not None

    def forward(self, batch: Batch) -> tuple[torch.Tensor, StepOutput]:
        if not self.needs_representation:
            logits, z = self.model(batch), None
        elif self.penalises_score:
            logits = self.model(batch)
            z = logits.unsqueeze(-1)
        else:
            logits, z = self.model.logits_and_representation(batch)
        out = self.loss(logits, z, batch)
        loss, components = out[0], out[1]  # indexing, not unpacking: ``out`` is a Proxy under FX tracing
        return loss, StepOutput(loss.detach(), logits.detach(), batch.labels, batch.weights, components)
