"""Importer presets: ready-made :func:`~distrec.data.importer.import_interactions` arguments for public logs.

A preset is an argument bundle (column names, label rule, partition granularity, confounders, ...)
plus an optional ``prepare`` step that derives columns from the raw tables, vectorised with
pyarrow/numpy, before the importer checks them. Explicit arguments override the preset's
(:func:`resolve`); a derived column is built whether or not the final arguments use it.

``movielens``
    MovieLens ``ratings.csv`` (``userId, movieId, rating, timestamp``): label ``rating >= 4``, split per
    user by time (``split="per-user-time"``: each user's last 10% of ratings, at least one, are test_id
    and the 10% before them valid), monthly partitions (22 years: daily ones would be ~4,000 tiny
    files). Not the importer's global time cut: MovieLens users rate in bursts, so the last 10% of the
    log belongs to few users, most of them new (on ml-latest-small 74 test_id users, 55 of them in
    activity group q1, 54 without any train row, none in q3/q4; 92% of the test rows from q1), and the
    activity-group analysis measured cold start only; per user, every user with 3+ ratings is in train
    and test_id (on ml-latest-small all 610 users, 20% of them in each quintile).
    ``--split global-time`` restores the global cut. Confounder
    ``conf_popularity``: the item's popularity quintile (its number of ratings in the file; edges are
    row-weighted quantiles), a descriptor used by the CRL penalty only, never a model input.
    MovieLens has no random exposures, so the dataset has no ``test_ood`` split (not an empty one).
``open-bandit``
    Open Bandit Dataset logs: train/valid/test_id from the Bernoulli-TS log
    (``bts/<campaign>/<campaign>.csv``), ``test_ood`` from the uniform-random log of the same campaign
    (``--ood``; by default ``random/<campaign>/<campaign>.csv`` beside ``bts/`` when it exists).
    Label ``click``, propensity ``propensity_score``. The split stays the global time cut
    (``"global-time"``, the importer's default): test_ood is the whole random log, not a per-user
    hold-out, and test_id stays a later period of the same logging policy (as the Open Bandit
    Pipeline's ``is_timeseries_split``); the "users" are combinations of four hashed user features,
    each shared by many visitors, so "a user's last interactions" has no sequential meaning; and the
    cut leaves few cold-start test users (on the small sample 7% of the test_id users are in q1, 1% of
    its rows). There is no user id: the user is the combination
    of the four hashed ``user_feature_*`` columns (``user_key``, joined with ``|``, exact and reversible
    through ``vocab/user_id.parquet``), which also stay user-side sparse features. Confounders, derived
    by the importer like those of any log (``derive_confounders``; ``--no-derived-confounders`` drops
    them): ``conf_position`` (the slot, 1-3, from ``position_col="position"``) and ``conf_propensity``
    (quintile buckets of the propensity, edges from the main log, applied to both logs).
    ``item_feature_1..3`` of the main log's ``item_context.csv`` are joined by item as item-side sparse
    features (each log ships its own salted hashes of the same features, so the main log's table
    serves both). The policy column is ``bts`` / ``random``; the policy is constant on the logged
    (Bernoulli-TS) rows, so the importer derives no ``conf_policy`` from it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distrec.data.importer import (
    BINS,
    CONF_POSITION,
    CONF_PROPENSITY,
    bucketize,
    import_interactions,
    quantile_edges,
    read_table,
)
from distrec.data.schema import Manifest
from distrec.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

Options = dict[str, Any]
Prepared = tuple[pa.Table, pa.Table | None, dict[str, object]]


@dataclass(frozen=True)
class Preset:
    """``defaults(interactions, ood)``: import_interactions arguments; ``prepare(options, main, ood)``:
    derived columns, given the final arguments (with ``interactions`` and ``ood`` paths)."""

    name: str
    summary: str
    defaults: Callable[[Path, Path | None], Options]
    prepare: Callable[[Mapping[str, Any], pa.Table, pa.Table | None], Prepared] | None = None


def _require(path: Path, table: pa.Table, columns: list[str], what: str) -> None:
    if missing := [c for c in columns if c not in table.column_names]:
        raise DataError(f"{path}: missing column(s) {missing} ({what}); it has {table.column_names}")


def _plain(col: pa.ChunkedArray) -> pa.ChunkedArray:
    return col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col


def _common(a: pa.ChunkedArray, b: pa.ChunkedArray) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """Two id columns in one type: their own if equal, else strings (as the importer does)."""
    a, b = _plain(a), _plain(b)
    return (a, b) if a.type.equals(b.type) else (a.cast(pa.string()), b.cast(pa.string()))


# ---------------------------------------------------------------------------------------------- MovieLens

CONF_POPULARITY = "conf_popularity"


def movielens(interactions: Path, ood: Path | None) -> Options:
    """MovieLens ratings: ``rating >= 4`` positive, split per user by time, monthly partitions, a confounder."""
    return {
        "user_col": "userId",
        "item_col": "movieId",
        "label_col": "rating",
        "label_threshold": 4.0,
        "time_col": "timestamp",
        "time_unit": "s",
        "confounder_cols": [CONF_POPULARITY],
        "split": "per-user-time",
        "partition": "month",
        "name": "movielens",
    }


def prepare_movielens(options: Mapping[str, Any], main: pa.Table, ood: pa.Table | None) -> Prepared:
    """Add ``conf_popularity``: quintile of the item's rating count in the main file (0 for unseen items)."""
    item = options["item_col"]
    _require(options["interactions"], main, [item], "the item column")
    if ood is not None:
        _require(options["ood"], ood, [item], "the item column")
    items, others = _common(main[item], ood[item]) if ood is not None else (_plain(main[item]), None)
    vocab = pc.unique(items)
    unseen = len(vocab)  # null ids (which the importer rejects) and OOD items missing from the main file
    index = pc.index_in(items, value_set=vocab).fill_null(unseen).to_numpy()
    counts = np.bincount(index, minlength=unseen + 1)
    counts[unseen] = 0
    popularity = counts[index].astype(np.float64)
    edges = quantile_edges(popularity)
    main = main.append_column(CONF_POPULARITY, bucketize(popularity, edges))
    if ood is not None and others is not None:
        other = pc.index_in(others, value_set=vocab).fill_null(unseen).to_numpy()
        ood = ood.append_column(CONF_POPULARITY, bucketize(counts[other].astype(np.float64), edges))
    notes: dict[str, object] = {"conf_popularity": {"of": item, "rating_count_edges": edges.tolist(), "bins": BINS}}
    return main, ood, notes


