"""Arrow record batches and tables -> the Pipelineable batch every distrec model consumes.

A chunk of rows (``distrec.data.reader.Chunk``: a piece of a Parquet row group, or any Arrow table)
is converted once: each column becomes one numpy array and is checked once, an id range being taken
as proven when the row group's footer statistics lie inside it. Batches are then cut from those
arrays: views of the label, weight, dense, confounder and soft-label matrices, plus one copy of the
batch's ids into the KeyedJaggedTensor's values and one of its lengths, so a batch costs a few numpy
calls whatever its columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from itertools import accumulate

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from distrec.data.reader import Chunk
from distrec.data.schema import HISTORY, ITEM, LABEL, Manifest
from distrec.errors import DataError


@dataclass
class Batch(Pipelineable):
    """One training or scoring batch.

    ``weights`` is 1 for real rows and 0 for padding rows, which keep data-parallel ranks in
    lockstep when their shards run out at different steps (see ``distrec.train.feed``).
    ``soft_labels`` holds the teachers' soft-label columns, in the order the trainer asked for.
    """

    sparse: KeyedJaggedTensor
    dense: torch.Tensor  # [B, num_dense] float32
    labels: torch.Tensor  # [B] float32
    weights: torch.Tensor  # [B] float32
    confounders: torch.Tensor  # [B, num_confounders] int64
    soft_labels: torch.Tensor  # [B, num_soft_label_columns] float32

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return Batch(
            **{f.name: getattr(self, f.name).to(device=device, non_blocking=non_blocking) for f in fields(self)}
        )

    def record_stream(self, stream: torch.Stream) -> None:
        for f in fields(self):
            getattr(self, f.name).record_stream(stream)

    def pin_memory(self) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def as_padding(self) -> Batch:
        """The same batch with every row weighted 0: it runs the collectives but trains nothing."""
        return Batch(
            **{**{f.name: getattr(self, f.name) for f in fields(self)}, "weights": torch.zeros_like(self.weights)}
        )


def sparse_keys(manifest: Manifest) -> list[str]:
    """KJT keys: every sparse feature, then the history (which shares the item table)."""
    keys = [s.name for s in manifest.sparse]
    if manifest.history_max_len > 0:
        keys.append(HISTORY)
    return keys


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads consecutive ids evenly


def table_index(ids: np.ndarray, cardinality: int, rows: int) -> np.ndarray:
    """Embedding-table row of each id: the id itself when the table is large enough, else a hash."""
    if rows >= cardinality:
        return ids
    with np.errstate(over="ignore"):
        return ((ids.astype(np.uint64) * _GOLDEN >> np.uint64(17)) % np.uint64(rows)).astype(np.int64)


def _where(chunk: Chunk) -> str:
    return f"{chunk.source}: " if chunk.source else ""


def _check_range(chunk: Chunk, name: str, values: np.ndarray, cardinality: int) -> None:
    """Raise unless every id is in [0, cardinality): proven when the footer's bounds lie inside, else counted."""
    bounds = chunk.bounds.get(name)
    if bounds is not None and bounds[0] >= 0 and bounds[1] < cardinality:
        return
    wrapped = values.view(np.uint64)  # negative ids wrap past any cardinality: one pass checks both ends
    if values.size and wrapped.max() >= cardinality:
        bad = int(np.count_nonzero(wrapped >= cardinality))
        raise DataError(
            f"{_where(chunk)}column {name!r}: {bad} ids outside [0, {cardinality}) among {values.size} values"
        )


def _ids(chunk: Chunk, name: str, cardinality: int) -> np.ndarray:
    col = chunk.records.column(name)
    if col.null_count:
        raise DataError(f"{_where(chunk)}column {name!r}: {col.null_count} null values among {len(col)} rows")
    values = col.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    _check_range(chunk, name, values, cardinality)
    return values


def _floats(chunk: Chunk, names: Sequence[str]) -> np.ndarray:
    """The columns ``names`` as a float32 matrix [rows, len(names)]; nulls, NaN and infinities are refused."""
    out = np.empty((chunk.records.num_rows, len(names)), dtype=np.float32)
    if not names:
        return out
    for j, name in enumerate(names):
        out[:, j] = chunk.records.column(name).to_numpy(zero_copy_only=False)  # nulls arrive as NaN
    if not np.isfinite(out).all():
        counts = (~np.isfinite(out)).sum(axis=0)
        problems = [f"column {names[j]!r}: {counts[j]} null/NaN/inf values" for j in np.flatnonzero(counts).tolist()]
        raise DataError(f"{_where(chunk)}" + "; ".join(problems) + f" among {len(out)} rows")
    return out


