"""Mutual-information upper bounds used as the CRL penalty I_hat(Z; C) (DESIGN.md §4).

Each estimator is an ``nn.Module`` whose parameters form a critic (a variational q(c | z)):

    critic_loss(z.detach(), c, y)   what the critic's parameters minimise (a fit of q)
    mi(z, c, y)                     the estimate; gradients reach z but never the critic

so one backward of ``task_loss + beta * mi(z, c) + critic_loss(z.detach(), c)`` fits the critic and
pushes the representation to remove what the critic finds. ``mi`` runs the critic through
``torch.func.functional_call`` with detached parameters, which is why the two terms can share a
backward and one optimiser (as in tests/test_mi.py); ``distrec.train.objective`` instead alternates,
giving the critic its own optimiser steps on ``critic_loss`` before each student step. The critic has
to keep up with z, so give its parameters a higher learning rate than the encoder's (or several
steps): with equal rates, the linear encoder in tests/test_mi.py rotated z faster than the critic
could follow, and the penalty stopped working.

Passing ``y`` (labels, any discrete values) gives the conditional form I(Z; C | Y): negatives c_j are
drawn only from rows with the same y as row i, and rows are weighted by their stratum's frequency,
so the estimate is sum_y p(y) I(Z; C | Y=y). ``y=None`` is the unconditional form.

What the estimates converge to, with a critic that fits exactly (q = p(c | z)), is
I(Z; C) + KL(p(z)p(c) || p(z, c)): an upper bound whose gap (the lautum information) is zero at
independence but grows quickly with dependence. For jointly Gaussian z, c with per-dimension
correlation rho the CLUB value is d * rho^2 / (1 - rho^2), against the true -d/2 * log(1 - rho^2).
Both are zero exactly when Z and C are independent, which is what the penalty needs.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

# q's log-variance is soft-bounded to (-LOGVAR_BOUND, LOGVAR_BOUND). The official CLUB code uses a
# plain Tanh, i.e. variances in (e^-1, e), which cannot fit a confounder that z predicts well
# (rho = 0.8 needs a variance of 0.36); a wide soft bound keeps exp(-logvar) finite without that bias.
LOGVAR_BOUND = 8.0


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


def _check_strata(y: Tensor | None, rows: int) -> None:
    if y is not None and (y.dim() != 1 or y.shape[0] != rows):
        raise ValueError(f"y must have shape [{rows}], got {list(y.shape)}")


def stratum_mean(x: Tensor, y: Tensor | None) -> Tensor:
    """Row i of the result is the mean of ``x`` over the rows whose ``y`` equals ``y[i]`` (all rows if None)."""
    if y is None:
        return x.mean(dim=0, keepdim=True).expand_as(x)
    _check_strata(y, x.shape[0])
    values, stratum = torch.unique(y, return_inverse=True)
    num_strata = values.shape[0]
    sums = x.new_zeros((num_strata, *x.shape[1:])).index_add(0, stratum, x)
    counts = torch.bincount(stratum, minlength=num_strata).to(x.dtype)
    return (sums / counts.view(-1, *([1] * (x.dim() - 1))))[stratum]


class SumOfEmbeddings(nn.Module):
    """Embeds int [B, ncols] categorical columns as the sum of one embedding per column."""

    def __init__(self, cardinalities: Sequence[int], dim: int) -> None:
        super().__init__()
        if not cardinalities or min(cardinalities) < 1:
            raise ValueError(f"cardinalities must be a non-empty list of positive ints, got {list(cardinalities)}")
        self.tables = nn.ModuleList(nn.Embedding(card, dim) for card in cardinalities)

    def forward(self, c: Tensor) -> Tensor:
        return torch.stack([table(c[:, k]) for k, table in enumerate(self.tables)]).sum(dim=0)


class MIEstimator(nn.Module, ABC):
    """A critic q(c | z) with the two quantities the CRL objective needs."""

    @abstractmethod
    def critic_loss(self, z: Tensor, c: Tensor, y: Tensor | None = None) -> Tensor:
        """The loss the critic's parameters minimise; call it on ``z.detach()``."""

    @abstractmethod
    def mi(self, z: Tensor, c: Tensor, y: Tensor | None = None) -> Tensor:
        """The MI estimate (a scalar); differentiable in ``z``, constant in the critic's parameters."""

    def _frozen(self, *args: Tensor) -> Any:
        """``self(*args)`` with every parameter detached."""
        params = {name: p.detach() for name, p in self.named_parameters()}
        return torch.func.functional_call(self, params, args)


