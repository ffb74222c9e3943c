"""(a) Reader: Parquet -> ``Batch`` (KeyedJaggedTensor) rows/s against a raw pyarrow scan.

Both sides read the same training files and columns (``BatchBuilder.columns``) as a training worker
does, through ``ShardReader`` (one rank of one): each row group decoded ``CHUNK_ROWS`` rows at a time
by ``ParquetFile.iter_batches`` with ``use_threads=False``, its footer statistics read once; one
torch thread; after one untimed pass that warms the page cache. The raw side only touches every
column of every chunk as numpy (list columns: their flat values and offsets); the other side builds
the full training batches of ``batch_size`` rows from the same chunks (``BatchBuilder.batches``: the
checks, the KJT, labels, weights, confounders). The ratio is the share of raw scan speed that the
conversion keeps: 1.0 would mean the conversion is free. Speeds are rows per wall-clock second;
``ratio_cpu`` is the same ratio in rows per CPU-second of the process, which the waits of a shared
machine do not blur (both sides run on one thread).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from benchmarks.common import interleave, load_average, loaded, median, ratio, spread, synthetic

if TYPE_CHECKING:
    from distrec.data.batch import BatchBuilder
    from distrec.data.reader import ShardReader


def _raw(reader: ShardReader) -> int:
    rows = 0
    for chunk in reader.chunks():
        for col in chunk.records.columns:
            if pa.types.is_list(col.type):
                col.values.to_numpy()
                col.offsets.to_numpy()
            else:
                col.to_numpy(zero_copy_only=False)
        rows += chunk.records.num_rows
    return rows


def _batches(reader: ShardReader, builder: BatchBuilder, batch_size: int) -> int:
    return sum(batch.size for batch in builder.batches(reader.chunks(), batch_size))


def run(out: Path, quick: bool) -> dict[str, object]:
    import torch

    from distrec.data.batch import BatchBuilder
    from distrec.data.reader import CHUNK_ROWS, ShardReader
    from distrec.data.schema import Manifest

    torch.set_num_threads(1)
    rows = 1_000_000 if quick else 10_000_000  # the logs of benchmark (e), generated once
    repeats = 9 if quick else 11  # a pass takes a second or two: enough rounds for steady medians when loaded
    batch_size = 1024  # the training batch size of jobs/local.yaml
    root = synthetic(out, rows)
    manifest = Manifest.read(root)
    builder = BatchBuilder(manifest)
    reader = ShardReader(manifest.files(root, "train"), builder.columns, rank=0, world=1, batch_size=batch_size)

    cpu: dict[str, list[float]] = {"raw": [], "batch": []}  # rows per CPU-second of this process

    def timed(side: str, fn: object) -> float:
        wall, started = time.perf_counter(), time.process_time()
        n = fn()  # type: ignore[operator]
        cpu[side].append(n / (time.process_time() - started))
        return n / (time.perf_counter() - wall)

    _raw(reader)  # warm the page cache and pyarrow's allocator
    load_before = load_average()
    results = interleave(
        {
            "raw": lambda: timed("raw", lambda: _raw(reader)),
            "batch": lambda: timed("batch", lambda: _batches(reader, builder, batch_size)),
        },
        repeats,
    )
    return {
        "ratio": ratio(results["batch"], results["raw"]),
        "ratio_spread": spread(results["batch"], results["raw"]),
        "ratio_cpu": ratio(cpu["batch"], cpu["raw"]),
        "ratio_cpu_spread": spread(cpu["batch"], cpu["raw"]),
        "loaded": loaded(load_before),
        "batch_rows_per_s": round(median(results["batch"])),
        "raw_rows_per_s": round(median(results["raw"])),
        "rows": manifest.rows["train"],
        "dataset_rows": rows,
        "batch_size": batch_size,
        "chunk_rows": CHUNK_ROWS,
        "repeats": repeats,
        "columns": builder.columns,
    }
