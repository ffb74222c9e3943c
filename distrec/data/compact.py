"""``distrec data compact DIR``: merge a dataset's small partition files into coarser partitions.

A log imported with day partitions over years holds thousands of tiny Parquet files, which every
reader pays for (file opens, footers, Ray Data read tasks). Compacting rewrites each split's
partitions into month (or year) partitions: one file per (split, new partition), its rows in the
old partitions' order, so row order and every value are unchanged. The manifest's partition lists,
``source["partition"]`` and ``source["days"]`` follow. Atomic: the new dataset is built beside the
old one (hard links for everything but the split directories) and renamed over it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distrec.data.importer import PARTITIONS, _extending, partition_rows, period_partition
from distrec.data.schema import Manifest
from distrec.errors import ConfigError

COMPACT_TO = ("month", "year")
ROW_GROUP_ROWS = 200_000  # rows per written row group (the synthetic logs' size), from many small ones


def compact(dataset: str | Path, partition: str = "month") -> dict[str, int]:
    """Rewrite ``dataset`` with ``partition`` granularity; returns the file counts before and after."""
    if partition not in COMPACT_TO:
        raise ConfigError(f"compact: partition {partition!r}: expected one of {list(COMPACT_TO)}")
    dataset = Path(dataset)
    manifest = Manifest.read(dataset)
    current = str(manifest.source.get("partition", "day"))
    if list(PARTITIONS).index(current) > list(PARTITIONS).index(partition):
        raise ConfigError(f"compact: {dataset} has {current} partitions, coarser than {partition}")
    before = sum(len(manifest.files(dataset, split)) for split in manifest.splits)
    with _extending(dataset) as tmp:
        for split, parts in manifest.splits.items():
            shutil.rmtree(tmp / split)  # the copy's links; the new files are written fresh
            merged: dict[str, list[str]] = {}
            for ds in parts:
                period = np.datetime64(ds.removeprefix("ds="), "D").astype(PARTITIONS[partition])
                merged.setdefault(period_partition(period), []).append(ds)
            for new, olds in merged.items():
                _merge([f for ds in olds for f in sorted((dataset / split / ds).glob("*.parquet"))], tmp / split / new)
            manifest.splits[split] = list(merged)
        manifest.source["partition"] = partition
        manifest.source["days"] = partition_rows(tmp, manifest)
        manifest.write(tmp)
    return {"files_before": before, "files_after": sum(len(manifest.files(dataset, s)) for s in manifest.splits)}


def _merge(files: list[Path], directory: Path) -> None:
    """``files`` concatenated, in order, into ``directory/part-00000.parquet``; memory is bounded by
    about one written row group (source row groups are gathered up to ``ROW_GROUP_ROWS`` rows)."""
    directory.mkdir(parents=True)
    schema = pq.ParquetFile(files[0]).schema_arrow
    pending: list[pa.Table] = []
    with pq.ParquetWriter(directory / "part-00000.parquet", schema) as writer:
        for f in files:
            source = pq.ParquetFile(f)
            for group in range(source.num_row_groups):
                pending.append(source.read_row_group(group))
                if sum(t.num_rows for t in pending) >= ROW_GROUP_ROWS:
                    writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                    pending = []
        if pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
