"""Teacher and student architectures: each an encoder on TorchRec tables and a broadcasting ``head``.

Heterogeneity among teachers is what makes their mediators a useful sample of P(m | x)
(CausalD). DeepFM, DCN, the MLP ranker and the two-tower model share ``FeatureEncoder`` (raw
pooled embeddings, history mean-pooled) and differ in how the head combines the direct, mediator
and item parts; DIN also differs in its mediator, which attends over the history with the
candidate item as the query. Every head has an explicit user x item interaction on the raw
embeddings (an FM term or ``preference``) beside its MLP (see ``distrec.models.base``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import nn
from torchrec.modules.mlp import MLP

from distrec.causal.frontdoor import BankHead
from distrec.config import ModelConfig
from distrec.data.batch import Batch
from distrec.data.schema import Manifest
from distrec.models.base import Encoded, FeatureEncoder, broadcast_cat, preference
from distrec.models.sequence import SequenceEncoder


class Recommender(nn.Module):
    """What every architecture is, and what the loop, the front-door scorer and the evaluator use:
    an encoder on TorchRec tables and ``forward = head(encode(batch))``.

    A model with a representation Z for CRL's penultimate-layer penalty sets ``representation_dim``
    and overrides ``logits_and_representation``; the others leave it None.
    """

    representation_dim: int | None = None

    def __init__(self, name: str, encoder: nn.Module) -> None:
        super().__init__()
        self.name = name
        self.encoder = encoder
        self.mediator_dropout = 0.0  # set by ``model_from_config`` (ModelConfig.mediator_dropout)

    def encode(self, batch: Batch) -> Encoded:
        encoded = self.encoder(batch)
        if self.training and self.mediator_dropout > 0:
            return encoded._replace(mediator=self.sample_mediator(encoded.mediator))
        return encoded

    def sample_mediator(self, mediator: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One draw of the stochastic mediator m ~ P(m | x): an inverted-dropout mask on g(x), in any mode."""
        keep = 1.0 - self.mediator_dropout
        mask = torch.rand(mediator.shape, generator=generator, device=mediator.device) < keep
        return mediator * mask / keep

    def head(self, direct: torch.Tensor, mediator: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def bank_head(self, bank: torch.Tensor) -> BankHead | None:
        """``head`` against a fixed bank of direct parts [N, d], split so that the bank's share of the first
        layer is computed here once: a function (mediator [B, d], item [B, d]) -> logits [B, N] equal to
        ``head(bank[None], mediator[:, None], item[:, None])``. None where the head does not split."""
        return None

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.head(*self.encode(batch))

    def logits_and_representation(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B], Z [B, representation_dim]) in one pass."""
        raise NotImplementedError(f"{type(self).__name__} has no representation Z (representation_dim is None)")


class DeepFM(Recommender):
    """DeepFM (Guo et al. 2017): first-order terms + FM pairwise interactions of the three raw
    embedding fields + a deep MLP over them."""

    def __init__(self, name: str, manifest: Manifest, dim: int, hidden: list[int], device: torch.device) -> None:
        super().__init__(name, FeatureEncoder(manifest, dim, prefix=name, device=device))
        self.linear = nn.Linear(3 * dim, 1)
        self.deep = MLP(3 * dim, hidden)
        self.out = nn.Linear(hidden[-1], 1)

    def head(self, direct: torch.Tensor, mediator: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        fields = torch.stack(torch.broadcast_tensors(direct, mediator, item), dim=-2)  # [..., 3, d]
        fm = 0.5 * (fields.sum(-2).pow(2) - fields.pow(2).sum(-2)).sum(-1)
        flat = fields.flatten(-2)
        return (self.linear(flat) + self.out(self.deep(flat))).squeeze(-1) + fm

    def bank_head(self, bank: torch.Tensor) -> BankHead:
        linear = _SplitLinear(self.linear, bank)
        first = _SplitLinear(_first_linear(self.deep), bank)
        bank_terms = linear.bank.T + self.out.bias  # [1, N]: the linear term's bank share and the read-out's bias
        w_out = self.out.weight.T.contiguous()

        def head(mediator: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
            rows = torch.cat([mediator, item], dim=-1)
            # FM over (e, m, v) = <e, m + v> + <m, v>
            fm = (mediator + item) @ bank.T + (mediator * item).sum(-1, keepdim=True)
            deep = _after_first(self.deep, first(rows)) @ w_out  # [B, N, 1]
            return deep.squeeze(-1) + fm + linear.rows(rows) + bank_terms

        return head


class CrossLayer(nn.Module):
    """DCN-v2 cross layer x_{l+1} = x_0 * (W x_l + b) + x_l, over any leading dims."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(x, x0, self.linear(x))


