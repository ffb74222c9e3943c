"""The learning-rate schedule, the loop's Progress record and the train-section config checks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from distrec.config import load_config
from distrec.errors import ConfigError
from distrec.train.loop import Progress
from distrec.train.schedule import LRSchedule, lr_multiplier


def test_warmup_then_cosine_decay_to_the_floor() -> None:
    values = [lr_multiplier(t, 110, 10, "cosine", 0.1) for t in range(111)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)  # (t + 1) / warmup
    assert values[10] == pytest.approx(1.0)
    assert values[60] == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi / 2) = 0
    assert values[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))  # monotone after warm-up


def test_linear_and_constant_schedules() -> None:
    assert lr_multiplier(50, 100, 0, "linear", 0.0) == pytest.approx(0.5)
    assert lr_multiplier(100, 100, 0, "linear", 0.2) == pytest.approx(0.2)
    assert lr_multiplier(7, 100, 0, "constant", 0.1) == 1.0
    assert lr_multiplier(500, 100, 0, "cosine", 0.1) == pytest.approx(0.1)  # past the planned steps: the floor


def test_schedule_scales_every_group_from_its_own_base() -> None:
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.01}])
    schedule = LRSchedule(optimizer, total_steps=10, warmup_steps=0, schedule="linear", min_ratio=0.0)
    schedule.apply(5)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.005])


def test_progress_round_trips_through_one_tensor() -> None:
    progress = Progress(epoch=3, step=17, global_step=200, rows=123_456, best_epoch=2, best_auc=0.8125, stale_epochs=1)
    assert Progress.from_tensor(progress.to_tensor()) == progress
    fresh = Progress.from_tensor(Progress().to_tensor())
    assert fresh.best_auc == -math.inf and fresh.best_epoch == -1 and isinstance(fresh.rows, int)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.sparse_optimizer=adam", "train.sparse_optimizer"),  # fbgemm has no CPU Adam
        ("train.sparse_optimizer=adamw", "train.sparse_optimizer"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.lr_schedule=step", "train.lr_schedule"),
        ("train.sparse_lr=-1", "train.sparse_lr"),
        ("train.min_lr_ratio=2", "train.min_lr_ratio"),
        ("train.patience=-1", "train.patience"),
    ],
)
def test_bad_train_values_fail_before_anything_starts(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("jobs/local.yaml", [override])


def test_adam_is_accepted_on_cuda() -> None:
    assert load_config("jobs/local.yaml", ["train.device=cuda", "train.sparse_optimizer=adam"]).train.device == "cuda"