@dataclass(frozen=True)
class _Rows:
    """Converted, checked columns of consecutive rows, from which batches are cut."""

    ids: list[np.ndarray]  # per sparse feature: [n] int64 embedding-table rows
    history: np.ndarray  # int64 embedding-table rows of every row's history items, back to back
    offsets: np.ndarray  # [n + 1]: row i's history is history[offsets[i]:offsets[i + 1]]
    history_lengths: np.ndarray  # [n] int32: offsets[1:] - offsets[:-1]
    labels: np.ndarray  # [n] float32
    weights: np.ndarray  # [n] float32 ones: a view of the builder's kept ones (no allocation a chunk)
    dense: np.ndarray  # [n, num dense] float32
    confounders: np.ndarray  # [n, num confounders] int64
    soft_labels: np.ndarray  # [n, num soft-label columns] float32

    @property
    def size(self) -> int:
        return len(self.labels)

    def slice(self, start: int, stop: int) -> _Rows:
        lo, hi = self.offsets[start], self.offsets[stop]
        return _Rows(
            [ids[start:stop] for ids in self.ids],
            self.history[lo:hi],
            self.offsets[start : stop + 1] - lo,
            self.history_lengths[start:stop],
            self.labels[start:stop],
            self.weights[start:stop],
            self.dense[start:stop],
            self.confounders[start:stop],
            self.soft_labels[start:stop],
        )

    def concat(self, other: _Rows) -> _Rows:
        return _Rows(
            [np.concatenate(pair) for pair in zip(self.ids, other.ids, strict=True)],
            np.concatenate((self.history, other.history)),
            np.concatenate((self.offsets[:-1], other.offsets + self.offsets[-1])),
            np.concatenate((self.history_lengths, other.history_lengths)),
            np.concatenate((self.labels, other.labels)),
            np.concatenate((self.weights, other.weights)),
            np.concatenate((self.dense, other.dense)),
            np.concatenate((self.confounders, other.confounders)),
            np.concatenate((self.soft_labels, other.soft_labels)),
        )


