"""Import an interaction log (CSV or Parquet) into the canonical dataset format of :mod:`distrec.data.schema`.

Conventions (see :func:`import_interactions`):

* ids of any type are mapped to dense indices in sorted order of the raw ids of the main file; the
  mappings are written to ``OUT/vocab/<feature>.parquet`` (columns ``raw``, ``index``).
* ``--ood`` rows whose user or item does not occur in the main file are dropped (count logged and
  recorded in ``manifest.source``): test_ood measures a shift of exposure, not cold start.
* categorical features (sparse and confounder columns) are dictionary-encoded over main and OOD rows
  together; a null is a category of its own.
* times are numbers in ``time_unit`` since the epoch, or Arrow timestamps; stored as int64 seconds.
* ``hist_item_ids`` holds the user's last ``history_len`` positives strictly before the row's time,
  oldest first, over all imported rows (main and OOD) whatever their split.
* one Parquet file per (split, partition): ``partition="day"`` gives ``ds=YYYY-MM-DD`` directories,
  ``"month"`` gives one per calendar month, named (still hive style, still a date) by its first day,
  ``ds=YYYY-MM-01``, so readers that parse ``ds`` as a date and sort it keep working.
* splits (``split``): random-exposure rows (``random_col``, or ``policy_col == "random"``) and every
  ``--ood`` row are test_ood; the other ("logged") rows go to train, valid and test_id by one of
  :data:`SPLIT_MODES`:

  - ``"global-time"`` (the default): one cut over all logged rows sorted by time: the latest
    ``test_fraction`` of them (rounded) are test_id, the ``valid_fraction`` before them valid, the rest
    train. Every valid/test row is later than every train row, but users whose activity is all recent
    have no train rows: on MovieLens most test_id users are cold-start users (activity group q1).
  - ``"per-user-time"``: leave-last-out per user, the protocol of RecBole's ``group_by: user``,
    ``order: TO``, ``split: RS`` and of most sequential-recommendation papers. Each user's logged rows sorted by time
    (ties in file order); of a user's ``n`` rows the last ``round(n * test_fraction)`` are test_id and
    the ``round(n * valid_fraction)`` before them valid (``round`` as Python's, half to even), each at
    least 1 when its fraction is above 0 (so ``0.1`` gives leave-one-out for users with up to 14 rows)
    and capped so that at least one train row remains (valid shrinks first). A user with fewer logged
    rows than the non-empty splits (``< 3`` with both fractions above 0) keeps all of them in train;
    their number is ``manifest.source["split_train_only_users"]``. Within a user, train rows are no later than valid
    rows, which are no later than test_id rows; across users the splits overlap in time, so the same
    ``ds=`` partition can occur in several splits, and train holds other users' interactions later
    than a test row (the usual leakage of leave-last-out, accepted for the per-user analysis). Every
    user with enough rows is in train and test_id, so the activity groups (quintiles of train rows per
    user) of test_id users are spread over q1..q5.

  The mode and fractions are recorded in ``manifest.source`` (``split``, ``valid_fraction``,
  ``test_fraction``). Histories do not depend on the split (above), so a test row's history never
  holds the row itself, a later row or a row of the same second.
* ``valid_random_fraction``: the earliest fraction (by time) of the random-exposure rows form
  ``valid_random`` instead of test_ood: a validation split under the random policy, the only one on
  which settings that trade in-distribution fit for robustness to an exposure shift (CRL's ``beta``)
  can be chosen (``train.valid_split=valid_random``); the rest stay test_ood, all later in time.
* a split without rows (e.g. test_ood of a log without random exposures and no ``--ood``) is left
  out of the manifest's ``splits`` and ``rows`` and gets no directory: readers check membership.
* ``manifest.source["days"]`` is ``{YYYY-MM-DD: {split: rows}}`` of every partition (a month's under its
  first day), so an imported dataset is a day store the nightly reads (:mod:`distrec.data.days`).
* ``headroom`` sizes the user, item and sparse-feature tables at ``ceil(headroom * cardinality)`` rows
  (``SparseFeature.table_rows``), leaving room for the ids later appends bring.
* :func:`append_interactions` (``distrec data import --append``) adds new days to an imported dataset:
  known raw ids keep their indices, new ones get the next indices (within the tables' headroom) or
  are hashed onto known ones (``new_ids="hash"``); see its docstring.
* ``prepare`` (used by :mod:`distrec.data.presets`) may derive columns from the raw tables before any
  check, e.g. a user id built from user features; its notes go to the manifest.
* derived confounders (``derive_confounders=True``, the default; see :func:`exposure_confounders`): the
  columns that describe the exposure become confounder columns of their own, so that CRL has an
  observed C even when no ``confounder_cols`` are given: ``conf_policy`` (dictionary code of
  ``policy_col``), ``conf_position`` (dictionary code of ``position_col``, the exposure's slot) and
  ``conf_propensity`` (quintile bucket of ``propensity_col``; edges from the main file's non-random
  rows, null propensities in bucket :data:`BINS`). Each is skipped, with a logged note, when its name
  is already an explicit sparse/confounder column (the explicit one is kept) or when it is constant
  on the main file's non-random rows (the rows CRL trains on: e.g. one logging policy). What was
  derived is ``manifest.source["derived_confounders"]`` (``{name: "from <column>: <how>"}``), what was
  skipped ``manifest.source["derived_confounders_skipped"]``, the propensity edges
  ``manifest.source["propensity_edges"]``.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from distrec.data.schema import (
    BASE_SCHEMA,
    HISTORY,
    IS_RANDOM,
    ITEM,
    LABEL,
    MANIFEST,
    POLICY,
    PROPENSITY,
    SPLITS,
    TRUTHS,
    TS,
    USER,
    Manifest,
    Side,
    SparseFeature,
    partition_name,
)
from distrec.data.validate import validate_table
from distrec.errors import ConfigError, DataError
from distrec.io import atomic_dir

logger = logging.getLogger(__name__)

TIME_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
DEFAULT_POLICY = "logging"
RANDOM_POLICY = "random"
WRITE_ROWS = 1_000_000  # rows per Parquet write; bounds the history lists built at once
PARTITIONS = {"day": "datetime64[D]", "month": "datetime64[M]", "year": "datetime64[Y]"}  # -> numpy unit
# partition="auto": the finest granularity giving at most AUTO_MAX_PARTITIONS partitions, or partitions of
# AUTO_MIN_ROWS rows on average (20 years of a 100k-row log: 240 months, not 3,844 days of ~26 rows)
AUTO_MAX_PARTITIONS = 400
AUTO_MIN_ROWS = 10_000
SPLIT_MODES = ("global-time", "per-user-time")  # how logged rows are cut into train / valid / test_id
NEW_IDS = ("index", "hash")  # what an append does with raw ids the dataset has not seen
BINS = 5  # quantile bins of bucketed confounders (propensity here, popularity in the MovieLens preset)
CONF_POLICY = "conf_policy"
CONF_POSITION = "conf_position"
CONF_PROPENSITY = "conf_propensity"

# (main table, OOD table or None) -> (main, OOD, notes for manifest.source["prepared"])
Prepare = Callable[[pa.Table, pa.Table | None], tuple[pa.Table, pa.Table | None, dict[str, object]]]


def partition_periods(ts: np.ndarray, partition: str) -> np.ndarray:
    """The period (day or month) of each time in seconds, as numpy datetime64 values (floored)."""
    if partition not in PARTITIONS:
        raise ConfigError(f"partition {partition!r}: expected one of {sorted(PARTITIONS)}")
    return ts.astype("datetime64[s]").astype(PARTITIONS[partition])


def auto_partition(ts: np.ndarray) -> str:
    """The granularity ``partition="auto"`` picks for rows at times ``ts`` (seconds); see AUTO_MAX_PARTITIONS."""
    for partition in ("day", "month"):
        periods = len(np.unique(partition_periods(ts, partition)))
        if periods <= AUTO_MAX_PARTITIONS or len(ts) >= AUTO_MIN_ROWS * periods:
            return partition
    return "year"


def period_partition(period: np.datetime64) -> str:
    """Hive directory of a period: ``ds=`` its first day (``ds=YYYY-MM-01`` for a month)."""
    return partition_name(str(period.astype("datetime64[D]")))


def quantile_edges(values: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Inner edges of ``bins`` quantile bins (``np.quantile``) of the finite ``values`` (duplicates merged)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(0)
    return np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))


def bucketize(values: np.ndarray, edges: np.ndarray) -> pa.Array:
    """Bin index (number of edges <= value) of each value as int64; NaN gives null."""
    bucket = np.searchsorted(edges, values, side="right").astype(np.int64)
    return pa.array(bucket, pa.int64(), mask=~np.isfinite(values))


def propensity_buckets(propensity: np.ndarray, edge_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(bucket, edges)``: the quintile bucket ``0..BINS-1`` of each propensity, ``BINS`` where it is NaN.

    The edges are :func:`quantile_edges` of ``propensity[edge_rows]`` (the importer passes the main
    file's non-random rows); a value on an edge goes to the upper bucket.
    """
    edges = quantile_edges(propensity[edge_rows])
    return bucketize(propensity, edges).fill_null(BINS).to_numpy(zero_copy_only=False).astype(np.int64), edges