class CLUB(MIEstimator):
    """CLUB with a diagonal Gaussian q(c | z) for continuous c [B, c_dim] (Cheng et al., ICML 2020).

    ``critic_loss`` is the negative log-likelihood of c under q. The Gaussian likelihood involves no
    negatives, so y does not change it; in ``mi`` the negative term averages over same-y rows. The
    average over j is taken in closed form from the stratum's mean and variance of c, so memory
    stays O(B * c_dim) rather than O(B^2).
    """

    def __init__(self, z_dim: int, c_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.c_dim = c_dim
        self.mu = _mlp(z_dim, hidden, c_dim)
        self.logvar = _mlp(z_dim, hidden, c_dim)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(c | z)."""
        return self.mu(z), LOGVAR_BOUND * torch.tanh(self.logvar(z) / LOGVAR_BOUND)

    def _check(self, z: Tensor, c: Tensor) -> None:
        if c.dim() != 2 or c.shape[1] != self.c_dim or c.shape[0] != z.shape[0]:
            raise ValueError(f"c must have shape [{z.shape[0]}, {self.c_dim}], got {list(c.shape)}")

    def critic_loss(self, z: Tensor, c: Tensor, y: Tensor | None = None) -> Tensor:
        self._check(z, c)
        mu, logvar = self(z)
        nll = 0.5 * ((c - mu) ** 2 * torch.exp(-logvar) + logvar + math.log(2 * math.pi))
        return nll.sum(dim=1).mean()

    def mi(self, z: Tensor, c: Tensor, y: Tensor | None = None) -> Tensor:
        self._check(z, c)
        mu, logvar = self._frozen(z)
        precision = torch.exp(-logvar)
        c_mean = stratum_mean(c, y)
        c_var = stratum_mean((c - c_mean) ** 2, y)
        positive = -0.5 * ((c - mu) ** 2 * precision).sum(dim=1)
        # mean_j (mu_i - c_j)^2 over j in i's stratum = (mu_i - mean_j c_j)^2 + var_j c_j
        negative = -0.5 * (((mu - c_mean) ** 2 + c_var) * precision).sum(dim=1)
        return (positive - negative).mean()


class CategoricalCLUB(MIEstimator):
    """CLUB for categorical c, int [B, ncols] (CLUBForCategorical in Linear95/CLUB, one head per column).

    q(c | z) = prod_k softmax(W_k r(z))[c_k], a shared hidden layer r and one linear head per column.
    ``critic_loss`` is the negative log-likelihood of c under q. ``mi`` is the reference's
    mean(diag(log_mat)) - mean(log_mat) with log_mat[i, j] = log q(c_j | z_i), summed over columns
    (log q factorises, so the mean over j splits by column). The mean over j is taken in closed form,
    sum_v freq(c_k = v) * log q_k(v | z_i) with the frequencies of i's stratum, so memory is
    O(B * sum(cardinalities)) rather than O(B^2). y does not change the likelihood (no negatives).

    With several columns the estimate bounds sum_k I(Z; C_k) (plus each column's lautum term), which
    is what the penalty should remove column by column; it need not bound the joint I(Z; C) when the
    columns are synergistic (c_1 XOR c_2 carrying what neither carries alone).
    """

    def __init__(self, z_dim: int, c_cardinalities: Sequence[int], hidden: int = 64) -> None:
        super().__init__()
        if not c_cardinalities or min(c_cardinalities) < 1:
            raise ValueError(f"c_cardinalities must be a non-empty list of positive ints, got {list(c_cardinalities)}")
        self.cardinalities = [int(k) for k in c_cardinalities]
        self.trunk = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(hidden, k) for k in self.cardinalities)

    def forward(self, z: Tensor) -> list[Tensor]:
        """log q(. | z) for each column: [B, cardinality_k] log-probabilities."""
        r = self.trunk(z)
        return [torch.log_softmax(head(r), dim=1) for head in self.heads]

    def _check(self, z: Tensor, c: Tensor) -> None:
        if c.dim() != 2 or c.shape[1] != len(self.cardinalities) or c.shape[0] != z.shape[0]:
            raise ValueError(f"c must have shape [{z.shape[0]}, {len(self.cardinalities)}], got {list(c.shape)}")

    def critic_loss(self, z: Tensor, c: Tensor, y: Tensor | None = None) -> Tensor:
        self._check(z, c)
        c = c.long()
        nll = [-logq.gather(1, c[:, k : k + 1]).squeeze(1) for k, logq in enumerate(self(z))]
        return torch.stack(nll, dim=1).sum(dim=1).mean()

    def mi(self, z: Tensor, c: Tensor, y: Tensor | None = None) -> Tensor:
        self._check(z, c)
        _check_strata(y, z.shape[0])
        c = c.long()
        total = z.new_zeros(())
        for k, logq in enumerate(self._frozen(z)):
            positive = logq.gather(1, c[:, k : k + 1]).squeeze(1)
            freq = stratum_mean(nn.functional.one_hot(c[:, k], logq.shape[1]).to(logq.dtype), y)
            negative = (freq * logq).sum(dim=1)
            total = total + (positive - negative).mean()
        return total


class NCECLUB(MIEstimator):
    """CLUB whose q(c_j | z_i) is an in-batch softmax over critic scores f(z, c) = <g(z), h(c)>.

    c is either categorical, ``c_cardinalities`` giving one cardinality per column (c: int [B, ncols],
    embedded by summing one embedding per column), or continuous, ``c_dim`` columns (c: float
    [B, c_dim], embedded by an MLP). The critic maximises InfoNCE; the estimate is
    mean_i f(z_i, c_i) - mean_{i,j} f(z_i, c_j), the softmax's normaliser cancelling.
    """

    def __init__(
        self,
        z_dim: int,
        c_cardinalities: Sequence[int] | None = None,
        c_dim: int | None = None,
        hidden: int = 64,
    ) -> None:
        super().__init__()
        if (c_cardinalities is None) == (c_dim is None):
            raise ValueError("give exactly one of c_cardinalities (categorical c) and c_dim (continuous c)")
        self.g = _mlp(z_dim, hidden, hidden)
        self.h: nn.Module
        if c_cardinalities is not None:
            self.c_width = len(c_cardinalities)
            self.h = SumOfEmbeddings(c_cardinalities, hidden)
        else:
            assert c_dim is not None
            self.c_width = c_dim
            self.h = _mlp(c_dim, hidden, hidden)

    def _check(self, z: Tensor, c: Tensor) -> None:
        if c.dim() != 2 or c.shape[1] != self.c_width or c.shape[0] != z.shape[0]:
            raise ValueError(f"c must have shape [{z.shape[0]}, {self.c_width}], got {list(c.shape)}")

    def forward(self, z: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """The critic's embeddings g(z) [B, hidden] and h(c) [B, hidden]."""
        self._check(z, c)
        return self.g(z), self.h(c)

    def critic_loss(self, z: Tensor, c: Tensor, y: Tensor | None = None) -> Tensor:
        if isinstance(self.h, SumOfEmbeddings):
            return self._categorical_critic_loss(z, c, y)
        gz, hc = self(z, c)
        scores = gz @ hc.T
        if y is not None:
            _check_strata(y, scores.shape[0])
            scores = scores.masked_fill(y[:, None] != y[None, :], float("-inf"))
        return -(scores.diagonal() - torch.logsumexp(scores, dim=1)).mean()

    def _categorical_critic_loss(self, z: Tensor, c: Tensor, y: Tensor | None) -> Tensor:
        """The InfoNCE loss above, in O(B * U) for the U distinct rows of a categorical c.

        Columns j of the B x B score matrix with equal c_j are equal, so row i's logsumexp over j is
        logsumexp_u(f(z_i, c_u) + log n_u), n_u counting the rows (of i's stratum) with c_j = c_u.
        """
        self._check(z, c)
        distinct, which, counts = torch.unique(c, dim=0, return_inverse=True, return_counts=True)
        scores = self.g(z) @ self.h(distinct).T  # [B, U]
        if y is None:
            log_counts = counts.to(scores.dtype).log()[None, :]
        else:
            _check_strata(y, z.shape[0])
            _, stratum = torch.unique(y, return_inverse=True)
            per_stratum = scores.new_zeros(int(stratum.max()) + 1, distinct.shape[0])
            per_stratum.index_put_((stratum, which), torch.ones_like(scores[:, 0]), accumulate=True)
            log_counts = per_stratum.log()[stratum]  # -inf where c_u does not occur in i's stratum
        positive = scores.gather(1, which[:, None]).squeeze(1)
        return -(positive - torch.logsumexp(scores + log_counts, dim=1)).mean()

    def mi(self, z: Tensor, c: Tensor, y: Tensor | None = None) -> Tensor:
        gz, hc = self._frozen(z, c)
        # mean_j <g_i, h_j> over i's stratum = <g_i, mean_j h_j>: O(B * hidden), no B x B matrix
        return (gz * (hc - stratum_mean(hc, y))).sum(dim=1).mean()


def make_mi_estimator(
    kind: Literal["club", "nce_club"],
    z_dim: int,
    *,
    c_cardinalities: Sequence[int] | None = None,
    c_dim: int | None = None,
    hidden: int = 64,
) -> MIEstimator:
    """Build an estimator by name, for categorical c (``c_cardinalities``) or continuous c (``c_dim``).

    ``club``: a softmax q per column (``CategoricalCLUB``) or a diagonal Gaussian q (``CLUB``);
    ``nce_club``: the in-batch softmax critic, for either.
    """
    if kind not in ("club", "nce_club"):
        raise ValueError(f"unknown MI estimator {kind!r}; expected 'club' or 'nce_club'")
    if (c_cardinalities is None) == (c_dim is None):
        raise ValueError("give exactly one of c_cardinalities (categorical c) and c_dim (continuous c)")
    if kind == "club":
        if c_cardinalities is not None:
            return CategoricalCLUB(z_dim, c_cardinalities, hidden)
        assert c_dim is not None
        return CLUB(z_dim, c_dim, hidden)
    return NCECLUB(z_dim, c_cardinalities=c_cardinalities, c_dim=c_dim, hidden=hidden)
