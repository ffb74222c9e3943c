"""DIN's front end: an unpooled item sequence on a TorchRec EmbeddingCollection, pooled by target attention.

The candidate item and the history share one table (one id space): the EmbeddingCollection's
single table serves the features ``item_id`` and ``hist_item_ids``, so the attention query and
keys are embeddings of the same items. Every other sparse feature is pooled by an
EmbeddingBagCollection, as in ``FeatureEncoder``. Both collections read ``batch.sparse``
unmodified, so TrainPipelineSparseDist pipelines both input all-to-alls.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import JaggedTensor

from distrec.data.batch import Batch
from distrec.data.schema import HISTORY, ITEM, Manifest
from distrec.models.base import INIT_SCALE, Encoded, embedding_tables, sum_parts


class TargetAttention(nn.Module):
    """DIN's local activation unit (Zhou et al. 2018) over a padded history.

    The weight of history item h for candidate v is MLP([h, v, h - v, h * v]); the mediator is
    sum_j w_j h_j over the real items of the row. As in the paper the weights are not
    softmax-normalised, so the sum keeps the intensity of the user's interest, and a row with an
    empty history gets a zero mediator (a softmax over no items would be undefined).

    A module with no sharded children: TorchRec's pipeline keeps it opaque when it FX-traces the
    model, so nothing here becomes part of the traced graph.
    """

    def __init__(self, dim: int, max_len: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.max_len = max_len
        self.unit = nn.Sequential(MLP(4 * dim, list(hidden)), nn.Linear(hidden[-1], 1))

    def forward(self, history: JaggedTensor, query: torch.Tensor) -> torch.Tensor:
        """history: the rows' item embeddings, jagged [B, len_b, d]; query: [B, d] -> [B, d]."""
        padded = history.to_padded_dense(desired_length=self.max_len)  # fbgemm jagged_to_padded_dense
        return self.pool(padded, history.lengths(), query)

    def pool(self, padded: torch.Tensor, lengths: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """padded [B, L, d] whose positions at or beyond ``lengths`` [B] are ignored, query [B, d] -> [B, d]."""
        q = query.unsqueeze(1).expand_as(padded)
        weights = self.unit(torch.cat([padded, q, padded - q, padded * q], dim=-1)).squeeze(-1)  # [B, L]
        mask = torch.arange(padded.shape[1], device=padded.device) < lengths.unsqueeze(1)
        weights = torch.where(mask, weights, torch.zeros_like(weights))
        return torch.einsum("bl,bld->bd", weights, padded)


class SequenceEncoder(nn.Module):
    """``Encoded`` for DIN: direct and item towers as in ``FeatureEncoder``, the mediator by target attention.

        direct    the sum of the user and context embeddings (and a linear map of the dense features)
        mediator  TargetAttention(history embeddings, candidate embedding): depends on the candidate,
                  which the front-door estimate allows (only ``direct`` is swapped for bank rows)
        item      the sum of the candidate's embedding (shared item table) and its item-side embeddings

    As in ``FeatureEncoder`` the parts are raw embeddings, so the head's dot product sees them directly.
    """

    def __init__(
        self, manifest: Manifest, dim: int, prefix: str, device: torch.device, attention_hidden: Sequence[int]
    ) -> None:
        super().__init__()
        self.direct_features = manifest.sparse_on("user") + manifest.sparse_on("context")
        self.item_side_features = [f for f in manifest.sparse_on("item") if f != ITEM]
        self.has_history = manifest.history_max_len > 0
        bags = [t for t in embedding_tables(manifest, dim, prefix) if ITEM not in t.feature_names]
        self.sparse_arch = EmbeddingBagCollection(tables=bags, device=device)
        self.sequence_arch = EmbeddingCollection(
            tables=[
                EmbeddingConfig(
                    name=f"{prefix}_{ITEM}",
                    embedding_dim=dim,
                    num_embeddings=manifest.table_rows[ITEM],
                    feature_names=[ITEM, HISTORY] if self.has_history else [ITEM],
                    weight_init_min=-INIT_SCALE,
                    weight_init_max=INIT_SCALE,
                )
            ],
            device=device,
        )
        self.dense_arch = nn.Linear(len(manifest.dense), dim, bias=False) if manifest.dense else None
        self.attention = TargetAttention(dim, manifest.history_max_len, attention_hidden) if self.has_history else None

    def forward(self, batch: Batch) -> Encoded:
        pooled = self.sparse_arch(batch.sparse).to_dict()
        sequences = self.sequence_arch(batch.sparse)
        candidate = sequences[ITEM].values()  # one id per row: [B, d]
        direct_parts = [pooled[f] for f in self.direct_features]
        if self.dense_arch is not None:
            direct_parts.append(self.dense_arch(batch.dense))
        direct = sum_parts(direct_parts) if direct_parts else torch.zeros_like(candidate)
        mediator = (
            self.attention(sequences[HISTORY], candidate) if self.attention is not None else torch.zeros_like(direct)
        )
        item = sum_parts([candidate] + [pooled[f] for f in self.item_side_features])
        return Encoded(direct, mediator, item)
