"""Every architecture answers the protocol: a broadcasting head, finite logits on a real batch; DIN's
target attention sees only the real items of each history."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from distrec.causal.frontdoor import front_door_prob
from distrec.data.batch import Batch, BatchBuilder
from distrec.data.schema import HISTORY, ITEM, USER, Manifest
from distrec.data.synth import synthesize
from distrec.eval.metrics import auc
from distrec.models.architectures import ARCHITECTURES, DIN, build_model
from distrec.models.base import embedding_modules
from distrec.models.sequence import TargetAttention
from distrec.train.sharding import embedding_configs

torch.set_num_threads(1)

DIM, HIDDEN, HISTORY_LEN = 8, [16], 6


Data = tuple[Manifest, Batch, pa.Table]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    """A tiny synthetic dataset's manifest, and its first 64 training rows as a Batch and as Arrow."""
    root = tmp_path_factory.mktemp("models") / "synth"
    manifest = synthesize(root, 1_000, users=60, items=40, days=3, history_len=HISTORY_LEN, seed=3)
    builder = BatchBuilder(manifest)
    rows = pq.read_table(manifest.files(root, "train")[0], columns=builder.columns).slice(0, 64)
    return manifest, builder(rows), rows


def model_of(arch: str, manifest: Manifest, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, arch, manifest, DIM, HIDDEN, torch.device("cpu")).eval()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_head_broadcasts_like_a_loop_over_pairs(arch: str, data: Data) -> None:
    model = model_of(arch, data[0])
    gen = torch.Generator().manual_seed(1)
    bank, mediator, item = (torch.randn(n, DIM, generator=gen) for n in (5, 3, 3))
    with torch.no_grad():
        pairs = model.head(bank.unsqueeze(0), mediator.unsqueeze(1), item.unsqueeze(1))
        loop = torch.tensor(
            [[model.head(bank[n], mediator[b], item[b]).item() for n in range(len(bank))] for b in range(len(item))]
        )
        fd = front_door_prob(model.head, bank, mediator, item, chunk_rows=2)
    assert pairs.shape == (3, 5)
    torch.testing.assert_close(pairs, loop)
    torch.testing.assert_close(fd, torch.sigmoid(loop).mean(dim=1))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_forward_on_a_real_batch_gives_finite_logits_and_trains_every_table(arch: str, data: Data) -> None:
    manifest, batch, _ = data
    model = model_of(arch, manifest).train()
    encoded = model.encode(batch)
    assert all(part.shape == (batch.size, DIM) for part in encoded)
    logits = model(batch)
    assert logits.shape == (batch.size,) and torch.isfinite(logits).all()
    logits.sum().backward()
    tables = [p for m in embedding_modules(model) for p in m.parameters()]
    assert len(tables) == len(embedding_configs(model)) == len(manifest.sparse)
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in tables)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_stochastic_mediator_has_support_in_training_and_is_exact_in_eval(arch: str, data: Data) -> None:
    """mediator_dropout draws m ~ P(m | x) in training (and in ``sample_mediator``, for the scorer); its
    draws average back to g(x) (inverted dropout), and eval mode keeps the deterministic g(x)."""
    from distrec.config import ModelConfig
    from distrec.models.architectures import model_from_config

    manifest, batch, _ = data
    torch.manual_seed(0)
    model = model_from_config(
        ModelConfig(name=arch, arch=arch, dim=DIM, hidden=HIDDEN, mediator_dropout=0.3), manifest, torch.device("cpu")
    )
    with torch.no_grad():
        exact = model.eval().encode(batch)
        torch.testing.assert_close(model.encode(batch).mediator, exact.mediator)
        first, second = model.train().encode(batch), model.encode(batch)
        assert not torch.equal(first.mediator, second.mediator)
        torch.testing.assert_close(first.direct, exact.direct)  # only the mediator is stochastic
        gen = torch.Generator().manual_seed(0)
        draws = torch.stack([model.sample_mediator(exact.mediator, gen) for _ in range(4000)])
    assert ((draws == 0) | torch.isclose(draws, exact.mediator / 0.7)).all()
    torch.testing.assert_close(draws.mean(0), exact.mediator, atol=0.02 * exact.mediator.abs().max().item(), rtol=0)


def test_din_keeps_item_and_history_in_one_sequence_table(data: Data) -> None:
    manifest, _, _ = data
    model = model_of("din", manifest)
    assert isinstance(model, DIN)
    (ec_table,) = model.encoder.sequence_arch.embedding_configs()
    assert ec_table.feature_names == [ITEM, HISTORY] and ec_table.num_embeddings == manifest.cardinality[ITEM]
    assert {c.name for c in embedding_configs(model)} == {f"din_{s.name}" for s in manifest.sparse}