class DCN(Recommender):
    """Deep & Cross Network v2 (Wang et al. 2021): a cross stack in parallel with an MLP, plus the
    explicit user x item dot product (a cross layer can express it, but learns it slowly)."""

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
        return self.out(torch.cat([x, self.deep(x0)], dim=-1)).squeeze(-1) + preference(direct, mediator, item)

    def bank_head(self, bank: torch.Tensor) -> BankHead:
        cross = _SplitLinear(cast(CrossLayer, self.cross[0]).linear, bank)
        cross.bank += 1.0  # x1 = x0 * (W x0 + b) + x0 = x0 * (1 + W x0 + b): one pass over the pairs
        first = _SplitLinear(_first_linear(self.deep), bank)
        x_width = cross.bank.shape[-1]
        # the read-out split over cat([x, deep]), so the two are never concatenated per pair
        w_cross, w_deep = (
            w.T.contiguous() for w in self.out.weight.split([x_width, self.out.in_features - x_width], dim=1)
        )

        def head(mediator: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
            rows = torch.cat([mediator, item], dim=-1)
            x0 = torch.cat([bank.expand(len(rows), -1, -1), rows.unsqueeze(1).expand(-1, len(bank), -1)], dim=-1)
            x = x0 * cross(rows)
            for layer in self.cross[1:]:
                x = layer(x0, x)
            deep = _after_first(self.deep, first(rows))
            interaction = item @ bank.T + (mediator * item).sum(-1, keepdim=True)  # preference(e, m, v)
            return (x @ w_cross + deep @ w_deep).squeeze(-1) + interaction + self.out.bias

        return head


class MLPRanker(Recommender):
    """The student (and ``base``), NeuMF-shaped (He et al. 2017): Z = [MLP(direct, mediator, item),
    (direct + mediator) * item], read out linearly.

    CRL penalises the mutual information between Z and the observed confounders, so Z is exposed
    through ``represent``. The read-out weights of the element-wise product start at 1, so the
    model starts as the dot product of matrix factorisation and the MLP learns what it adds.
    """

    def __init__(self, name: str, manifest: Manifest, dim: int, hidden: list[int], device: torch.device) -> None:
        super().__init__(name, FeatureEncoder(manifest, dim, prefix=name, device=device))
        self.body = MLP(3 * dim, hidden)
        self.out = nn.Linear(hidden[-1] + dim, 1)
        with torch.no_grad():
            self.out.weight[:, hidden[-1] :] = 1.0
        self.representation_dim = hidden[-1] + dim

    def represent(self, direct: torch.Tensor, mediator: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        deep = self.body(broadcast_cat(direct, mediator, item))
        return torch.cat([deep, (direct + mediator) * item], dim=-1)  # both have the broadcast leading dims

    def head(self, direct: torch.Tensor, mediator: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return self.out(self.represent(direct, mediator, item)).squeeze(-1)

    def bank_head(self, bank: torch.Tensor) -> BankHead:
        dim = bank.shape[-1]
        first = _SplitLinear(_first_linear(self.body), bank)
        w_deep, w_product = self.out.weight.split([self.out.in_features - dim, dim], dim=1)

        def head(mediator: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
            deep = _after_first(self.body, first(torch.cat([mediator, item], dim=-1)))
            weighted = item * w_product  # w . ((e + m) * v) = <e, w * v> + <m, w * v>
            product = weighted @ bank.T + (weighted * mediator).sum(-1, keepdim=True)
            return (deep @ w_deep.T).squeeze(-1) + product + self.out.bias

        return head

    def logits_and_representation(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.represent(*self.encode(batch))
        return self.out(z).squeeze(-1), z


class DIN(Recommender):
    """Deep Interest Network (Zhou et al. 2018): target attention over the history gives the mediator.

    The history is an unpooled sequence on a TorchRec EmbeddingCollection that shares its table with
    the candidate item (``SequenceEncoder``); the head is an MLP over the three parts and the
    mediator-item product, read out linearly, plus the explicit user x item dot product.
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
        deep = self.out(self.deep(broadcast_cat(direct, mediator, item, mediator * item))).squeeze(-1)
        return deep + preference(direct, mediator, item)

    def bank_head(self, bank: torch.Tensor) -> BankHead:
        first = _SplitLinear(_first_linear(self.deep), bank)

        def head(mediator: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
            rows = torch.cat([mediator, item, mediator * item], dim=-1)
            deep = self.out(_after_first(self.deep, first(rows))).squeeze(-1)
            return deep + item @ bank.T + (mediator * item).sum(-1, keepdim=True)

        return head


class TwoTower(Recommender):
    """A two-tower model: logit = <user tower, item tower> + b(item), with residual towers.

    user = direct + mediator + f(direct, mediator) and item = v + g(v), where f and g are MLPs whose
    last linear layer starts at zero: the model starts as matrix factorisation on the raw embeddings
    and the towers learn corrections of either sign. The linear item bias b(item) absorbs item
    popularity, which confounded logs exaggerate, so the dot product need not.
    """

    def __init__(self, name: str, manifest: Manifest, dim: int, hidden: list[int], device: torch.device) -> None:
        super().__init__(name, FeatureEncoder(manifest, dim, prefix=name, device=device))
        self.user_tower = nn.Sequential(MLP(2 * dim, hidden), _zero_linear(hidden[-1], dim))
        self.item_tower = nn.Sequential(MLP(dim, hidden), _zero_linear(hidden[-1], dim))
        self.item_bias = nn.Linear(dim, 1)

    def head(self, direct: torch.Tensor, mediator: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        user = direct + mediator + self.user_tower(broadcast_cat(direct, mediator))
        candidate = item + self.item_tower(item)
        return (user * candidate).sum(-1) + self.item_bias(item).squeeze(-1)

    def bank_head(self, bank: torch.Tensor) -> BankHead:
        mlp, last = self.user_tower
        first = _SplitLinear(_first_linear(mlp), bank)

        def head(mediator: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
            correction = last(_after_first(mlp, first(mediator)))  # f(e, m): [B, N, d]
            candidate = item + self.item_tower(item)
            # <e + m + f, c> + b(v)
            row = (mediator * candidate).sum(-1, keepdim=True) + self.item_bias(item)
            return (correction * candidate.unsqueeze(1)).sum(-1) + candidate @ bank.T + row

        return head


class _SplitLinear:
    """A Linear over concat(bank direct e, row r) as ``bank`` = W_e·e + b (once, [N, out]) + ``rows`` = W_r·r
    (once per row, [B, out]); r is the row's parts concatenated in the Linear's input order."""

    def __init__(self, linear: nn.Linear, bank: torch.Tensor) -> None:
        w_bank, w_rows = linear.weight.split([bank.shape[-1], linear.in_features - bank.shape[-1]], dim=1)
        self.bank = bank @ w_bank.T + linear.bias
        self.w_rows = w_rows.T.contiguous()

    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        return rows @ self.w_rows

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        """[B, N, out] pre-activations for the rows [B, width]."""
        return self.bank.unsqueeze(0) + self.rows(rows).unsqueeze(1)


def _first_linear(mlp: MLP) -> nn.Linear:
    return mlp._mlp[0]._linear


def _after_first(mlp: MLP, pre_activation: torch.Tensor) -> torch.Tensor:
    """The rest of ``mlp`` from its first layer's pre-activation (which a ReLU overwrites: it is per pair)."""
    activation = mlp._mlp[0]._activation_fn
    hidden = pre_activation.relu_() if activation is torch.relu else activation(pre_activation)
    return mlp._mlp[1:](hidden)


def _zero_linear(width_in: int, width_out: int) -> nn.Linear:
    layer = nn.Linear(width_in, width_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


ARCHITECTURES: dict[str, Callable[[str, Manifest, int, list[int], torch.device], Recommender]] = {
    "deepfm": DeepFM,
    "dcn": DCN,
    "mlp": MLPRanker,
    "din": DIN,
    "two_tower": TwoTower,
}


def model_from_config(spec: ModelConfig, manifest: Manifest, device: torch.device) -> Recommender:
    """The model a ``ModelConfig`` describes (the one factory the loop, the planner and exports use)."""
    model = build_model(spec.arch, spec.name, manifest, spec.dim, list(spec.hidden), device)
    model.mediator_dropout = spec.mediator_dropout
    return model


def build_model(
    arch: str, name: str, manifest: Manifest, dim: int, hidden: list[int], device: torch.device
) -> Recommender:
    """Build a model; embedding tables go on ``device`` (``meta`` until TorchRec shards them)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](name, manifest, dim, hidden, device)
