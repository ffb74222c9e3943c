"""The embedding front end every distrec model shares, and the three parts it encodes.

A model splits the input into the three parts the front-door adjustment needs (DESIGN.md §4):

    encode(batch) -> Encoded(direct e(x), mediator m = g(x), item v(i))
    head(e, m, v) -> logit of P(Y | x, m, item)

``head`` broadcasts over leading dimensions, so the front-door scorer can pair a bank of N
histories' ``direct`` parts [1, N, d] with a batch's mediators and items [B, 1, d] in one call.
What the parts are made of, all raw pooled embeddings of width ``dim`` (no towers):

    direct    the sum of the user-side and context embeddings, plus a linear map of the dense features
    mediator  the user's interest: the mean of the history's item embeddings (SVD++'s implicit factor)
    item      the sum of the candidate's item-side embeddings (its id, its tag, ...)

Why raw: preference in a log is mostly a dot product of a user and an item vector, and an MLP
learns a dot product poorly (Rendle et al., RecSys 2020). The first distrec models put a two-layer
ReLU tower on each part before they met; every model then scored exactly what a user-bias +
item-bias model scores (AUC 0.677 on 2M synthetic rows, where a plain MF reaches 0.806). So every
head here has an explicit ``preference(direct, mediator, item) = <direct + mediator, item>`` term on
the raw embeddings beside whatever MLP it has (``docs/design.md``, "Why no towers").
"""

from __future__ import annotations

from typing import NamedTuple, TypeAlias

import torch
from torch import nn
from torchrec.modules.embedding_configs import BaseEmbeddingConfig, EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from distrec.data.batch import Batch
from distrec.data.schema import HISTORY, ITEM, Manifest


class Encoded(NamedTuple):
    direct: torch.Tensor
    mediator: torch.Tensor
    item: torch.Tensor


INIT_SCALE = 0.05
"""Embedding rows start uniform in [-INIT_SCALE, INIT_SCALE] whatever the table size.

TorchRec's default is +-sqrt(1 / rows), which shrinks with the table: for 2,000 users it is 0.022,
so a dot product of two such rows starts at ~1e-3, a saddle its gradients barely leave. A fixed
small scale, as matrix factorisation uses, keeps the start of training independent of the ids'
cardinality."""


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
                weight_init_min=-INIT_SCALE,
                weight_init_max=INIT_SCALE,
            )
        )
    return tables


class FeatureEncoder(nn.Module):
    """Embedding tables and the raw pooled parts of ``Encoded`` (see the module docstring).

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
        self.dense_arch = nn.Linear(len(manifest.dense), dim, bias=False) if manifest.dense else None

    def forward(self, batch: Batch) -> Encoded:
        pooled = self.sparse_arch(batch.sparse).to_dict()
        item = sum_parts([pooled[f] for f in self.item_features])
        direct_parts = [pooled[f] for f in self.direct_features]
        if self.dense_arch is not None:
            direct_parts.append(self.dense_arch(batch.dense))
        direct = sum_parts(direct_parts) if direct_parts else torch.zeros_like(item)
        mediator = pooled[HISTORY] if self.has_history else torch.zeros_like(item)
        return Encoded(direct, mediator, item)


def sum_parts(parts: list[torch.Tensor]) -> torch.Tensor:
    out = parts[0]
    for part in parts[1:]:
        out = out + part
    return out


def preference(direct: torch.Tensor, mediator: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
    """<direct + mediator, item>: the user x item interaction on raw embeddings (SVD++), broadcasting."""
    return ((direct + mediator) * item).sum(-1)


EmbeddingModule: TypeAlias = EmbeddingBagCollection | EmbeddingCollection


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
