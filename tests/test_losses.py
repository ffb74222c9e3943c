"""Known values and weighting of the label and distillation losses."""

from __future__ import annotations

import math

import pytest
import torch

from distrec.causal.losses import distillation_loss, weighted_bce, weighted_mean

torch.set_num_threads(1)


def bernoulli_kl(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_bce_known_values() -> None:
    logits = torch.tensor([0.0, 2.0, -1.0])
    targets = torch.tensor([0.3, 1.0, 0.25])
    expected = [math.log(2), math.log(1 + math.exp(-2)), -(0.25 * math.log(sigmoid(-1)) + 0.75 * math.log(sigmoid(1)))]
    assert distillation_loss(logits, targets, "bce").item() == pytest.approx(sum(expected) / 3, rel=1e-6)
    assert weighted_bce(logits, targets, None).item() == pytest.approx(sum(expected) / 3, rel=1e-6)


def test_kl_known_values() -> None:
    logits = torch.tensor([0.0, 1.5])
    targets = torch.tensor([0.3, 0.9])
    at_1 = [bernoulli_kl(0.3, 0.5), bernoulli_kl(0.9, sigmoid(1.5))]
    assert distillation_loss(logits, targets, "kl").item() == pytest.approx(sum(at_1) / 2, rel=1e-5)
    tau = 2.0
    at_2 = [
        bernoulli_kl(sigmoid(math.log(0.3 / 0.7) / tau), sigmoid(0.0 / tau)),
        bernoulli_kl(sigmoid(math.log(0.9 / 0.1) / tau), sigmoid(1.5 / tau)),
    ]
    got = distillation_loss(logits, targets, "kl", temperature=tau).item()
    assert got == pytest.approx(tau**2 * sum(at_2) / 2, rel=1e-5)


def test_kl_is_zero_with_zero_gradient_at_a_perfect_match() -> None:
    targets = torch.tensor([0.05, 0.3, 0.5, 0.97])
    for tau in (1.0, 3.0):
        logits = torch.logit(targets).clone().requires_grad_(True)
        loss = distillation_loss(logits, targets, "kl", temperature=tau)
        loss.backward()
        assert loss.item() == pytest.approx(0.0, abs=1e-6)
        assert logits.grad is not None
        torch.testing.assert_close(logits.grad, torch.zeros(4), atol=1e-6, rtol=0)


def test_bce_and_kl_have_the_same_gradient_at_tau_1() -> None:
    targets = torch.tensor([0.1, 0.6, 0.8])
    grads = []
    for kind in ("bce", "kl"):
        logits = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
        distillation_loss(logits, targets, kind).backward()
        grads.append(logits.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_kl_with_hard_targets_is_finite() -> None:
    loss = distillation_loss(torch.tensor([3.0, -2.0]), torch.tensor([1.0, 0.0]), "kl", temperature=2.0)
    assert math.isfinite(loss.item()) and loss.item() > 0


@pytest.mark.parametrize("kind", ["bce", "kl"])
def test_zero_weight_rows_contribute_nothing(kind: str) -> None:
    """Even with a NaN soft label in the dropped row: the loss and gradients match dropping the row."""
    targets = torch.tensor([0.2, float("nan"), 0.7])
    weight = torch.tensor([2.0, 0.0, 1.0])
    logits = torch.tensor([0.3, 5.0, -0.4], requires_grad=True)
    loss = distillation_loss(logits, targets, kind, weight=weight)
    loss.backward()

    kept = torch.tensor([0.3, -0.4], requires_grad=True)
    reference = distillation_loss(kept, targets[[0, 2]], kind, weight=weight[[0, 2]])
    reference.backward()

    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert logits.grad is not None and kept.grad is not None
    torch.testing.assert_close(logits.grad[[0, 2]], kept.grad)
    assert logits.grad[1].item() == 0.0


def test_weighted_bce_normalises_by_the_weight_sum() -> None:
    logits = torch.tensor([0.0, 2.0])
    labels = torch.tensor([1.0, 0.0])
    per_row = [math.log(2), math.log(1 + math.exp(2))]
    got = weighted_bce(logits, labels, torch.tensor([2.0, 1.0])).item()
    assert got == pytest.approx((2 * per_row[0] + per_row[1]) / 3, rel=1e-6)


def test_all_zero_weights_give_zero_loss_and_zero_gradient() -> None:
    logits = torch.tensor([1.0, -3.0], requires_grad=True)
    loss = weighted_bce(logits, torch.tensor([1.0, 0.0]), torch.zeros(2))
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad is not None
    torch.testing.assert_close(logits.grad, torch.zeros(2), atol=0, rtol=0)


def test_weighted_mean_and_argument_checks() -> None:
    assert weighted_mean(torch.tensor([1.0, 3.0])).item() == 2.0
    assert weighted_mean(torch.tensor([1.0, 3.0]), torch.tensor([True, False])).item() == 1.0
    with pytest.raises(ValueError, match="weight has shape"):
        weighted_mean(torch.ones(3), torch.ones(1))
    with pytest.raises(ValueError, match="no temperature"):
        distillation_loss(torch.zeros(2), torch.full((2,), 0.5), "bce", temperature=2.0)
    with pytest.raises(ValueError, match="unknown distillation loss"):
        distillation_loss(torch.zeros(2), torch.full((2,), 0.5), "mse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature must be positive"):
        distillation_loss(torch.zeros(2), torch.full((2,), 0.5), "kl", temperature=0.0)
