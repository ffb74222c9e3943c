"""Teacher and student architectures: each an encoder on TorchRec tables and a broadcasting ``head``.

Heterogeneity among teachers is what makes their mediators a useful sample of P(m | x)
(CausalD). DeepFM, DCN, the MLP ranker and the two-tower model share ``FeatureEncoder`` (history
mean-pooled) and differ in how the head combines the direct, mediator and item parts; DIN also
differs in its mediator, which attends over the history with the candidate item as the query.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.modules.mlp import MLP

from distrec.data.batch import Batch
from distrec.data.schema import Manifest
from distrec.models.base import Encoded, FeatureEncoder, broadcast_cat
from distrec.models.sequence import SequenceEncoder


class _Model(nn.Module):
    """Shared plumbing: an encoder on TorchRec tables and ``forward = head(encode(batch))``."""

    def __init__(self, name: str, encoder: nn.Module) -> None:
        super().__init__()
        self.name = name
        self.encoder = encoder

    def encode(self, batch: Batch) -> Encoded:
        return self.encoder(batch)

    def head(self, direct: torch.Tensor, mediator: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.head(*self.encode(batch))


class DeepFM(_Model):
    """Factorisation-machine interactions of the three parts plus a deep MLP (Guo et al. 2017)."""

    def __init__(self, name: str, manifest: Manifest, dim: int, hidden: list[int], device: torch.device) -> None:
        super().__init__(name, FeatureEncoder(manifest, dim, prefix=name, device=device))
        self.deep = MLP(3 * dim, hidden)
        self.out = nn.Linear(hidden[-1], 1)

    def head(self, direct: torch.Tensor, mediator: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        fields = torch.stack(torch.broadcast_tensors(direct, mediator, item), dim=-2)  # [..., 3, d]
        fm = 0.5 * (fields.sum(-2).pow(2) - fields.pow(2).sum(-2)).sum(-1)
        return fm + self.out(self.deep(fields.flatten(-2))).squeeze(-1)


class CrossLayer(nn.Module):
    """DCN-v2 cross layer x_{l+1} = x_0 * (W x_l + b) + x_l, over any leading dims."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(x) + x


class DCN(_Model):
    """Deep & Cross Network v2 (Wang et al. 2021): a cross stack in parallel with an MLP."""

    def __init__(
        self, name: str, manifest: Manifest, dim: int, hidden: list[int], device: torch.device, cross_layers: int = 2
    ) -> None:
        super().__init__(name, FeatureEncoder(manifest, dim, prefix=name, device=device))
        self.cross = nn.ModuleList(CrossLayer(3 * dim) for _ in range(cross_layers))
        self.deep = MLP(3 * dim, hidden)
        self.out = nn.Linear(3 * dim + hidden[-1], 1)

    def head(self, direct: torch.Tensor, mediator: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        x0 = broadcast_cat(direct, mediator, item)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.out(torch.cat([x, self.deep(x0)], dim=-1)).squeeze(-1)


class MLPRanker(_Model):
    """The student (and ``base``): an MLP whose last hidden layer is the representation Z.

    CRL penalises the mutual information between Z and the observed confounders, so Z is
    exposed through ``represent``; ``head`` is a linear read-out of it, so serving costs one MLP.
    """

    def __init__(self, name: str, manifest: Manifest, dim: int, hidden: list[int], device: torch.device) -> None:
        super().__init__(name, FeatureEncoder(manifest, dim, prefix=name, device=device))
        self.body = MLP(3 * dim, hidden)
        self.out = nn.Linear(hidden[-1], 1)
        self.representation_dim = hidden[-1]

    def represent(self, direct: torch.Tensor, mediator: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return self.body(broadcast_cat(direct, mediator, item))

    def head(self, direct: torch.Tensor, mediator: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return self.out(self.represent(direct, mediator, item)).squeeze(-1)

    def logits_and_representation(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.represent(*self.encode(batch))
        return self.out(z).squeeze(-1), z


class DIN(_Model):
    """Deep Interest Network (Zhou et al. 2018): target attention over the history gives the mediator.

    The history is an unpooled sequence on a TorchRec EmbeddingCollection that shares its table with
    the candidate item (``SequenceEncoder``); the head is an MLP over the three parts and the
    mediator-item product, read out linearly.
    """

    def __init__(
        self,
        name: str,
        manifest: Manifest,
        dim: int,
        hidden: list[int],
        device: torch.device,
        attention_hidden: tuple[int, ...] = (36,),
    ) -> None:
        super().__init__(
            name, SequenceEncoder(manifest, dim, prefix=name, device=device, attention_hidden=attention_hidden)
        )
        self.deep = MLP(4 * dim, hidden)
        self.out = nn.Linear(hidden[-1], 1)

    def head(self, direct: torch.Tensor, mediator: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return self.out(self.deep(broadcast_cat(direct, mediator, item, mediator * item))).squeeze(-1)


class TwoTower(_Model):
    """A two-tower model: logit = <user tower(direct, mediator), item tower(item)> + b(item) + b0.

    Each tower is an MLP of widths ``hidden`` followed by a linear layer, so the towers' outputs
    can have either sign (the MLP alone ends in a ReLU, and dot products of non-negative vectors
    can only raise the logit). The linear item bias b(item) absorbs item popularity, which
    confounded logs exaggerate, so the dot product need not.
    """

    def __init__(self, name: str, manifest: Manifest, dim: int, hidden: list[int], device: torch.device) -> None:
        super().__init__(name, FeatureEncoder(manifest, dim, prefix=name, device=device))
        self.user_tower = nn.Sequential(MLP(2 * dim, hidden), nn.Linear(hidden[-1], hidden[-1]))
        self.item_tower = nn.Sequential(MLP(dim, hidden), nn.Linear(hidden[-1], hidden[-1]))
        self.item_bias = nn.Linear(dim, 1)

    def head(self, direct: torch.Tensor, mediator: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        user = self.user_tower(broadcast_cat(direct, mediator))
        return (user * self.item_tower(item)).sum(-1) + self.item_bias(item).squeeze(-1)


ARCHITECTURES: dict[str, type[_Model]] = {
    "deepfm": DeepFM,
    "dcn": DCN,
    "mlp": MLPRanker,
    "din": DIN,
    "two_tower": TwoTower,
}


def build_model(arch: str, name: str, manifest: Manifest, dim: int, hidden: list[int], device: torch.device) -> _Model:
    """Build a model; embedding tables go on ``device`` (``meta`` until TorchRec shards them)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](name, manifest, dim, hidden, device)
