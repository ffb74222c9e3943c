"""Day stores: datasets that grow one day at a time, as the nightly job reads them.

A day store is a dataset directory in the canonical format (``distrec.data.schema``) in which every
day is one ``ds=`` partition of each split it has::

    DIR/train/ds=D/      the day's logged exposures, less a ``valid`` share
    DIR/valid/ds=D/      a share of the day's logged exposures, for model selection
    DIR/test_ood/ds=D/   the day's exposures under another policy (synthetic: the flipped policy)
    DIR/manifest.json    source["days"] = {D: {split: rows}}; a day is complete once it is listed there

Embedding tables are sized once, with headroom for the users and items still to come
(``SparseFeature.table_rows``), so the tables of a model trained on one night keep their shapes on
the next and a warm start carries every known row over. ``window_view`` assembles the dataset one
night trains on: the window's days as train and valid, the held-out date as test_id (its logged
rows) and test_ood.

``synthesize_days`` writes a synthetic day store from the SCM of ``distrec.data.synth`` with drift:
the items' popularity moves day by day, new users and items arrive, and the logging policy can
change on a given day.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from distrec.data.schema import ITEM, USER, Manifest, SparseFeature, partition_name
from distrec.data.synth import (
    CONF_SESSION,
    SESSION_BUCKETS,
    START_DAY,
    TAG,
    _chunk,
    _Counter,
    _front_door_table,
    _histories,
    _Partition,
    _World,
    _world,
    session_edges,
)
from distrec.errors import ConfigError, DataError
from distrec.io import atomic_dir

DAY_SPLITS = ("train", "valid", "test_ood")
STRIDE = 1 << 32  # counter offset between the partitions of a day store: rows of no two partitions share draws


def day_rows(manifest: Manifest) -> dict[str, dict[str, int]]:
    """``{YYYY-MM-DD: {split: rows}}`` of the complete days of a day store, in date order."""
    days = manifest.source.get("days")
    if not isinstance(days, dict):
        raise DataError(f"dataset {manifest.name!r}: not a day store (its manifest lists no source.days)")
    return dict(sorted(days.items()))


def _drifted(world: _World, users: int, items: int, bias: np.ndarray, confounding: float, pop_tilt: float) -> _World:
    """The world of one day: only the first ``users`` users and ``items`` items exist, with this day's
    popularity bias and logging policy."""
    weight_u = np.diff(np.concatenate([[0.0], world.user_cdf]))[:users]
    user_cdf = np.concatenate([np.cumsum(weight_u) / weight_u.sum(), np.ones(len(world.trait) - users)])
    active = np.arange(len(bias)) < items
    weight = np.exp(pop_tilt * bias)
    groups = (np.flatnonzero(~world.positive & active), np.flatnonzero(world.positive & active))
    if min(len(g) for g in groups) == 0:
        raise ConfigError(f"synthesize_days: {items} items leave a tag sign without items; start with more items")
    totals = [weight[g].sum() for g in groups]
    cdfs = (np.cumsum(weight[groups[0]]) / totals[0], np.cumsum(weight[groups[1]]) / totals[1])
    p_in_group = weight / np.where(world.positive, totals[1], totals[0])
    return dataclasses.replace(
        world,
        user_cdf=user_cdf,
        bias=bias,
        groups=groups,
        cdfs=cdfs,
        p_in_group=p_in_group,
        confounding=confounding,
    )


def synthesize_days(
    out: Path,
    days: int,
    rows_per_day: int,
    *,
    users: int = 400,
    items: int = 200,
    new_users_per_day: int = 10,
    new_items_per_day: int = 5,
    popularity_drift: float = 0.05,
    policy_change_day: int | None = None,
    confounding_after: float = 0.5,
    headroom: float = 2.0,
    dim: int = 8,
    history_len: int = 8,
    confounding: float = 2.0,
    activity: float = 1.0,
    num_tags: int = 16,
    pop_tilt: float = 0.5,
    session_noise: float = 0.5,
    valid_fraction: float = 0.1,
    ood_fraction: float = 0.1,
    seed: int = 0,
    name: str = "synth-days",
    overwrite: bool = False,
) -> Manifest:
    """Write a synthetic day store of ``days`` days of ``rows_per_day`` exposures each, from START_DAY.

    Day d has ``users + d * new_users_per_day`` users and ``items + d * new_items_per_day`` items
    (newcomers get the next indices); each item's popularity bias moves by ``popularity_drift`` times
    its own fixed N(0, 1) trend per day; from day ``policy_change_day`` on, the logging policy's
    confounding is ``confounding_after`` instead of ``confounding``. Tables have ``headroom`` times
    the last day's users and items as rows. A ``ood_fraction`` of each day's rows is test_ood (the
    flipped policy), a ``valid_fraction`` valid, the rest train.
    """
    total_users = users + (days - 1) * new_users_per_day
    total_items = items + (days - 1) * new_items_per_day
    if days < 1 or rows_per_day < 10 or min(users, items, new_users_per_day, new_items_per_day) < 0:
        raise ConfigError("synthesize_days: need days >= 1, rows_per_day >= 10 and non-negative sizes")
    if not (headroom >= 1.0 and valid_fraction > 0.0 and ood_fraction >= 0.0 and valid_fraction + ood_fraction < 1):
        raise ConfigError("synthesize_days: need headroom >= 1, valid_fraction > 0 and valid + ood fractions < 1")
    world = _world(total_users, total_items, dim, num_tags, pop_tilt, activity, confounding, seed)
    rng = _Counter(seed)
    history = _histories(world, rng, history_len, 4096)
    edges = session_edges(session_noise)
    trend = np.random.default_rng([seed, 1]).standard_normal(total_items)
    n_valid, n_ood = int(rows_per_day * valid_fraction), int(rows_per_day * ood_fraction)
    sizes = {"train": rows_per_day - n_valid - n_ood, "valid": n_valid, "test_ood": n_ood}
    day_rows: dict[str, dict[str, int]] = {}  # manifest.source["days"], filled day by day
    manifest = Manifest(
        name=name,
        sparse=[
            SparseFeature(USER, total_users, "user", table_rows=math.ceil(headroom * total_users)),
            SparseFeature(ITEM, total_items, "item", table_rows=math.ceil(headroom * total_items)),
            SparseFeature(TAG, num_tags, "item"),
        ],
        confounders={CONF_SESSION: SESSION_BUCKETS},
        history_max_len=history_len,
        has_true_ctr=True,
        source={
            "generator": "distrec.data.days",
            "seed": seed,
            "drift": {
                "users": users,
                "items": items,
                "new_users_per_day": new_users_per_day,
                "new_items_per_day": new_items_per_day,
                "popularity_drift": popularity_drift,
                "policy_change_day": policy_change_day,
                "confounding": confounding,
                "confounding_after": confounding_after,
                "start_day": START_DAY.isoformat(),
            },
            "days": day_rows,
        },
    )
    schema = manifest.schema()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for d in range(days):
            changed = policy_change_day is not None and d >= policy_change_day
            day_world = _drifted(
                world,
                users + d * new_users_per_day,
                items + d * new_items_per_day,
                world.bias + popularity_drift * d * trend,
                confounding_after if changed else confounding,
                pop_tilt,
            )
            front_door = _front_door_table(day_world)
            ds = partition_name((START_DAY + dt.timedelta(days=d)).isoformat())
            for s, (split, rows) in enumerate(sizes.items()):
                if rows == 0:
                    continue
                part = _Partition(split, d, rows, (d * len(DAY_SPLITS) + s) * STRIDE, split == "test_ood", 0.0)
                (tmp / split / ds).mkdir(parents=True)
                table = _chunk(day_world, rng, part, 0, rows, history, front_door, edges, session_noise, schema)
                pq.write_table(table, tmp / split / ds / "part-00000.parquet")
                manifest.splits.setdefault(split, []).append(ds)
                manifest.rows[split] = manifest.rows.get(split, 0) + rows
            day_rows[ds.removeprefix("ds=")] = {s: n for s, n in sizes.items() if n}
        manifest.write(tmp)
    return manifest


def window_view(store: Path, manifest: Manifest, train_days: list[str], holdout: str, out: Path) -> Manifest:
    """A dataset at ``out`` for one night: ``train_days`` as train and valid, ``holdout`` as test_id (its
    logged rows: train and valid) and test_ood. Its files are symbolic links into ``store``, in real
    directories inside ``out`` (a dataset's partitions must lie inside it)."""
    layout: dict[str, list[tuple[str, str]]] = {"train": [], "valid": [], "test_id": [], "test_ood": []}
    for day in train_days:
        for split in ("train", "valid"):
            if partition_name(day) in manifest.splits.get(split, []):
                layout[split].append((split, day))
    for split, target in (("train", "test_id"), ("valid", "test_id"), ("test_ood", "test_ood")):
        if partition_name(holdout) in manifest.splits.get(split, []):
            layout[target].append((split, holdout))
    view = dataclasses.replace(manifest, name=f"{manifest.name}@{holdout}", splits={}, rows={})
    with atomic_dir(out, overwrite=True) as tmp:
        for target, parts in layout.items():
            for source_split, day in parts:
                ds = partition_name(day)
                directory = tmp / target / ds
                directory.mkdir(parents=True, exist_ok=True)
                for f in sorted((store / source_split / ds).glob("*.parquet")):
                    os.symlink(f.resolve(), directory / f"{source_split}-{f.name}")
                    view.rows[target] = view.rows.get(target, 0) + pq.ParquetFile(f).metadata.num_rows
                if ds not in view.splits.setdefault(target, []):
                    view.splits[target].append(ds)
        view.write(tmp)
    return view
