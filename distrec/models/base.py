"""The one protocol every distrec model answers, and the embedding front end they share.

A model splits the input into the three parts the front-door adjustment needs (DESIGN.md §4):

    encode(batch) -> Encoded(direct e(x), mediator m = g(x), item v(i))
    head(e, m, v) -> logit of P(Y | x, m, item)

``head`` broadcasts over leading dimensions, so the front-door scorer can pair a bank of N
histories' ``direct`` parts [1, N, d] with a batch's mediators and items [B, 1, d] in one call.
What the parts are made of:

    direct    user id and context features (and dense features): what acts on Y besides M
    mediator  the user's interest, pooled from the history of positive items
    item      the candidate item's id and item-side features
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from torch import nn
from torchrec.modules.embedding_configs import BaseEmbeddingConfig, EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.modules.mlp import MLP

from distrec.data.batch import Batch
from distrec.data.schema import HISTORY, ITEM, Manifest


class Encoded(NamedTuple):
    direct: torch.Tensor
    mediator: torch.Tensor
    item: torch.Tensor


class Recommender(Protocol):
    """What the training loop, the front-door scorer and the evaluator need from a model."""

    name: str

    def encode(self, batch: Batch) -> Encoded: ...

    def head(self, direct: torch.Tensor, mediator: torch.Tensor, item: torch.Tensor) -> torch.Tensor: ...

    def forward(self, batch: Batch) -> torch.Tensor: ...


def embedding_tables(manifest: Manifest, dim: int, prefix: str) -> list[EmbeddingBagConfig]:
    """One table per sparse feature; the history shares the item table (same id space)."""
    tables = []
    for spec in manifest.sparse:
        features = [spec.name]
        if spec.name == ITEM and manifest.history_max_len > 0:
            features.append(HISTORY)
        tables.append(
            EmbeddingBagConfig(
                name=f"{prefix}_{spec.name}",
                embedding_dim=dim,
                num_embeddings=spec.rows,
                feature_names=features,
                pooling=PoolingType.MEAN,
            )
        )
    return tables


class FeatureEncoder(nn.Module):
    """Embedding tables plus the three small towers that produce ``Encoded``.

    The EmbeddingBagCollection is a direct child that reads ``batch.sparse`` unmodified, which
    is what lets TorchRec's TrainPipelineSparseDist overlap its input all-to-all with compute.
    """

    def __init__(self, manifest: Manifest, dim: int, prefix: str, device: torch.device) -> None:
        super().__init__()
        self.dim = dim
        self.direct_features = manifest.sparse_on("user") + manifest.sparse_on("context")
        self.item_features = manifest.sparse_on("item")
        self.has_history = manifest.history_max_len > 0
        self.sparse_arch = EmbeddingBagCollection(tables=embedding_tables(manifest, dim, prefix), device=device)
        num_dense = len(manifest.dense)
        self.direct_tower = MLP(dim * len(self.direct_features) + num_dense, [dim, dim])
        self.mediator_tower = MLP(dim, [dim, dim]) if self.has_history else None
        self.item_tower = MLP(dim * len(self.item_features), [dim, dim])

    def forward(self, batch: Batch) -> Encoded:
        pooled = self.sparse_arch(batch.sparse).to_dict()
        direct_in = torch.cat([pooled[f] for f in self.direct_features] + [batch.dense], dim=-1)
        direct = self.direct_tower(direct_in)
        mediator = self.mediator_tower(pooled[HISTORY]) if self.mediator_tower is not None else torch.zeros_like(direct)
        item = self.item_tower(torch.cat([pooled[f] for f in self.item_features], dim=-1))
        return Encoded(direct, mediator, item)


EmbeddingModule = EmbeddingBagCollection | EmbeddingCollection


def embedding_modules(model: nn.Module) -> list[EmbeddingModule]:
    """The TorchRec embedding modules of a model (pooled and sequence): what gets sharded and fused-optimised."""
    return [m for m in model.modules() if isinstance(m, EmbeddingBagCollection | EmbeddingCollection)]


def table_configs(module: EmbeddingModule) -> list[BaseEmbeddingConfig]:
    """The table configs of either kind of embedding module (their accessors differ in name)."""
    if isinstance(module, EmbeddingBagCollection):
        return list(module.embedding_bag_configs())
    return list(module.embedding_configs())


def broadcast_cat(*parts: torch.Tensor) -> torch.Tensor:
    """Concatenate along the last dim after broadcasting the leading dims."""
    return torch.cat(torch.broadcast_tensors(*parts), dim=-1)