class BatchBuilder:
    """Builds ``Batch``es from Arrow tables of the canonical format (see ``distrec.data.schema``)."""

    def __init__(self, manifest: Manifest, soft_label_columns: Sequence[str] = ()) -> None:
        self.manifest = manifest
        self.keys = sparse_keys(manifest)
        self.cardinality = manifest.cardinality
        self.soft_label_columns = list(soft_label_columns)
        self.confounders = list(manifest.confounders)
        # what every chunk's conversion looks up, resolved once
        self._id_columns = [(s.name, s.cardinality, s.rows) for s in manifest.sparse]
        self._history_rows = manifest.table_rows[ITEM]
        self._kept_ones: dict[type, np.ndarray] = {}

    def _ones(self, n: int, dtype: type = np.int32) -> np.ndarray:
        """n ones, views of one array a dtype kept for every chunk and batch (grown on demand): nothing
        writes into a batch's lengths or weights (padding and bootstrap weights replace the tensor)."""
        kept = self._kept_ones.get(dtype)
        if kept is None or kept.size < n:
            kept = self._kept_ones[dtype] = np.ones(n, dtype=dtype)
        return kept[:n]

    @property
    def columns(self) -> list[str]:
        """The Parquet columns a batch needs: read only these."""
        cols = [s.name for s in self.manifest.sparse] + list(self.manifest.dense) + self.confounders + [LABEL]
        if self.manifest.history_max_len > 0:
            cols.append(HISTORY)
        return cols + self.soft_label_columns

    def __call__(self, table: pa.Table | pa.RecordBatch) -> Batch:
        """One batch of all of ``table``'s rows."""
        rows = self._rows(_chunk(table))
        return self._batch(rows, 0, rows.size)

    def batches(self, chunks: Iterable[Chunk | pa.Table | pa.RecordBatch], batch_size: int) -> Iterator[Batch]:
        """Batches of ``batch_size`` rows (the last may be shorter) cut in order from the rows of
        ``chunks``: each chunk is converted and checked once, and a batch may span two chunks."""
        rest: _Rows | None = None  # the rows after the last whole batch of the chunks so far
        for chunk in chunks:
            rows = self._rows(_chunk(chunk))
            start = 0
            if rest is not None:
                start = min(batch_size - rest.size, rows.size)
                rest = rest.concat(rows.slice(0, start))
                if rest.size < batch_size:
                    continue
                yield self._batch(rest, 0, batch_size)
            stop = start + (rows.size - start) // batch_size * batch_size
            for first in range(start, stop, batch_size):
                yield self._batch(rows, first, first + batch_size)
            rest = rows.slice(stop, rows.size) if stop < rows.size else None
        if rest is not None:
            yield self._batch(rest, 0, rest.size)

    def _rows(self, chunk: Chunk) -> _Rows:
        n = chunk.records.num_rows
        ids = [
            table_index(_ids(chunk, name, cardinality), cardinality, rows)
            for name, cardinality, rows in self._id_columns
        ]
        confounders = np.empty((n, len(self.confounders)), dtype=np.int64)
        for j, (name, cardinality) in enumerate(self.manifest.confounders.items()):
            confounders[:, j] = _ids(chunk, name, cardinality)
        if self.manifest.history_max_len == 0:
            history, offsets = np.empty(0, dtype=np.int64), np.zeros(n + 1, dtype=np.int64)
        else:
            lists = chunk.records.column(HISTORY)
            if lists.null_count:
                lists = pc.fill_null(lists, pa.scalar([], lists.type))  # a null list is an empty history
            offsets = lists.offsets.to_numpy()  # into all the items of the lists this is a slice of
            items = lists.values.slice(offsets[0], offsets[-1] - offsets[0])  # as ``flatten``, faster
            if items.null_count:
                raise DataError(f"{_where(chunk)}column {HISTORY!r}: {items.null_count} null ids inside lists")
            history = items.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
            _check_range(chunk, HISTORY, history, self.cardinality[ITEM])
            history = table_index(history, self.cardinality[ITEM], self._history_rows)
            if offsets[0]:
                offsets = offsets - offsets[0]
        return _Rows(
            ids,
            history,
            offsets,
            (offsets[1:] - offsets[:-1]).astype(np.int32, copy=False),  # Arrow's list offsets are int32 already
            _floats(chunk, [LABEL]).reshape(-1),
            self._ones(n, np.float32),
            _floats(chunk, self.manifest.dense),
            confounders,
            _floats(chunk, self.soft_label_columns),
        )

    def _batch(self, rows: _Rows, start: int, stop: int) -> Batch:
        n, lo, hi = stop - start, int(rows.offsets[start]), int(rows.offsets[stop])
        values = np.concatenate([ids[start:stop] for ids in rows.ids] + [rows.history[lo:hi]])
        per_key = [n] * len(rows.ids)  # one id a row for each sparse feature
        lengths = [self._ones(n * len(per_key))]
        if self.manifest.history_max_len > 0:  # the history's lengths come last
            lengths.append(rows.history_lengths[start:stop])
            per_key.append(hi - lo)
        sparse = KeyedJaggedTensor(  # what from_lengths_sync builds, without recounting the lengths
            keys=self.keys,
            values=torch.from_numpy(values),
            lengths=torch.from_numpy(np.concatenate(lengths)),
            stride=n,
            stride_per_key=[n] * len(self.keys),
            length_per_key=per_key,
            offset_per_key=[0, *accumulate(per_key)],
        )
        return Batch(
            sparse=sparse,
            dense=torch.from_numpy(rows.dense[start:stop]),
            labels=torch.from_numpy(rows.labels[start:stop]),
            weights=torch.from_numpy(rows.weights[start:stop]),
            confounders=torch.from_numpy(rows.confounders[start:stop]),
            soft_labels=torch.from_numpy(rows.soft_labels[start:stop]),
        )


def _chunk(data: Chunk | pa.Table | pa.RecordBatch) -> Chunk:
    if isinstance(data, Chunk):
        return data
    if isinstance(data, pa.Table):  # one record batch: the table's own when it has a single one
        batches = data.to_batches()
        if len(batches) != 1:
            batches = data.combine_chunks().to_batches() or [pa.RecordBatch.from_pylist([], schema=data.schema)]
        data = batches[0]
    return Chunk(data)