# ------------------------------------------------------------------------------------------- Open Bandit

OBD_USER_FEATURES = [f"user_feature_{i}" for i in range(4)]
OBD_ITEM_FEATURES = [f"item_feature_{i}" for i in range(1, 4)]  # item_feature_0 is numeric: not imported
OBD_USER = "user_key"
OBD_POLICY = "behavior_policy"
OBD_CONFOUNDERS = (CONF_POSITION, CONF_PROPENSITY)  # derived by the importer from position_col and propensity_col
OBD_POLICIES = ("bts", "random")


def _campaign_policy(path: Path, default: str) -> str:
    """``bts`` or ``random`` from the Open Bandit layout ``<policy>/<campaign>/<campaign>.csv``."""
    policy = path.resolve().parent.parent.name
    return policy if policy in OBD_POLICIES else default


def _random_log_beside(interactions: Path) -> Path | None:
    """``random/<campaign>/<file>`` next to ``bts/<campaign>/<file>``, if it exists."""
    path = interactions.resolve()
    if path.parent.parent.name != "bts":
        return None
    candidate = path.parent.parent.parent / "random" / path.parent.name / path.name
    return candidate if candidate.is_file() else None


def _item_context(interactions: Path) -> Path | None:
    path = interactions.parent / "item_context.csv"
    return path if path.is_file() else None


def open_bandit(interactions: Path, ood: Path | None) -> Options:
    """Open Bandit: Bernoulli-TS log for training, the uniform-random log as test_ood."""
    if ood is None and (ood := _random_log_beside(interactions)) is not None:
        logger.info("open-bandit: using %s as the out-of-distribution (uniform-random) log", ood)
    item_features = OBD_ITEM_FEATURES if _item_context(interactions) else []
    if not item_features:
        logger.warning("open-bandit: no item_context.csv beside %s; importing without item features", interactions)
    return {
        "user_col": OBD_USER,
        "item_col": "item_id",
        "label_col": "click",
        "time_col": "timestamp",
        "policy_col": OBD_POLICY,
        "propensity_col": "propensity_score",
        "position_col": "position",
        "ood": ood,
        "sparse_cols": [*OBD_USER_FEATURES, *item_features],
        "sparse_sides": {**dict.fromkeys(OBD_USER_FEATURES, "user"), **dict.fromkeys(OBD_ITEM_FEATURES, "item")},
        "split": "global-time",
        "partition": "day",
        "name": f"open-bandit-{interactions.resolve().parent.name}",
    }