def test_attention_ignores_positions_beyond_each_length() -> None:
    torch.manual_seed(0)
    attention = TargetAttention(DIM, max_len=4, hidden=[12]).eval()
    lengths = torch.tensor([0, 1, 3, 4])
    padded = torch.randn(4, 4, DIM)
    query = torch.randn(4, DIM)
    real = torch.arange(4) < lengths.unsqueeze(1)
    garbage = torch.where(real.unsqueeze(-1), padded, 100 * torch.randn(4, 4, DIM))
    with torch.no_grad():
        pooled = attention.pool(padded, lengths, query)
        torch.testing.assert_close(attention.pool(garbage, lengths, query), pooled)
        for b in range(4):  # DIN's sum_j a(h_j, v) h_j over the real items only, no softmax
            h, v = padded[b, : lengths[b]], query[b].expand(int(lengths[b]), DIM)
            weights = attention.unit(torch.cat([h, v, h - v, h * v], dim=-1))
            torch.testing.assert_close(pooled[b], (weights * h).sum(0))
    assert torch.equal(pooled[0], torch.zeros(DIM))  # an empty history gives a zero mediator


def test_din_rows_do_not_depend_on_other_rows_histories(data: Data) -> None:
    """Each row alone scores as it does inside a batch of histories of other lengths."""
    manifest, batch, rows = data
    lengths = batch.sparse[HISTORY].lengths()
    assert lengths.min() < lengths.max() <= HISTORY_LEN  # the batch really has padding to ignore
    model = model_of("din", manifest)
    builder = BatchBuilder(manifest)
    with torch.no_grad():
        together = model(batch)
        alone = torch.cat([model(builder(rows.slice(i, 1))) for i in range(batch.size)])
    torch.testing.assert_close(alone, together)


@pytest.fixture(scope="module")
def preference_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, list[Batch], Batch]:
    """Synthetic logs whose signal is mostly a dot product p_u.q_i, ~280 training rows per user."""
    root = tmp_path_factory.mktemp("preference") / "synth"
    manifest = synthesize(root, 60_000, users=150, items=100, days=4, history_len=HISTORY_LEN, seed=5)
    builder = BatchBuilder(manifest)
    train = pa.concat_tables(pq.read_table(f, columns=builder.columns) for f in manifest.files(root, "train"))
    train = train.take(np.random.default_rng(0).permutation(train.num_rows))
    batches = [builder(train.slice(lo, 256)) for lo in range(0, train.num_rows, 256)]
    test = pa.concat_tables(pq.read_table(f, columns=builder.columns) for f in manifest.files(root, "test_id"))
    return manifest, batches, builder(test)


def _fit(model: torch.nn.Module, batches: list[Batch], epochs: int) -> None:
    """The loop's optimisers, unsharded: row-wise-style Adagrad on the tables, Adam on the rest."""
    tables = {id(p) for m in embedding_modules(model) for p in m.parameters()}
    sparse = [p for p in model.parameters() if id(p) in tables]
    dense = [p for p in model.parameters() if id(p) not in tables]
    optimizers = [torch.optim.Adagrad(sparse, lr=0.1)] + ([torch.optim.Adam(dense, lr=3e-3)] if dense else [])
    model.train()
    for _ in range(epochs):
        for batch in batches:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels)
            for opt in optimizers:
                opt.zero_grad()
            loss.backward()
            for opt in optimizers:
                opt.step()


class BiasOnly(torch.nn.Module):
    """logit = b_user + b_item + b0: what every distrec model scored when towers hid the embeddings."""

    def __init__(self, manifest: Manifest) -> None:
        super().__init__()
        self.user = torch.nn.Embedding(manifest.cardinality[USER], 1)
        self.item = torch.nn.Embedding(manifest.cardinality[ITEM], 1)
        torch.nn.init.zeros_(self.user.weight)
        torch.nn.init.zeros_(self.item.weight)

    def forward(self, batch: Batch) -> torch.Tensor:
        ids = batch.sparse.to_dict()
        return (self.user(ids[USER].values()) + self.item(ids[ITEM].values())).squeeze(-1)


def _test_auc(model: torch.nn.Module, test: Batch) -> float:
    model.eval()
    with torch.no_grad():
        return auc(test.labels.numpy(), model(test).numpy())


@pytest.fixture(scope="module")
def bias_only_auc(preference_data: tuple[Manifest, list[Batch], Batch]) -> float:
    manifest, batches, test = preference_data
    torch.manual_seed(0)
    model = BiasOnly(manifest)
    optimizer = torch.optim.Adagrad(model.parameters(), lr=0.1)
    for _ in range(4):
        for batch in batches:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return _test_auc(model, test)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_learns_the_dot_product_a_bias_model_cannot(
    arch: str, preference_data: tuple[Manifest, list[Batch], Batch], bias_only_auc: float
) -> None:
    """Each head's explicit user x item interaction on raw embeddings: well above the bias-only model.

    On this SCM the bias-only model reaches ~0.66 and the observational Bayes predictor ~0.83;
    with two-layer towers before the interaction every architecture stayed at the bias-only AUC.
    """
    manifest, batches, test = preference_data
    torch.manual_seed(0)
    model = build_model(arch, arch, manifest, DIM, [32, 16], torch.device("cpu"))
    _fit(model, batches, epochs=4)
    score = _test_auc(model, test)
    assert score > bias_only_auc + 0.05, (arch, score, bias_only_auc)
