"""Learning-rate schedule shared by the sparse (fused) and dense optimisers: linear warm-up, then decay.

    multiplier(t) = t / warmup                                       for t < warmup
                  = min + (1 - min) * decay((t - warmup) / (T - warmup))   afterwards

with ``decay`` cosine (1 + cos(pi x)) / 2, linear 1 - x, or constant 1, and T the steps of the planned
epochs. TorchRec's fused optimisers read ``param_groups[0]["lr"]`` on every ``zero_grad``/``step``, so
setting each group's learning rate before a step reaches the fused embedding update too.
"""

from __future__ import annotations

import math
from typing import Any

LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return 1.0
    x = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    decay = 0.5 * (1.0 + math.cos(math.pi * x)) if schedule == "cosine" else 1.0 - x
    return min_ratio + (1.0 - min_ratio) * decay


class LRSchedule:
    """Scales every parameter group of ``optimizer`` from the learning rate it was built with."""

    def __init__(self, optimizer: Any, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> None:
        self.groups = list(optimizer.param_groups)
        self.base = [float(g["lr"]) for g in self.groups]
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.schedule, self.min_ratio = schedule, min_ratio

    def apply(self, step: int) -> float:
        """Set the learning rates for global step ``step``; returns the multiplier."""
        m = lr_multiplier(step, self.total_steps, self.warmup_steps, self.schedule, self.min_ratio)
        for group, base in zip(self.groups, self.base, strict=True):
            group["lr"] = base * m
        return m
