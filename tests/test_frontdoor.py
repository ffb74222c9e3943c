"""Front-door estimate against a discrete SCM with an unobserved confounder, and its mechanics.

SCM:  U -> X, U -> Y, X -> M -> Y, with U unobserved and no U -> M edge, so M satisfies the
front-door criterion and P(Y | do(X)) is identified while P(Y | X) is confounded by U.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distrec.causal.frontdoor import (
    average_teachers,
    conditional_prob,
    front_door_prob,
    sample_bank_indices,
)

torch.set_num_threads(1)

P_U1 = 0.5
P_X1_GIVEN_U = np.array([0.2, 0.8])  # P(X=1 | U=u)
P_M_GIVEN_X = np.array([[0.6, 0.3, 0.1], [0.1, 0.3, 0.6]])  # [x, m]
P_Y1_GIVEN_U_M = np.array([[0.1, 0.3, 0.5], [0.5, 0.7, 0.9]])  # [u, m]


def analytic_truth() -> tuple[np.ndarray, np.ndarray]:
    """(P(Y=1 | do(X=x)), P(Y=1 | X=x)) for x = 0, 1."""
    p_u = np.array([1 - P_U1, P_U1])
    do = P_M_GIVEN_X @ (p_u @ P_Y1_GIVEN_U_M)
    p_x_given_u = np.stack([1 - P_X1_GIVEN_U, P_X1_GIVEN_U], axis=1)  # [u, x]
    p_u_given_x = (p_u[:, None] * p_x_given_u) / (p_u @ p_x_given_u)  # [u, x]
    naive = np.einsum("ux,xm,um->x", p_u_given_x, P_M_GIVEN_X, P_Y1_GIVEN_U_M)
    return do, naive


def sample_scm(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u = (rng.random(n) < P_U1).astype(int)
    x = (rng.random(n) < P_X1_GIVEN_U[u]).astype(int)
    m = (rng.random(n)[:, None] > np.cumsum(P_M_GIVEN_X[x], axis=1)).sum(axis=1)
    y = (rng.random(n) < P_Y1_GIVEN_U_M[u, m]).astype(int)
    return x, m, y


def test_analytic_truth_is_confounded() -> None:
    do, naive = analytic_truth()
    np.testing.assert_allclose(do, [0.40, 0.60])
    np.testing.assert_allclose(naive, [0.28, 0.72])


def test_front_door_recovers_the_interventional_probability() -> None:
    """Teachers that are count tables fitted on a sample: their front-door estimate is P(Y | do(X)).

    direct e(x') = one-hot x', mediator = one-hot m, and the head looks up logit P_hat(Y | x', m).
    P(m | x) is represented the way CausalD does it, one mediator sample per teacher: teacher k
    takes the ((k + 1/2) / K)-quantile of P_hat(m | x), so K teachers cover P_hat(m | x) evenly.
    """
    rng = np.random.default_rng(0)
    x, m, y = sample_scm(200_000, rng)
    counts_xm = np.zeros((2, 3))
    clicks_xm = np.zeros((2, 3))
    np.add.at(counts_xm, (x, m), 1)
    np.add.at(clicks_xm, (x, m), y)
    p_m_given_x = counts_xm / counts_xm.sum(axis=1, keepdims=True)
    logit_table = torch.logit(torch.tensor(clicks_xm / counts_xm))

    def head(direct: torch.Tensor, mediator: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        # the SCM has a single item, so v carries nothing
        return (direct[..., :, None] * mediator[..., None, :] * logit_table).sum(dim=(-2, -1))

    bank = torch.nn.functional.one_hot(torch.from_numpy(x[sample_bank_indices(len(x), 5000, seed=1)]), 2).double()
    rows_x = torch.tensor([0, 1])
    direct = torch.nn.functional.one_hot(rows_x, 2).double()
    item = torch.zeros(2, 1, dtype=torch.float64)

    num_teachers = 100
    quantiles = (np.arange(num_teachers) + 0.5) / num_teachers
    teacher_m = np.stack([np.searchsorted(np.cumsum(p_m_given_x[xv]), quantiles) for xv in (0, 1)], axis=1)
    mediators = [torch.nn.functional.one_hot(torch.from_numpy(teacher_m[k]), 3).double() for k in range(num_teachers)]

    front_door = average_teachers(torch.stack([front_door_prob(head, bank, med, item) for med in mediators], 1)).numpy()
    plain_kd = average_teachers(
        torch.stack([conditional_prob(head, direct, med, item) for med in mediators], 1)
    ).numpy()

    do, naive = analytic_truth()
    np.testing.assert_allclose(front_door, do, atol=0.015)
    assert np.abs(front_door - do).max() < 0.25 * np.abs(naive - do).min()
    # without the x' sum the same teachers reproduce the confounded conditional
    np.testing.assert_allclose(plain_kd, naive, atol=0.015)


class MLPHead(torch.nn.Module):
    """A small broadcasting head: an MLP over [e, m, v] after broadcasting their leading dims."""

    def __init__(self, d_e: int, d_m: int, d_v: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(d_e + d_m + d_v, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def forward(self, e: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        lead = torch.broadcast_shapes(e.shape[:-1], m.shape[:-1], v.shape[:-1])
        parts = [t.expand(*lead, t.shape[-1]) for t in (e, m, v)]
        return self.net(torch.cat(parts, dim=-1)).squeeze(-1)


def random_inputs(num_rows: int, bank: int) -> tuple[MLPHead, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    head = MLPHead(3, 4, 2).double()
    return (
        head,
        torch.randn(bank, 3, dtype=torch.float64),
        torch.randn(num_rows, 4, dtype=torch.float64),
        torch.randn(num_rows, 2, dtype=torch.float64),
    )


def test_front_door_prob_equals_a_double_loop() -> None:
    head, bank, mediator, item = random_inputs(num_rows=7, bank=5)
    with torch.no_grad():
        expected = torch.tensor(
            [np.mean([torch.sigmoid(head(bank[n], mediator[b], item[b])).item() for n in range(5)]) for b in range(7)],
            dtype=torch.float64,
        )
        torch.testing.assert_close(front_door_prob(head, bank, mediator, item), expected)


@pytest.mark.parametrize("chunk_rows", [1, 5, 37, 1000])
def test_chunking_does_not_change_the_result(chunk_rows: int) -> None:
    head, bank, mediator, item = random_inputs(num_rows=37, bank=11)
    with torch.no_grad():
        whole = front_door_prob(head, bank, mediator, item, chunk_rows=37)
        torch.testing.assert_close(front_door_prob(head, bank, mediator, item, chunk_rows=chunk_rows), whole)


def test_conditional_prob_is_the_heads_own_probability() -> None:
    head, _, mediator, item = random_inputs(num_rows=6, bank=1)
    direct = torch.randn(6, 3, dtype=torch.float64)
    with torch.no_grad():
        expected = torch.stack([torch.sigmoid(head(direct[b], mediator[b], item[b])) for b in range(6)])
        torch.testing.assert_close(conditional_prob(head, direct, mediator, item), expected)
        # a bank of one row that is the row's own x gives the same number
        torch.testing.assert_close(front_door_prob(head, direct[:1], mediator[:1], item[:1]), expected[:1])


def test_front_door_prob_rejects_a_head_that_does_not_broadcast() -> None:
    head, bank, mediator, item = random_inputs(num_rows=4, bank=3)
    with pytest.raises(ValueError, match="must broadcast"):
        front_door_prob(lambda e, m, v: head(e, m, v).unsqueeze(-1), bank, mediator, item)
    with pytest.raises(ValueError, match="chunk_rows"):
        front_door_prob(head, bank, mediator, item, chunk_rows=0)
    with pytest.raises(ValueError, match="same B"):
        front_door_prob(head, bank, mediator, item[:3])
    assert front_door_prob(head, bank, mediator[:0], item[:0]).shape == (0,)


def test_average_teachers() -> None:
    torch.testing.assert_close(average_teachers(torch.tensor([[0.2, 0.6], [0.4, 0.0]])), torch.tensor([0.4, 0.2]))
    with pytest.raises(ValueError, match="K >= 1"):
        average_teachers(torch.zeros(3, 0))


def test_sample_bank_indices() -> None:
    picked = sample_bank_indices(100, 30, seed=3)
    assert picked.dtype == np.int64 and len(np.unique(picked)) == 30 and (np.diff(picked) > 0).all()
    assert picked.min() >= 0 and picked.max() < 100
    np.testing.assert_array_equal(picked, sample_bank_indices(100, 30, seed=3))
    assert not np.array_equal(picked, sample_bank_indices(100, 30, seed=4))
    # more than there are rows: every row floor(n / rows) or ceil(n / rows) times
    counts = np.bincount(sample_bank_indices(7, 23, seed=0), minlength=7)
    assert counts.sum() == 23 and set(counts) <= {3, 4}
    assert len(sample_bank_indices(5, 0, seed=0)) == 0
    with pytest.raises(ValueError):
        sample_bank_indices(0, 3, seed=0)


def test_front_door_of_the_bayes_teacher_is_the_scms_stored_target(tmp_path) -> None:
    """On the synthetic SCM, ``front_door_prob`` with the Bayes-optimal teacher and a bank of training rows
    recovers the stored P(Y | do(x), i) (``p_fd``), while the same teacher's conditional estimate is the
    observational ``p_obs``: the stored truth is what the front-door formula identifies from the logs.

    The teacher: direct e(x') = the bank row's user confounder a_u', mediator = P(m | x) from the row's own
    history, item = the candidate's per-mediator logits; head = logit sum_m P(m|x) E[sigmoid(...) | shown].
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distrec.data.schema import Manifest
    from distrec.data.synth import synthesize

    root = tmp_path / "synth"
    synthesize(root, 40_000, users=300, items=120, seed=5)
    manifest = Manifest.read(root)
    scm = manifest.source["scm"]
    users, items = pq.read_table(root / "scm" / "users.parquet"), pq.read_table(root / "scm" / "items.parquet")
    c = np.stack(pq.read_table(root / "scm" / "mediators.parquet")["c"].to_numpy(zero_copy_only=False))
    q = np.stack(items["q"].to_numpy(zero_copy_only=False))
    a = users["a"].to_numpy()

    def read(split: str) -> pa.Table:
        return pa.concat_tables(pq.read_table(f) for f in manifest.files(root, split))

    train, test = read("train"), read("test_do").slice(0, 200)
    nodes, weights = np.polynomial.hermite_e.hermegauss(48)
    sign = items["sign"].to_numpy()[test["item_id"].to_numpy()]
    posterior = weights * (1 / (1 + np.exp(-sign[:, None] * scm["confounding"] * nodes)))  # [B, nodes]
    posterior /= posterior.sum(1, keepdims=True)
    i = test["item_id"].to_numpy()
    mediated = scm["b0"] + scm["w_m"] * q[i] @ c.T / np.sqrt(scm["dim"]) + items["b"].to_numpy()[i, None]
    social = items["social"].to_numpy()[i]
    mean = np.stack([q[h].mean(0) if h else np.zeros(scm["dim"]) for h in test["hist_item_ids"].to_pylist()])
    logits = scm["beta_m"] * mean @ c.T / np.sqrt(scm["dim"])
    p_m = np.exp(logits - logits.max(1, keepdims=True))
    p_m /= p_m.sum(1, keepdims=True)
    # the item part carries, per row, its per-mediator logits, its social sign and its V posterior
    item = torch.tensor(np.concatenate([mediated, social[:, None], posterior], axis=1))
    n_m = c.shape[0]

    def head(direct: torch.Tensor, mediator: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        base, r, post = item[..., :n_m], item[..., n_m : n_m + 1], item[..., n_m + 1 :]
        eta = base + scm["w_u"] * r * direct  # [..., mediators]
        click = torch.sigmoid(eta.unsqueeze(-1) + scm["w_v"] * torch.tensor(nodes))  # [..., mediators, nodes]
        p = torch.einsum("...mn,...m,...n->...", click, mediator.expand_as(eta), post.expand(*eta.shape[:-1], -1))
        return torch.logit(p)

    bank_rows = sample_bank_indices(train.num_rows, 1_000, seed=0)
    bank = torch.tensor(a[train["user_id"].to_numpy()[bank_rows]])[:, None]
    fd = front_door_prob(head, bank, torch.tensor(p_m), item, chunk_rows=50).numpy()
    own = torch.tensor(a[test["user_id"].to_numpy()])[:, None]
    conditional = conditional_prob(head, own, torch.tensor(p_m), item).numpy()
    np.testing.assert_allclose(conditional, test["p_obs"].to_numpy(), atol=2e-4)
    np.testing.assert_allclose(fd, test["p_fd"].to_numpy(), atol=0.01)
    gap = np.sqrt(np.mean((test["p_obs"].to_numpy() - test["p_fd"].to_numpy()) ** 2))
    assert gap > 0.05  # the two targets really differ, so the check above can fail
