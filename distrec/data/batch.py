"""Arrow record batches -> the Pipelineable batch every distrec model consumes.

The conversion is vectorised: each column becomes one tensor through numpy, list columns are
flattened by Arrow, and the KeyedJaggedTensor is built from whole-column values and lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

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


def _int_column(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    if col.null_count:
        raise DataError(f"column {name!r}: {col.null_count} null values in a batch of {table.num_rows} rows")
    return col.to_numpy().astype(np.int64, copy=False)


def _check_range(name: str, values: np.ndarray, cardinality: int) -> None:
    if values.size and (values.min() < 0 or values.max() >= cardinality):
        bad = int(np.count_nonzero((values < 0) | (values >= cardinality)))
        raise DataError(f"column {name!r}: {bad} ids outside [0, {cardinality}) in a batch of {values.size} values")


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads consecutive ids evenly


def table_index(ids: np.ndarray, cardinality: int, rows: int) -> np.ndarray:
    """Embedding-table row of each id: the id itself when the table is large enough, else a hash."""
    if rows >= cardinality:
        return ids
    with np.errstate(over="ignore"):
        return ((ids.astype(np.uint64) * _GOLDEN >> np.uint64(17)) % np.uint64(rows)).astype(np.int64)


class BatchBuilder:
    """Builds ``Batch``es from Arrow tables of the canonical format (see ``distrec.data.schema``)."""

    def __init__(self, manifest: Manifest, soft_label_columns: Sequence[str] = ()) -> None:
        self.manifest = manifest
        self.keys = sparse_keys(manifest)
        self.cardinality = manifest.cardinality
        self.soft_label_columns = list(soft_label_columns)
        self.confounders = list(manifest.confounders)

    @property
    def columns(self) -> list[str]:
        """The Parquet columns a batch needs: read only these."""
        cols = [s.name for s in self.manifest.sparse] + list(self.manifest.dense) + self.confounders + [LABEL]
        if self.manifest.history_max_len > 0:
            cols.append(HISTORY)
        return cols + self.soft_label_columns

    def __call__(self, table: pa.Table | pa.RecordBatch) -> Batch:
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        n = table.num_rows
        values: list[np.ndarray] = []
        lengths: list[np.ndarray] = []
        for spec in self.manifest.sparse:
            ids = _int_column(table, spec.name)
            _check_range(spec.name, ids, spec.cardinality)
            values.append(table_index(ids, spec.cardinality, spec.rows))
            lengths.append(np.ones(n, dtype=np.int32))
        if self.manifest.history_max_len > 0:
            hist = table.column(HISTORY).combine_chunks()
            hist_values = pc.list_flatten(hist).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
            _check_range(HISTORY, hist_values, self.cardinality[ITEM])
            values.append(table_index(hist_values, self.cardinality[ITEM], self.manifest.table_rows[ITEM]))
            lengths.append(pc.list_value_length(hist).fill_null(0).to_numpy().astype(np.int32))
        sparse = KeyedJaggedTensor.from_lengths_sync(
            keys=self.keys,
            values=torch.from_numpy(np.concatenate(values)),
            lengths=torch.from_numpy(np.concatenate(lengths)),
        )
        labels = self._float_matrix(table, [LABEL]).reshape(-1)
        confounders = np.stack([_int_column(table, c) for c in self.confounders], axis=1) if self.confounders else None
        if confounders is not None:
            for j, c in enumerate(self.confounders):
                _check_range(c, confounders[:, j], self.manifest.confounders[c])
        return Batch(
            sparse=sparse,
            dense=torch.from_numpy(self._float_matrix(table, self.manifest.dense)),
            labels=torch.from_numpy(labels),
            weights=torch.ones(n, dtype=torch.float32),
            confounders=torch.from_numpy(confounders)
            if confounders is not None
            else torch.zeros(n, 0, dtype=torch.long),
            soft_labels=torch.from_numpy(self._float_matrix(table, self.soft_label_columns)),
        )

    @staticmethod
    def _float_matrix(table: pa.Table, names: Sequence[str]) -> np.ndarray:
        out = np.empty((table.num_rows, len(names)), dtype=np.float32)
        for j, name in enumerate(names):
            col = table.column(name)
            arr = col.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
            if col.null_count or not np.isfinite(arr).all():
                bad = col.null_count + int(np.count_nonzero(~np.isfinite(arr)))
                raise DataError(f"column {name!r}: {bad} null/NaN/inf values in a batch of {table.num_rows} rows")
            out[:, j] = arr
        return out
