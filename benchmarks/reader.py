"""(a) Reader: Parquet -> ``Batch`` (KeyedJaggedTensor) rows/s against a raw pyarrow scan.

Both sides read the same training files, the same columns (``BatchBuilder.columns``) and the same
batch size with ``pyarrow.parquet.ParquetFile.iter_batches`` in this process, one thread each
(``use_threads=False`` on both sides, and one torch thread), after one untimed pass that warms the
page cache. The raw side only touches every column as numpy (list columns: their flat values and
offsets); the other side builds the full training batch (id range checks, the KJT, labels, weights,
confounders). The ratio is the share of raw scan speed that the conversion keeps: 1.0 would mean
the conversion is free.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import interleave, load_average, loaded, median, ratio, spread, synthetic


def _raw(files: list[Path], columns: list[str], batch_size: int) -> int:
    rows = 0
    for f in files:
        for rb in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns, use_threads=False):
            for col in rb.columns:
                if pa.types.is_list(col.type):
                    col.values.to_numpy()
                    col.offsets.to_numpy()
                else:
                    col.to_numpy(zero_copy_only=False)
            rows += rb.num_rows
    return rows


def _batches(files: list[Path], columns: list[str], batch_size: int, builder: object) -> int:
    rows = 0
    for f in files:
        for rb in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns, use_threads=False):
            rows += builder(rb).size  # type: ignore[operator]
    return rows


def run(out: Path, quick: bool) -> dict[str, object]:
    import torch

    from distrec.data.batch import BatchBuilder
    from distrec.data.schema import Manifest

    torch.set_num_threads(1)
    rows = 2_000_000 if quick else 10_000_000  # the logs of benchmark (e), generated once
    repeats = 3 if quick else 5
    batch_size = 1024  # the training batch size of jobs/local.yaml
    root = synthetic(out, rows)
    manifest = Manifest.read(root)
    builder = BatchBuilder(manifest)
    files, columns = manifest.files(root, "train"), builder.columns

    def timed(fn: object) -> float:
        started = time.perf_counter()
        n = fn()  # type: ignore[operator]
        return n / (time.perf_counter() - started)

    _raw(files, columns, batch_size)  # warm the page cache and pyarrow's allocator
    load_before = load_average()
    results = interleave(
        {
            "raw": lambda: timed(lambda: _raw(files, columns, batch_size)),
            "batch": lambda: timed(lambda: _batches(files, columns, batch_size, builder)),
        },
        repeats,
    )
    return {
        "ratio": ratio(results["batch"], results["raw"]),
        "ratio_spread": spread(results["batch"], results["raw"]),
        "loaded": loaded(load_before),
        "batch_rows_per_s": round(median(results["batch"])),
        "raw_rows_per_s": round(median(results["raw"])),
        "rows": manifest.rows["train"],
        "dataset_rows": rows,
        "batch_size": batch_size,
        "repeats": repeats,
        "columns": columns,
    }