def gather_lists(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> pa.ListArray:
    """List array whose row r is ``flat[starts[r] : starts[r] + lengths[r]]``, built without a Python loop."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    index = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat[index], pa.int64()))


def history_index(
    user: np.ndarray, ts: np.ndarray, item: np.ndarray, positive: np.ndarray, history_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's last ``history_len`` positive items of its user strictly before its time, vectorised.

    Returns ``(positives, starts, lengths)``: row r's history, oldest first, is
    ``positives[starts[r] : starts[r] + lengths[r]]`` (see :func:`gather_lists`).
    """
    order = np.lexsort((ts, user))
    u, t, p = user[order], ts[order], positive[order]
    at = np.arange(len(order))
    new_user = np.r_[True, u[1:] != u[:-1]]
    new_time = new_user | np.r_[True, t[1:] != t[:-1]]
    user_start = np.maximum.accumulate(np.where(new_user, at, 0))
    time_start = np.maximum.accumulate(np.where(new_time, at, 0))
    before = np.r_[0, np.cumsum(p)]  # positives at sorted positions < i
    end = before[time_start]  # so equal times never see each other
    length = np.minimum(end - before[user_start], history_len)
    starts = np.empty(len(order), dtype=np.int64)
    lengths = np.empty(len(order), dtype=np.int64)
    starts[order] = end - length
    lengths[order] = length
    return item[order][p], starts, lengths


@dataclass(frozen=True)
class _Columns:
    """Raw column names of an input file."""

    user: str
    item: str
    label: str
    time: str
    policy: str | None
    propensity: str | None
    random: str | None
    position: str | None
    categorical: tuple[str, ...]

    def required(self) -> list[str]:
        optional = [self.policy, self.propensity, self.random, self.position]
        return [self.user, self.item, self.label, self.time, *(c for c in optional if c), *self.categorical]


@dataclass
class _Log:
    """One input file's rows after checks, ids and categories still raw."""

    user: pa.ChunkedArray
    item: pa.ChunkedArray
    label: np.ndarray  # float32 0/1
    ts: np.ndarray  # int64 seconds
    policy: pa.ChunkedArray  # string
    propensity: pa.ChunkedArray  # float32, nullable
    is_random: np.ndarray  # bool
    categorical: dict[str, pa.ChunkedArray]
    position: pa.ChunkedArray | None = None  # the exposure's slot, any type, nullable

    def filter(self, keep: np.ndarray) -> _Log:
        mask = pa.array(keep)
        return _Log(
            self.user.filter(mask),
            self.item.filter(mask),
            self.label[keep],
            self.ts[keep],
            self.policy.filter(mask),
            self.propensity.filter(mask),
            self.is_random[keep],
            {name: col.filter(mask) for name, col in self.categorical.items()},
            self.position.filter(mask) if self.position is not None else None,
        )


def read_table(path: Path) -> pa.Table:
    """A CSV or Parquet file as an Arrow table; unreadable, empty or unknown files raise DataError."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    suffixes = [s.lower() for s in path.suffixes]
    if ".csv" in suffixes:
        kind, reader = "CSV", pcsv.read_csv
        _check_text(path)
    elif suffixes[-1:] in ([".parquet"], [".pq"]):
        kind, reader = "Parquet", pq.read_table
    else:
        raise DataError(f"{path}: unsupported file type {''.join(suffixes)!r}; expected .csv or .parquet")
    try:
        table = reader(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: unreadable {kind} file: {exc}") from exc
    if table.num_rows == 0:
        raise DataError(f"{path}: empty file (0 rows)")
    names = table.column_names
    if duplicated := sorted({n for n in names if names.count(n) > 1}):
        raise DataError(f"{path}: duplicated column(s) {duplicated}; every column name must be unique")
    return table


def _check_text(path: Path, probe: int = 1 << 16) -> None:
    """A CSV file must be UTF-8 text: binary content is named here rather than echoed by the parser."""
    with open(path, "rb") as f:
        head = f.read(probe)
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < probe)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text CSV file (binary content at byte {exc.start})") from exc
    if (at := head.find(b"\0")) >= 0:
        raise DataError(f"{path}: not a text CSV file (a NUL byte at byte {at})")


def _plain(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Dictionary-typed columns (common in Parquet) decoded to their value type."""
    return col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _numbers(path: Path, name: str, col: pa.ChunkedArray, hint: str = "") -> np.ndarray:
    """A numeric column as float64, rejecting other types, nulls and NaN/inf."""
    if not _is_number(col.type):
        raise DataError(f"{path}: column {name!r}: type {col.type} is not numeric{hint}")
    values = col.cast(pa.float64()).to_numpy()
    if n := int(np.count_nonzero(~np.isfinite(values))):
        raise DataError(f"{path}: column {name!r}: {n} null, NaN or infinite values")
    return values


def _labels(path: Path, name: str, col: pa.ChunkedArray, threshold: float | None) -> np.ndarray:
    hint = "" if threshold is not None else "; labels must be 0/1"
    values = _numbers(path, name, col, hint)
    if threshold is not None:
        return (values >= threshold).astype(np.float32)
    if n := int(np.count_nonzero((values != 0) & (values != 1))):
        raise DataError(f"{path}: column {name!r}: {n} values not in {{0, 1}}; pass label_threshold to binarise")
    return values.astype(np.float32)


def _seconds(path: Path, name: str, col: pa.ChunkedArray, time_unit: str) -> np.ndarray:
    """Event times as int64 seconds since the epoch; a time before 1970 is taken for a unit mistake."""
    seconds = _epoch_seconds(path, name, col, time_unit)
    if n := int(np.count_nonzero(seconds < 0)):
        raise DataError(f"{path}: column {name!r}: {n} negative times (before 1970-01-01)")
    return seconds


def _epoch_seconds(path: Path, name: str, col: pa.ChunkedArray, time_unit: str) -> np.ndarray:
    if pa.types.is_timestamp(col.type):
        if col.null_count:
            raise DataError(f"{path}: column {name!r}: {col.null_count} null values")
        return col.cast(pa.int64()).to_numpy() // TIME_UNITS[col.type.unit]
    if pa.types.is_integer(col.type):
        if col.null_count:
            raise DataError(f"{path}: column {name!r}: {col.null_count} null values")
        return col.cast(pa.int64()).to_numpy() // TIME_UNITS[time_unit]
    if pa.types.is_floating(col.type):
        return np.floor(_numbers(path, name, col) / TIME_UNITS[time_unit]).astype(np.int64)
    raise DataError(f"{path}: column {name!r}: type {col.type} is neither a number nor a timestamp")


def _load(path: Path, table: pa.Table, cols: _Columns, threshold: float | None, time_unit: str) -> _Log:
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows left after preparation")
    if missing := [c for c in cols.required() if c not in table.column_names]:
        raise DataError(f"{path}: missing column(s) {missing}; it has {table.column_names}")
    for name in (cols.user, cols.item):
        if n := table[name].null_count:
            raise DataError(f"{path}: column {name!r}: {n} null ids")
    label = _labels(path, cols.label, table[cols.label], threshold)
    ts = _seconds(path, cols.time, table[cols.time], time_unit)
    n_rows = table.num_rows

    policy: pa.ChunkedArray | None = None
    if cols.policy:
        policy = _plain(table[cols.policy]).cast(pa.string())
        if n := policy.null_count:
            raise DataError(f"{path}: column {cols.policy!r}: {n} null values")
    if cols.random:
        flags = _numbers(path, cols.random, table[cols.random])
        if n := int(np.count_nonzero((flags != 0) & (flags != 1))):
            raise DataError(f"{path}: column {cols.random!r}: {n} values not in {{0, 1}}")
        is_random = flags == 1
    elif policy is not None:
        is_random = pc.equal(policy, RANDOM_POLICY).to_numpy()
    else:
        is_random = np.zeros(n_rows, dtype=bool)
    if policy is None:
        policy = pa.chunked_array([np.where(is_random, RANDOM_POLICY, DEFAULT_POLICY)], pa.string())

    if cols.propensity:
        raw = table[cols.propensity]
        if not _is_number(raw.type):
            raise DataError(f"{path}: column {cols.propensity!r}: type {raw.type} is not numeric")
        values = raw.cast(pa.float64()).to_numpy()  # nulls (unknown propensities) become NaN and are kept
        known = ~np.asarray(pc.is_null(raw))
        if n := int(np.count_nonzero(known & ~((values > 0) & (values <= 1)))):
            raise DataError(f"{path}: column {cols.propensity!r}: {n} values NaN or outside (0, 1]")
        propensity = raw.cast(pa.float32())
    else:
        propensity = pa.chunked_array([pa.nulls(n_rows, pa.float32())])

    return _Log(
        user=_plain(table[cols.user]),
        item=_plain(table[cols.item]),
        label=label,
        ts=ts,
        policy=policy,
        propensity=propensity,
        is_random=is_random,
        categorical={c: _plain(table[c]) for c in cols.categorical},
        position=_plain(table[cols.position]) if cols.position else None,
    )


def _unify(a: pa.ChunkedArray, b: pa.ChunkedArray) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """The same column of two files in one type: their own if equal, else strings."""
    if a.type.equals(b.type):
        return a, b
    return a.cast(pa.string()), b.cast(pa.string())


def _align_ood(main: _Log, other: _Log, main_path: Path, ood_path: Path) -> tuple[_Log, int]:
    """Cast both logs' raw columns to common types; drop OOD rows whose user or item the main log lacks."""
    main.user, other.user = _unify(main.user, other.user)
    main.item, other.item = _unify(main.item, other.item)
    for c in main.categorical:
        main.categorical[c], other.categorical[c] = _unify(main.categorical[c], other.categorical[c])
    if main.position is not None and other.position is not None:
        main.position, other.position = _unify(main.position, other.position)
    seen_user = np.asarray(pc.is_in(other.user, value_set=pc.unique(main.user)))
    keep = seen_user & np.asarray(pc.is_in(other.item, value_set=pc.unique(main.item)))
    dropped = int(len(keep) - keep.sum())
    if dropped == len(keep):
        raise DataError(f"{ood_path}: none of its {dropped} rows has a user and an item seen in {main_path}")
    if dropped:
        logger.warning(
            "%s: dropped %d of %d rows whose user or item is unseen in %s", ood_path, dropped, len(keep), main_path
        )
    return other.filter(keep), dropped


def _concat(arrays: list[pa.ChunkedArray]) -> pa.Array:
    return pa.chunked_array([chunk for a in arrays for chunk in a.chunks], type=arrays[0].type).combine_chunks()


def _vocab(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Distinct values, sorted (null last): index i of the vocabulary is dense id i."""
    distinct = pc.unique(values)
    return distinct.take(pc.sort_indices(distinct))


def _encode(values: pa.ChunkedArray | pa.Array, vocab: pa.Array) -> np.ndarray:
    """Dense indices of ``values``, all of which are in ``vocab``."""
    return pc.index_in(values, value_set=vocab).to_numpy().astype(np.int64)


@dataclass
class Derived:
    """Confounder columns derived from the exposure columns (see :func:`exposure_confounders`)."""

    codes: dict[str, np.ndarray]  # name -> int64 code of every row (main rows, then OOD rows)
    cardinality: dict[str, int]
    vocab: dict[str, pa.Array]  # name -> raw value of each code, for the dictionary-coded ones
    notes: dict[str, str]  # name -> "from <column>: <how>"
    skipped: dict[str, str]  # name -> "from <column>: not derived: <why>"
    propensity_edges: list[float] | None = None


def exposure_confounders(
    cols: _Columns,
    policy: pa.Array,
    position: pa.Array | None,
    propensity: pa.Array,
    logged: np.ndarray,
    taken: set[str],
) -> Derived:
    """Exposure confounders from the policy, position and propensity columns named in ``cols``.

    ``policy``, ``position`` and ``propensity`` hold every imported row (main, then OOD); ``logged``
    marks the main file's non-random rows. ``conf_policy`` and ``conf_position`` are dictionary codes
    over all rows (sorted values, a null is a category of its own), as other categorical columns;
    ``conf_propensity`` is :func:`propensity_buckets` with edges from the ``logged`` rows, cardinality
    ``BINS`` (``BINS + 1`` when some propensity is null). A name in ``taken`` (an explicit column) is
    skipped, as is a column constant on the ``logged`` rows: it carries no information where CRL trains.
    """
    candidates: list[tuple[str, str, pa.Array | None]] = []
    if cols.policy:
        candidates.append((CONF_POLICY, cols.policy, policy))
    if cols.position and position is not None:
        candidates.append((CONF_POSITION, cols.position, position))
    if cols.propensity:
        candidates.append((CONF_PROPENSITY, cols.propensity, None))
    out = Derived({}, {}, {}, {}, {})
    for name, column, values in candidates:
        if name in taken:
            out.skipped[name] = f"from {column}: not derived: {name!r} is an explicit column, kept as given"
            logger.info("confounder %s %s", name, out.skipped[name])
            continue
        edges: np.ndarray | None = None
        vocab: pa.Array | None = None
        if values is not None:
            vocab = _vocab(values)
            codes, cardinality = _encode(values, vocab), len(vocab)
            what = "logging policy" if name == CONF_POLICY else "exposure's position"
            how = f"dictionary code of the {what} ({cardinality} values, vocab/{name}.parquet)"
        else:
            p = propensity.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
            codes, edges = propensity_buckets(p, logged)
            nulls = bool((codes == BINS).any())
            cardinality = BINS + nulls
            shown = ", ".join(f"{e:.4g}" for e in edges)
            how = (
                f"quantile bucket 0-{BINS - 1} of the propensity, edges [{shown}] from the main file's non-random rows"
            )
            how += f"; null propensity: bucket {BINS}" if nulls else ""
        if len(np.unique(codes[logged])) < 2:
            out.skipped[name] = f"from {column}: not derived: constant on the main file's non-random rows"
            logger.info("confounder %s %s", name, out.skipped[name])
            continue
        out.codes[name], out.cardinality[name], out.notes[name] = codes, cardinality, f"from {column}: {how}"
        if vocab is not None:
            out.vocab[name] = vocab
        if edges is not None:
            out.propensity_edges = edges.tolist()
        logger.info("derived confounder %s %s", name, out.notes[name])
    return out


def _infer_side(codes: np.ndarray, users: np.ndarray, items: np.ndarray) -> Side:
    """``item`` if the feature is a function of the item, else ``user`` if one of the user, else ``context``."""
    base = int(codes.max()) + 1
    if len(np.unique(items * base + codes)) == len(np.unique(items)):
        return "item"
    if len(np.unique(users * base + codes)) == len(np.unique(users)):
        return "user"
    return "context"


def _assign_splits(
    path: Path, ts: np.ndarray, to_ood: np.ndarray, valid_fraction: float, test_fraction: float
) -> np.ndarray:
    """Index into SPLITS of each row: ``to_ood`` rows are test_ood, the others are cut by time."""
    split = np.full(len(ts), SPLITS.index("test_ood"), dtype=np.int8)
    logged = np.flatnonzero(~to_ood)
    n = len(logged)
    sizes = {"valid": round(n * valid_fraction), "test_id": round(n * test_fraction)}
    sizes = {"train": n - sum(sizes.values()), **sizes}
    fractions = {"train": 1.0, "valid": valid_fraction, "test_id": test_fraction}
    if too_few := [s for s, k in sizes.items() if k == 0 and fractions[s] > 0]:
        raise DataError(f"{path}: {n} non-random rows are too few to fill split(s) {too_few}")
    by_time = logged[np.argsort(ts[logged], kind="stable")]
    split[by_time] = np.repeat([SPLITS.index(s) for s in sizes], list(sizes.values()))
    return split


def per_user_sizes(counts: np.ndarray, valid_fraction: float, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(valid, test)`` rows of each user with ``counts`` logged rows under ``"per-user-time"``.

    ``round(count * fraction)``, at least 1 for a fraction above 0, capped so one train row remains;
    0 and 0 for users with fewer rows than the splits to fill (see the module docstring).
    """
    counts = np.asarray(counts, dtype=np.int64)
    wants_valid, wants_test = int(valid_fraction > 0), int(test_fraction > 0)
    enough = counts >= 1 + wants_valid + wants_test
    test = np.maximum(np.rint(counts * test_fraction).astype(np.int64), wants_test)
    test = np.minimum(test, counts - 1 - wants_valid)
    valid = np.maximum(np.rint(counts * valid_fraction).astype(np.int64), wants_valid)
    valid = np.minimum(valid, counts - 1 - test)
    return np.where(enough, valid, 0), np.where(enough, test, 0)


def _carve_valid_random(split: np.ndarray, ts: np.ndarray, to_ood: np.ndarray, fraction: float) -> int:
    """In place: the earliest ``round(fraction * n)`` of the ``n`` random-exposure rows become valid_random.

    Returns their number.
    """
    random_rows = np.flatnonzero(to_ood)
    count = round(len(random_rows) * fraction)
    if count:
        split[random_rows[np.argsort(ts[random_rows], kind="stable")[:count]]] = SPLITS.index("valid_random")
    return count


def _assign_splits_per_user(
    path: Path, user: np.ndarray, ts: np.ndarray, to_ood: np.ndarray, valid_fraction: float, test_fraction: float
) -> tuple[np.ndarray, int]:
    """Like :func:`_assign_splits`, but each user's last logged rows are its valid and test_id rows.

    Also returns the number of users who keep all their logged rows in train (too few of them).
    """
    split = np.full(len(ts), SPLITS.index("test_ood"), dtype=np.int8)
    logged = np.flatnonzero(~to_ood)
    order = logged[np.lexsort((ts[logged], user[logged]))]  # by user, then time; lexsort is stable
    users, first, counts = np.unique(user[order], return_index=True, return_counts=True)
    valid, test = per_user_sizes(counts, valid_fraction, test_fraction)
    from_end = np.repeat(first + counts, counts) - 1 - np.arange(len(order))  # 0 = the user's last row
    code = np.full(len(order), SPLITS.index("train"), dtype=np.int8)
    code[from_end < np.repeat(test + valid, counts)] = SPLITS.index("valid")
    code[from_end < np.repeat(test, counts)] = SPLITS.index("test_id")
    split[order] = code
    wanted = {"train": 1.0, "valid": valid_fraction, "test_id": test_fraction}
    if too_few := [s for s, f in wanted.items() if f > 0 and not (code == SPLITS.index(s)).any()]:
        need = sum(f > 0 for f in wanted.values())
        raise DataError(
            f"{path}: no user has the {need} non-random rows needed to fill split(s) {too_few} per user "
            f"({len(users)} users, {len(order)} non-random rows)"
        )
    return split, int(np.count_nonzero((valid == 0) & (test == 0) & (valid_fraction + test_fraction > 0)))


def _write_splits(
    tmp: Path,
    out: Path,
    manifest: Manifest,
    columns: dict[str, np.ndarray | pa.Array],
    split: np.ndarray,
    history: tuple[np.ndarray, np.ndarray, np.ndarray],
    partition: str,
) -> None:
    """One ``part-00000.parquet`` per (split, partition) under ``tmp``, rows in time order; fills splits/rows.

    Splits without rows are left out of the manifest (see the module docstring).
    """
    schema = manifest.schema()
    ts = columns[TS]
    periods = partition_periods(ts, partition)
    positives, starts, lengths = history

    def table(rows: np.ndarray) -> pa.Table:
        picked = {c: v.take(rows) if isinstance(v, pa.Array) else v[rows] for c, v in columns.items()}
        picked[HISTORY] = gather_lists(positives, starts[rows], lengths[rows])
        return pa.table(picked, schema=schema)

    for code, split_name in enumerate(SPLITS):
        rows = np.flatnonzero(split == code)
        if len(rows) == 0:
            continue
        rows = rows[np.argsort(ts[rows], kind="stable")]
        for part in np.split(rows, np.flatnonzero(periods[rows][1:] != periods[rows][:-1]) + 1):
            ds = period_partition(periods[part[0]])
            path = tmp / split_name / ds / "part-00000.parquet"
            path.parent.mkdir(parents=True)
            with pq.ParquetWriter(path, schema) as writer:
                for lo in range(0, len(part), WRITE_ROWS):
                    chunk = table(part[lo : lo + WRITE_ROWS])
                    validate_table(chunk, manifest, str(out / path.relative_to(tmp)))
                    writer.write_table(chunk)
            manifest.splits.setdefault(split_name, []).append(ds)
        manifest.rows[split_name] = len(rows)


def import_interactions(
    interactions: Path,
    out: Path,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    label_col: str = "label",
    time_col: str = "timestamp",
    time_unit: str = "s",
    policy_col: str | None = None,
    propensity_col: str | None = None,
    random_col: str | None = None,
    position_col: str | None = None,
    label_threshold: float | None = None,
    ood: Path | None = None,
    confounder_cols: Sequence[str] = (),
    sparse_cols: Sequence[str] = (),
    sparse_sides: Mapping[str, Side] | None = None,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    valid_random_fraction: float = 0.0,
    split: str = "global-time",
    history_len: int = 20,
    partition: str = "auto",
    name: str | None = None,
    prepare: Prepare | None = None,
    notes: Mapping[str, object] | None = None,
    derive_confounders: bool = True,
    headroom: float | None = None,
    overwrite: bool = False,
) -> Manifest:
    """Import ``interactions`` (and optionally an ``ood`` log with the same columns) as a dataset at ``out``.

    Labels are ``label_col >= label_threshold`` when a threshold is given, else must be 0/1. Rows flagged
    random (``random_col`` true, or ``policy_col`` equal to ``"random"``) and all ``ood`` rows form
    ``test_ood``; the other rows are split by time into train, valid (``valid_fraction``) and test_id
    (``test_fraction``): over all of them (``split="global-time"``) or per user, each user's last rows
    (``"per-user-time"``; see the module docstring). ``sparse_cols`` sides come from ``sparse_sides``
    or are inferred (a function of the item: ``item``; of the user: ``user``; else ``context``). MovieLens is
    ``user_col="userId", item_col="movieId", label_col="rating", label_threshold=4.0``
    (``distrec.data.presets`` has it and Open Bandit ready-made). ``partition`` is ``"day"``,
    ``"month"``, ``"year"`` or ``"auto"`` (``auto_partition``: days unless they would be many and small);
    ``prepare`` derives columns from the raw tables first; ``notes`` are added to
    ``manifest.source``; ``headroom`` sizes the id tables for appends (module docstring). Unless
    ``derive_confounders`` is false, ``policy_col``, ``position_col`` (the exposure's slot) and
    ``propensity_col`` also give the confounders ``conf_policy``, ``conf_position`` and
    ``conf_propensity`` (see the module docstring and :func:`exposure_confounders`). Bad input raises
    :class:`DataError` naming the file, column and count, and leaves no output.
    """
    interactions, out = Path(interactions), Path(out)
    categorical = (*sparse_cols, *confounder_cols)
    reserved = {*BASE_SCHEMA.names, *TRUTHS}
    if clash := sorted({c for c in categorical if c in reserved or categorical.count(c) > 1}):
        raise ConfigError(f"sparse/confounder columns {clash} clash with each other or with canonical columns")
    if time_unit not in TIME_UNITS:
        raise ConfigError(f"time_unit {time_unit!r}: expected one of {sorted(TIME_UNITS)}")
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise ConfigError("valid_fraction and test_fraction must be in [0, 1) and sum to less than 1")
    if not 0 <= valid_random_fraction < 1:
        raise ConfigError(f"valid_random_fraction must be in [0, 1), got {valid_random_fraction}")
    if split not in SPLIT_MODES:
        raise ConfigError(f"split {split!r}: expected one of {list(SPLIT_MODES)}")
    if history_len < 0:
        raise ConfigError(f"history_len must be >= 0, not {history_len}")
    if partition not in (*PARTITIONS, "auto"):
        raise ConfigError(f"partition {partition!r}: expected one of {sorted([*PARTITIONS, 'auto'])}")
    if headroom is not None and not headroom >= 1.0:  # also rejects NaN
        raise ConfigError(f"headroom must be >= 1 (table rows per id), not {headroom}")
    cols = _Columns(
        user_col, item_col, label_col, time_col, policy_col, propensity_col, random_col, position_col, categorical
    )

    with atomic_dir(out, overwrite=overwrite) as tmp:
        ood = Path(ood) if ood is not None else None
        main_table, ood_table = read_table(interactions), read_table(ood) if ood is not None else None
        prepared: dict[str, object] = {}
        if prepare is not None:
            main_table, ood_table, prepared = prepare(main_table, ood_table)
        logs = [_load(interactions, main_table, cols, label_threshold, time_unit)]
        dropped = 0
        if ood is not None and ood_table is not None:
            other = _load(ood, ood_table, cols, label_threshold, time_unit)
            other, dropped = _align_ood(logs[0], other, interactions, ood)
            logs.append(other)
        del main_table, ood_table
        vocab = {USER: _vocab(logs[0].user), ITEM: _vocab(logs[0].item)}
        raw = {c: _concat([log.categorical[c] for log in logs]) for c in categorical}
        vocab |= {c: _vocab(values) for c, values in raw.items()}
        policy, propensity = _concat([log.policy for log in logs]), _concat([log.propensity for log in logs])
        columns: dict[str, np.ndarray | pa.Array] = {
            USER: np.concatenate([_encode(log.user, vocab[USER]) for log in logs]),
            ITEM: np.concatenate([_encode(log.item, vocab[ITEM]) for log in logs]),
            LABEL: np.concatenate([log.label for log in logs]),
            TS: np.concatenate([log.ts for log in logs]),
            POLICY: policy,
            PROPENSITY: propensity,
            IS_RANDOM: np.concatenate([log.is_random for log in logs]),
            **{c: _encode(values, vocab[c]) for c, values in raw.items()},
        }
        derived = Derived({}, {}, {}, {}, {})
        if derive_confounders:
            logged = np.concatenate([~logs[0].is_random, *(np.zeros(len(log.ts), bool) for log in logs[1:])])
            positions = [log.position for log in logs if log.position is not None]
            position = _concat(positions) if positions else None
            derived = exposure_confounders(cols, policy, position, propensity, logged, set(categorical))
            vocab |= derived.vocab
            columns |= derived.codes
        elif policy_col or position_col or propensity_col:
            logger.info("derived confounders are turned off: only the explicit confounder columns are kept")
        user, item, ts = columns[USER], columns[ITEM], columns[TS]
        partition = auto_partition(ts) if partition == "auto" else partition
        to_ood = columns[IS_RANDOM] | (np.arange(len(ts)) >= len(logs[0].ts))  # random rows and the OOD file
        split_notes: dict[str, object] = {
            "split": split,
            "valid_fraction": valid_fraction,
            "test_fraction": test_fraction,
            "valid_random_fraction": valid_random_fraction,
        }
        if split == "per-user-time":
            assigned, train_only = _assign_splits_per_user(
                interactions, user, ts, to_ood, valid_fraction, test_fraction
            )
            split_notes["split_train_only_users"] = train_only
        else:
            assigned = _assign_splits(interactions, ts, to_ood, valid_fraction, test_fraction)
        if valid_random_fraction and not _carve_valid_random(assigned, ts, to_ood, valid_random_fraction):
            logger.warning("%s: no random-exposure rows for valid_random (valid_random_fraction)", interactions)
        history = history_index(user, ts, item, columns[LABEL] == 1, history_len)

        sides = dict(sparse_sides or {})

        def rows_for(n: int) -> int | None:
            return math.ceil(headroom * n) if headroom is not None else None

        manifest = Manifest(
            name=name or interactions.stem,
            sparse=[
                SparseFeature(USER, len(vocab[USER]), "user", rows_for(len(vocab[USER]))),
                SparseFeature(ITEM, len(vocab[ITEM]), "item", rows_for(len(vocab[ITEM]))),
                *(
                    SparseFeature(
                        c, len(vocab[c]), sides.get(c) or _infer_side(columns[c], user, item), rows_for(len(vocab[c]))
                    )
                    for c in sparse_cols
                ),
            ],
            confounders={**{c: len(vocab[c]) for c in confounder_cols}, **derived.cardinality},
            history_max_len=history_len,
            source={
                "importer": "distrec.data.importer",
                "interactions": str(interactions),
                "ood": str(ood) if ood is not None else None,
                "columns": {
                    "user": user_col,
                    "item": item_col,
                    "label": label_col,
                    "time": time_col,
                    "policy": policy_col,
                    "propensity": propensity_col,
                    "random": random_col,
                    "position": position_col,
                },
                "label_threshold": label_threshold,
                "time_unit": time_unit,
                "ood_dropped_rows": dropped,
                "partition": partition,
                **split_notes,
                "derive_confounders": derive_confounders,
                "derived_confounders": derived.notes,
                **({"derived_confounders_skipped": derived.skipped} if derived.skipped else {}),
                **({"propensity_edges": derived.propensity_edges} if derived.propensity_edges is not None else {}),
                "vocab": {f: f"vocab/{f}.parquet" for f in vocab},
                **({"prepared": prepared} if prepared else {}),
                **dict(notes or {}),
            },
        )
        _write_splits(tmp, out, manifest, columns, assigned, history, partition)
        manifest.source["days"] = partition_rows(tmp, manifest)
        _write_vocab(tmp, vocab)
        manifest.write(tmp)
    return manifest


def partition_rows(root: Path, manifest: Manifest) -> dict[str, dict[str, int]]:
    """``{YYYY-MM-DD: {split: rows}}`` of a dataset's partitions, from its Parquet footers."""
    days: dict[str, dict[str, int]] = {}
    for split, parts in manifest.splits.items():
        for ds in parts:
            rows = sum(pq.ParquetFile(f).metadata.num_rows for f in sorted((root / split / ds).glob("*.parquet")))
            days.setdefault(ds.removeprefix("ds="), {})[split] = rows
    return {
        day: dict(sorted(counts.items(), key=lambda kv: SPLITS.index(kv[0]))) for day, counts in sorted(days.items())
    }


def _write_vocab(root: Path, vocab: Mapping[str, pa.Array]) -> None:
    """``root/vocab/<feature>.parquet`` (``raw``, ``index``) for each feature, as new files."""
    directory = root / "vocab"
    shutil.rmtree(directory, ignore_errors=True)  # in an append's copy: drop the links, never write through them
    directory.mkdir()
    for feature, values in vocab.items():
        vocab_table = pa.table({"raw": values, "index": np.arange(len(values), dtype=np.int64)})
        pq.write_table(vocab_table, directory / f"{feature}.parquet")


# ---------------------------------------------------------------------------------------------- appends


@contextmanager
def _extending(dataset: Path) -> Iterator[Path]:
    """A sibling copy of ``dataset`` made of hard links (copies where the file system has none), put in
    its place only when the block succeeds: until then the dataset is untouched, and readers holding
    its files keep them. Files of the copy must be replaced (new files, ``os.replace``), never
    rewritten in place: a write would go through the link into the dataset."""

    def link(source: str, target: str) -> None:
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)

    tmp = Path(tempfile.mkdtemp(prefix=f".{dataset.name}.append-", dir=dataset.parent))
    try:
        shutil.copytree(dataset, tmp, copy_function=link, dirs_exist_ok=True)
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.chmod(0o755)  # mkdtemp creates 0700
    aside = tmp.with_name(f".{dataset.name}.replaced-{tmp.name.rsplit('-', 1)[-1]}")
    os.replace(dataset, aside)  # two renames: the dataset is missing only between them, never partial
    os.replace(tmp, dataset)
    shutil.rmtree(aside)


def _stable_hash(value: object, buckets: int) -> int:
    """A bucket of a raw id that is the same in every process and run (Python's ``hash`` is salted)."""
    return int.from_bytes(hashlib.blake2b(repr(value).encode(), digest_size=8).digest(), "little") % buckets


def _as_vocab_type(path: Path, column: str, values: pa.ChunkedArray, vocab: pa.Array) -> pa.Array:
    try:
        return values.combine_chunks().cast(vocab.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(
            f"{path}: column {column!r}: {values.type} values do not convert to the dataset's ids ({vocab.type}): {exc}"
        ) from exc


def _extend_ids(
    path: Path, column: str, feature: SparseFeature, values: pa.ChunkedArray, vocab: pa.Array, new_ids: str
) -> tuple[np.ndarray, pa.Array, int]:
    """``(indices, vocabulary, unseen ids)`` of an appended column: known raw ids keep their indices;
    unseen ones (in sorted order) get the next indices, within the table's rows, or are hashed onto the
    indices there are (``new_ids="hash"``; the vocabulary does not grow)."""
    values = _as_vocab_type(path, column, values, vocab)
    index = pc.index_in(values, value_set=vocab)
    unseen_rows = np.asarray(pc.is_null(index))
    codes = index.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    unseen = _vocab(values.filter(pa.array(unseen_rows)))
    if len(unseen) == 0:
        return codes, vocab, 0
    if new_ids == "hash":
        lookup = np.array([_stable_hash(v, feature.cardinality) for v in unseen.to_pylist()], dtype=np.int64)
    else:
        total = len(vocab) + len(unseen)
        if total > feature.rows:
            room = "no headroom" if feature.rows == feature.cardinality else f"{feature.rows} rows"
            raise DataError(
                f"{path}: column {column!r}: {len(unseen)} new {feature.name} ids would make {total} ids, more than "
                f"its embedding table holds ({room}; manifest table_rows): re-import with a larger --headroom, "
                f"or append with --new-ids hash"
            )
        lookup = np.arange(len(vocab), total, dtype=np.int64)
        vocab = pa.concat_arrays([vocab, unseen])
    codes[unseen_rows] = lookup[pc.index_in(values.filter(pa.array(unseen_rows)), value_set=unseen).to_numpy()]
    return codes, vocab, len(unseen)


def _known_codes(path: Path, column: str, values: pa.ChunkedArray, vocab: pa.Array) -> np.ndarray:
    """Codes of a confounder column: its categories are fixed at import, so an unseen value is an error."""
    values = _as_vocab_type(path, column, values, vocab)
    index = pc.index_in(values, value_set=vocab)
    if n := index.null_count:
        shown = pc.unique(values.filter(pc.is_null(index))).to_pylist()[:5]
        raise DataError(
            f"{path}: column {column!r}: {n} rows with values the dataset has not seen (e.g. {shown}); "
            f"a confounder's categories are fixed at import"
        )
    return index.to_numpy().astype(np.int64)


def _existing_rows(dataset: Path, manifest: Manifest, users: np.ndarray) -> dict[str, np.ndarray]:
    """The user, item, time and label of the dataset's rows of ``users``: the histories' past."""
    parts = [
        pq.read_table(f, columns=[USER, ITEM, TS, LABEL])
        for split in manifest.splits
        for f in manifest.files(dataset, split)
    ]
    table = pa.concat_tables(parts)
    keep = np.isin(table.column(USER).to_numpy(), users)
    return {c: table.column(c).to_numpy()[keep] for c in (USER, ITEM, TS, LABEL)}


def append_interactions(interactions: Path, dataset: Path, *, new_ids: str = "index") -> Manifest:
    """Add the new days of ``interactions`` (CSV or Parquet, the columns of the first import) to ``dataset``.

    The columns, label threshold, time unit, partitioning and valid fraction are the dataset's own
    (``manifest.source``). Known raw ids keep their indices. New user, item and sparse-feature ids get
    the next indices as long as the embedding table has rows for them (``table_rows``: import with
    ``headroom``; beyond it the append is refused), or with ``new_ids="hash"`` are hashed onto known
    indices (tables and vocabularies unchanged). Confounder categories are fixed at import. Rows flagged
    random are test_ood; of each day's other rows the latest ``valid_fraction`` are valid and the rest
    train (a day store's layout: the nightly holds out whole days). Histories continue from the
    dataset's rows. The log's days must all be new. The manifest gains the days and their rows
    (``source["days"]``) and a record of the append (``source["appends"]``). The append is atomic: the
    new dataset is built beside the old one (hard links) and renamed over it; bad input raises
    :class:`DataError` naming the file, column and count, and leaves the dataset as it was.
    """
    interactions, dataset = Path(interactions), Path(dataset)
    if new_ids not in NEW_IDS:
        raise ConfigError(f"new_ids {new_ids!r}: expected one of {list(NEW_IDS)}")
    manifest = Manifest.read(dataset)
    source: dict[str, Any] = dict(manifest.source)  # the manifest's JSON record, written by the import
    where = dataset / MANIFEST
    if source.get("importer") != "distrec.data.importer":
        raise DataError(f"{where}: not written by `distrec data import`; --append extends imported datasets only")
    if source.get("prepared"):
        raise DataError(
            f"{where}: imported with a preset's preparation ({source.get('preset')}), which --append does not repeat"
        )
    derived: dict[str, str] = dict(source.get("derived_confounders") or {})
    sparse = {s.name: s for s in manifest.sparse}
    extra_sparse = tuple(n for n in sparse if n not in (USER, ITEM))
    explicit = tuple(c for c in manifest.confounders if c not in derived)
    raw: dict[str, str | None] = source["columns"]
    cols = _Columns(  # the import always records the user, item, label and time columns
        user=cast(str, raw["user"]),
        item=cast(str, raw["item"]),
        label=cast(str, raw["label"]),
        time=cast(str, raw["time"]),
        policy=raw.get("policy"),
        propensity=raw.get("propensity"),
        random=raw.get("random"),
        position=raw.get("position"),
        categorical=(*extra_sparse, *explicit),
    )
    threshold, time_unit = source.get("label_threshold"), str(source.get("time_unit", "s"))
    log = _load(interactions, read_table(interactions), cols, threshold, time_unit)

    partition = str(source.get("partition", "day"))
    periods = partition_periods(log.ts, partition)
    present = {ds for parts in manifest.splits.values() for ds in parts}
    if again := sorted({period_partition(p) for p in np.unique(periods)} & present):
        n = int(np.isin([period_partition(p) for p in periods], again).sum())
        raise DataError(
            f"{interactions}: column {cols.time!r}: {n} rows fall in {again}, already in {dataset}: "
            f"an append adds new days only"
        )

    vocab = {f: pq.read_table(dataset / rel).column("raw").combine_chunks() for f, rel in source["vocab"].items()}
    columns: dict[str, np.ndarray | pa.Array] = {}
    unseen: dict[str, int] = {}
    for name, column, values in (
        (USER, cols.user, log.user),
        (ITEM, cols.item, log.item),
        *((c, c, log.categorical[c]) for c in extra_sparse),
    ):
        columns[name], vocab[name], unseen[name] = _extend_ids(
            interactions, column, sparse[name], values, vocab[name], new_ids
        )
    for c in explicit:
        columns[c] = _known_codes(interactions, c, log.categorical[c], vocab[c])
    for name in derived:
        if name == CONF_PROPENSITY:
            p = log.propensity.combine_chunks().cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
            codes = bucketize(p, np.asarray(source["propensity_edges"])).fill_null(BINS).to_numpy(zero_copy_only=False)
            if n := int(np.count_nonzero(codes >= manifest.confounders[name])):
                raise DataError(
                    f"{interactions}: column {cols.propensity!r}: {n} null propensities; the import had none"
                )
            columns[name] = codes.astype(np.int64)
        else:
            raw_column = cols.policy if name == CONF_POLICY else cols.position
            values = log.policy if name == CONF_POLICY else log.position
            columns[name] = _known_codes(interactions, str(raw_column), values, vocab[name])
    columns |= {
        LABEL: log.label,
        TS: log.ts,
        POLICY: log.policy.combine_chunks(),
        PROPENSITY: log.propensity.combine_chunks(),
        IS_RANDOM: log.is_random,
    }

    day_code = periods.astype("datetime64[D]").astype(np.int64)
    if not (np.unique(day_code[~log.is_random], return_counts=True)[1] >= 2).any():
        raise DataError(f"{interactions}: no day has the 2 non-random rows needed to fill train and valid")
    valid_fraction = float(source.get("valid_fraction", 0.1))
    assigned, _ = _assign_splits_per_user(interactions, day_code, log.ts, log.is_random, valid_fraction, 0.0)
    past = _existing_rows(dataset, manifest, np.unique(columns[USER]))
    n_past = len(past[TS])
    positives, starts, lengths = history_index(
        np.concatenate([past[USER], columns[USER]]),
        np.concatenate([past[TS], log.ts]),
        np.concatenate([past[ITEM], columns[ITEM]]),
        np.concatenate([past[LABEL], log.label]) == 1,
        manifest.history_max_len,
    )

    grown = replace(
        manifest,
        sparse=[replace(s, cardinality=len(vocab[s.name])) if s.name in unseen else s for s in manifest.sparse],
    )
    day = replace(grown, splits={}, rows={})  # the appended partitions alone
    with _extending(dataset) as tmp:
        _write_splits(tmp, dataset, day, columns, assigned, (positives, starts[n_past:], lengths[n_past:]), partition)
        added = partition_rows(tmp, day)
        days = source.get("days") or partition_rows(dataset, manifest)  # datasets imported before days were kept
        source["days"] = dict(sorted({**days, **added}.items()))
        source["appends"] = [
            *source.get("appends", []),
            {
                "interactions": str(interactions),
                "days": added,
                "new_ids": new_ids,
                "unseen_ids": unseen,
            },
        ]
        splits = {s: sorted({*grown.splits.get(s, []), *day.splits.get(s, [])}) for s in SPLITS}
        merged = replace(
            grown,
            splits={s: parts for s, parts in splits.items() if parts},
            rows={s: grown.rows.get(s, 0) + day.rows.get(s, 0) for s in SPLITS if splits[s]},
            source=source,
        )
        _write_vocab(tmp, vocab)
        merged.write(tmp)
    logger.info("%s: appended %s from %s; unseen ids %s (%s)", dataset, added, interactions, unseen, new_ids)
    return merged
