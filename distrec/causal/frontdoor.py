"""CausalD's front-door soft labels: a Monte-Carlo estimate of P(Y | do(X=x), i) (DESIGN.md §4).

    P(Y | do(x), i) = sum_m P(m | x) sum_x' P(x') P(Y | x', m, i)
    y_fda(x, i)     = 1/K sum_k 1/N sum_n sigmoid(h_k(e_k(x'_n), g_k(x), v_k(i)))

Teacher k supplies one mediator sample g_k(x) (so P(m | x) is uniform over the K teachers) and its
head h_k; P(x') is a bank of N histories sampled from the training logs, whose ``direct`` parts
e_k(x'_n) each teacher encodes once. ``front_door_prob`` is the inner 1/N sum for one teacher,
``average_teachers`` the outer 1/K sum, and ``conditional_prob`` the plain-distillation target
sigmoid(h_k(e_k(x), g_k(x), v_k(i))) that keeps the row's own x: the ablation without the x' sum.

The generic path runs the whole head on all B x N pairs. A head whose first layer is linear in
concat(e, m, v) splits exactly into W_e·e(x'_n) + (W_m·m + W_v·v + b): ``bank_head`` (a model's
``bank_head(bank)``) holds the bank's share, computed once per scorer, and adds the row's share,
computed once per row, so only the layers after the first run per pair.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

Head = Callable[[Tensor, Tensor, Tensor], Tensor]
"""head(direct, mediator, item) -> logits; broadcasts over leading dims ([1,N,d], [B,1,d], [B,1,d] -> [B,N])."""
BankHead = Callable[[Tensor, Tensor], Tensor]
"""bank_head(mediator [B, d], item [B, d]) -> logits [B, N]: ``head`` against one fixed bank."""


def front_door_prob(
    head: Head,
    bank_direct: Tensor,
    mediator: Tensor,
    item: Tensor,
    chunk_rows: int = 256,
    bank_head: BankHead | None = None,
) -> Tensor:
    """mean_n sigmoid(head(bank_direct[n], mediator[b], item[b])) for each row b: shape [B].

    Rows are scored ``chunk_rows`` at a time, so the head sees chunk_rows * N pairs per call and
    peak memory is that times the head's widest activation. ``bank_head``, when given, must be
    ``head`` split against this ``bank_direct`` (the exact fast path); it replaces the broadcast call.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    if bank_direct.dim() != 2 or bank_direct.shape[0] == 0:
        raise ValueError(f"bank_direct must be a non-empty [N, d] tensor, got shape {list(bank_direct.shape)}")
    if mediator.dim() != 2 or item.dim() != 2 or mediator.shape[0] != item.shape[0]:
        raise ValueError(
            f"mediator and item must be [B, d] with the same B, got {list(mediator.shape)} and {list(item.shape)}"
        )
    bank = bank_direct.unsqueeze(0)
    num_bank = bank_direct.shape[0]
    chunks = []
    for start in range(0, mediator.shape[0], chunk_rows):
        m = mediator[start : start + chunk_rows].unsqueeze(1)
        v = item[start : start + chunk_rows].unsqueeze(1)
        logits = head(bank, m, v) if bank_head is None else bank_head(m.squeeze(1), v.squeeze(1))
        if logits.shape != (m.shape[0], num_bank):
            raise ValueError(
                f"head returned shape {list(logits.shape)} for direct {list(bank.shape)}, mediator {list(m.shape)}; "
                f"expected [{m.shape[0]}, {num_bank}]: the head must broadcast over leading dims"
            )
        chunks.append(torch.sigmoid(logits).mean(dim=1))
    if not chunks:
        return mediator.new_zeros(0)
    return torch.cat(chunks)


BankGroup = tuple[Tensor, BankHead | None]
"""One group of the bank: its direct parts [N/G, d] and the head split against them (None: no split)."""


def split_bank(
    bank_direct: Tensor, groups: int, seed: int, split: Callable[[Tensor], BankHead | None]
) -> list[BankGroup]:
    """The bank as ``groups`` equal groups drawn at random (``groups`` divides N), each with its split head
    (``split``: a model's ``bank_head``); one group is the whole bank, in its order."""
    if groups < 1 or bank_direct.shape[0] % groups:
        raise ValueError(f"cannot split a bank of {bank_direct.shape[0]} into {groups} equal groups")
    if groups == 1:
        return [(bank_direct, split(bank_direct))]
    order = torch.randperm(bank_direct.shape[0], generator=torch.Generator().manual_seed(seed))
    return [(bank_direct[idx], split(bank_direct[idx])) for idx in order.chunk(groups)]


def sampled_front_door_prob(
    head: Head,
    groups: list[BankGroup],
    mediator: Tensor,
    item: Tensor,
    generator: torch.Generator,
    chunk_rows: int = 256,
) -> Tensor:
    """``front_door_prob`` with each ``chunk_rows`` rows scored against one group drawn uniformly: N/G
    pairs a row instead of N. Unbiased for the whole bank's estimate, since the mean over equal groups of
    their means is the bank's mean; one group is exactly ``front_door_prob`` (and draws nothing)."""
    if len(groups) == 1:
        direct, split = groups[0]
        return front_door_prob(head, direct, mediator, item, chunk_rows, split)
    chunks = []
    for start in range(0, mediator.shape[0], chunk_rows):
        direct, split = groups[int(torch.randint(len(groups), (1,), generator=generator))]
        rows = slice(start, start + chunk_rows)
        chunks.append(front_door_prob(head, direct, mediator[rows], item[rows], chunk_rows, split))
    return torch.cat(chunks) if chunks else mediator.new_zeros(0)


def conditional_prob(head: Head, direct: Tensor, mediator: Tensor, item: Tensor) -> Tensor:
    """sigmoid(head(e(x), m(x), v)): the teacher's own P(Y | x, i), with no x' marginalisation."""
    return torch.sigmoid(head(direct, mediator, item))


def average_teachers(probs: Tensor) -> Tensor:
    """The 1/K average over teachers: ``probs`` [B, K] holds each teacher's soft label in a column
    (``Batch.soft_labels``); the distillation target of the student's loss."""
    if probs.dim() != 2 or probs.shape[1] < 1:
        raise ValueError(f"average_teachers needs [B, K >= 1] probabilities, got shape {list(probs.shape)}")
    return probs.mean(dim=1)


def sample_bank_indices(num_rows: int, n: int, seed: int) -> np.ndarray:
    """Sorted row indices of an x' bank of size n drawn from num_rows rows.

    Without replacement when n <= num_rows; otherwise every row appears floor(n / num_rows) or
    ceil(n / num_rows) times, the least-variance way to repeat rows.
    """
    if n < 0:
        raise ValueError(f"bank size must be non-negative, got {n}")
    if n > 0 and num_rows < 1:
        raise ValueError(f"cannot draw a bank of {n} rows from {num_rows} rows")
    rng = np.random.default_rng(seed)
    if n <= num_rows:
        picked = rng.choice(num_rows, size=n, replace=False)
    else:
        full, rest = divmod(n, num_rows)
        picked = np.concatenate([np.tile(np.arange(num_rows), full), rng.choice(num_rows, size=rest, replace=False)])
    return np.sort(picked).astype(np.int64)
