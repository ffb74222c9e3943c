"""User activity groups: quantiles of training-interaction count, for heterogeneity analysis.

With the default five groups, ``q1`` is the least active 20% of users and ``q5`` the most active
20%; the "head" users of the report are simply ``q5`` (and the "tail" ``q1``), not a separate group.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq

from distrec.data.schema import USER
from distrec.errors import DataError

GROUP_NAMES = ("q1", "q2", "q3", "q4", "q5")


def groups_from_counts(counts: npt.ArrayLike, n_groups: int = len(GROUP_NAMES)) -> np.ndarray:
    """Group index (0 = least active) of every user, given each user's training-interaction count.

    Users are ranked by (count, user id), so ties are broken by user id and the groups have
    near-equal sizes. Users without training interactions always go to group 0: when they are more
    than ``1/n_groups`` of all users, group 0 is exactly them and the active users are split evenly
    over the other groups.
    """
    counts = np.asarray(counts)
    if counts.ndim != 1:
        raise ValueError(f"counts must be one-dimensional, got shape {counts.shape}")
    if not 1 <= n_groups <= np.iinfo(np.int8).max:
        raise ValueError(f"n_groups must be in [1, 127], got {n_groups}")
    if (counts < 0).any():
        raise ValueError(f"{int((counts < 0).sum())} negative interaction counts")
    num_users = counts.size
    order = np.argsort(counts, kind="stable")
    first = max(int((counts == 0).sum()), -(-num_users // n_groups))
    rest = num_users - first
    out = np.zeros(num_users, dtype=np.int8)
    if n_groups > 1 and rest:
        out[order[first:]] = 1 + np.arange(rest) * (n_groups - 1) // rest
    return out


def activity_groups(train_user_ids: npt.ArrayLike, num_users: int, n_groups: int = len(GROUP_NAMES)) -> np.ndarray:
    """``int8[num_users]``: the activity group of every user, from the ``user_id`` column of the train split."""
    ids = np.asarray(train_user_ids)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise DataError(f"column {USER!r}: expected integer ids, got {ids.dtype}")
    bad = int(((ids < 0) | (ids >= num_users)).sum())
    if bad:
        raise DataError(f"column {USER!r}: {bad} of {ids.size} ids outside [0, {num_users})")
    return groups_from_counts(np.bincount(ids.astype(np.int64, copy=False), minlength=num_users), n_groups)


def group_counts_from_parquet(
    files: Iterable[str | os.PathLike[str]], num_users: int | None = None, batch_size: int = 1 << 20
) -> np.ndarray:
    """``int64[num_users]``: rows per user over ``files``, reading only ``user_id`` in batches.

    Without ``num_users`` the result is as long as the largest id seen plus one.
    """
    counts = np.zeros(num_users or 0, dtype=np.int64)
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=[USER]):
            column = batch.column(0)
            if column.null_count:
                raise DataError(f"{path}: column {USER!r} has {column.null_count} nulls")
            ids = column.to_numpy()
            if not ids.size:
                continue
            bad = int((ids < 0).sum()) + (int((ids >= num_users).sum()) if num_users is not None else 0)
            if bad:
                raise DataError(f"{path}: column {USER!r} has {bad} ids outside [0, {num_users or 'inf'})")
            batch_counts = np.bincount(ids, minlength=counts.size)
            if batch_counts.size > counts.size:
                counts = np.pad(counts, (0, batch_counts.size - counts.size))
            counts += batch_counts
    return counts


def group_profile(
    counts: npt.ArrayLike, groups: npt.ArrayLike, names: tuple[str, ...] = GROUP_NAMES
) -> dict[str, dict[str, int]]:
    """Per activity group: its users, the range of their training interactions (the quantile edges)
    and its share of the training rows, from ``counts`` and ``groups_from_counts(counts)``."""
    counts, groups = np.asarray(counts, dtype=np.int64), np.asarray(groups)
    out = {}
    for g, name in enumerate(names):
        members = counts[groups == g]
        out[name] = {
            "users": int(members.size),
            "min_rows": int(members.min()) if members.size else 0,
            "max_rows": int(members.max()) if members.size else 0,
            "train_rows": int(members.sum()),
        }
    return out