def _item_lookup(path: Path, context: pa.Table, item: str, items: pa.ChunkedArray) -> pa.Array:
    """Row index into ``context`` of each item (null where the item has no context row)."""
    keys, values = _common(context["item_id"], items)
    if len(pc.unique(keys)) != len(keys):
        raise DataError(f"{path}: column 'item_id': {len(keys) - len(pc.unique(keys))} duplicate items")
    return pc.index_in(values, value_set=keys)


def prepare_open_bandit(options: Mapping[str, Any], main: pa.Table, ood: pa.Table | None) -> Prepared:
    """Add ``user_key``, ``behavior_policy`` and item features (the importer derives the confounders)."""
    interactions: Path = options["interactions"]
    item = options["item_col"]
    required = [*OBD_USER_FEATURES, item]
    logs = [(interactions, main, _campaign_policy(interactions, "bts"))]
    if ood is not None:
        logs.append((options["ood"], ood, _campaign_policy(options["ood"], "random")))
    for path, table, _ in logs:
        _require(path, table, required, "an Open Bandit log")

    context_path = _item_context(interactions)
    context = None
    if context_path is not None:
        context = read_table(context_path)
        _require(context_path, context, ["item_id", *OBD_ITEM_FEATURES], "Open Bandit item context")

    out = []
    for _, table, policy in logs:
        user = pc.binary_join_element_wise(*(_plain(table[c]).cast(pa.string()) for c in OBD_USER_FEATURES), "|")
        table = table.append_column(OBD_USER, user).append_column(
            OBD_POLICY, pa.repeat(pa.scalar(policy), table.num_rows)
        )
        if context is not None and context_path is not None:  # both set or neither
            rows = _item_lookup(context_path, context, item, table[item])
            for feature in OBD_ITEM_FEATURES:
                table = table.append_column(feature, _plain(context[feature]).take(rows))
        out.append(table)
    notes: dict[str, object] = {
        "user_id": f"{OBD_USER}: {'|'.join(OBD_USER_FEATURES)}",
        "policies": {str(path): policy for path, _, policy in logs},
        "item_context": str(context_path) if context_path else None,
    }
    return out[0], out[1] if ood is not None else None, notes


# ---------------------------------------------------------------------------------------------- registry

PRESETS: dict[str, Preset] = {
    "movielens": Preset(
        "movielens",
        "MovieLens ratings.csv: rating >= 4, per-user time split, monthly partitions",
        movielens,
        prepare_movielens,
    ),
    "open-bandit": Preset(
        "open-bandit", "Open Bandit: Bernoulli-TS log, uniform-random --ood", open_bandit, prepare_open_bandit
    ),
}

# import_interactions' own defaults, for the arguments a prepare step reads
_BASE = {"item_col": "item_id", "ood": None}


def resolve(preset: str | None, interactions: str | Path, **overrides: Any) -> Options:
    """Keyword arguments for ``import_interactions(interactions, out, **options)``.

    The preset's values, with ``overrides`` (the explicitly given arguments) on top; ``prepare`` is
    bound to the final arguments. Without a preset, just ``overrides``.
    """
    interactions = Path(interactions)
    if overrides.get("ood") is not None:
        overrides["ood"] = Path(overrides["ood"])
    if preset is None:
        return dict(overrides)
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    spec = PRESETS[preset]
    options = spec.defaults(interactions, overrides.get("ood")) | overrides
    options["notes"] = {"preset": preset, **dict(options.get("notes") or {})}
    if spec.prepare is not None:
        context = {**_BASE, **options, "interactions": interactions}
        options["prepare"] = partial(spec.prepare, context)
    return options


def import_preset(preset: str | None, interactions: str | Path, out: str | Path, **overrides: Any) -> Manifest:
    """``import_interactions`` with a preset's arguments (see :func:`resolve`)."""
    options = resolve(preset, interactions, **overrides)
    return import_interactions(Path(interactions), Path(out), **options)
