"""(h) Many small files: soft-label stream rows/s over ~3,000 Parquet files against ~10 files.

The same synthetic log (the default dataset; the same rows and values, only the file layout
differs) written twice: with about 3,000 small training files (the shape a day-partitioned import
of a long, sparse log takes) and with about 10. Each side is one pass of ``soft_label_stream``
(Ray Data: read Parquet (``ParquetFiles``) -> a ``SoftLabeler`` adding one teacher's front-door column) consumed
in this process, timed from building the dataset to its last batch, so planning the reads, the
footers and per-file tasks are all counted. The teacher is a freshly initialised DeepFM of
``jobs/local.yaml`` with a bank of 8, as in (e): the scoring is the same on both sides, and small,
so the files' own cost shows. The ratio is many-file rows/s over few-file rows/s (target: >= 0.8).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from benchmarks.common import interleave, load_average, loaded, median, ratio, spread, stream_inputs, synthetic

BANK_SIZE = 8


def _files_and_rows(root: Path) -> tuple[list[str], int]:
    from distrec.data.schema import Manifest

    manifest = Manifest.read(root)
    return [str(f.resolve()) for f in manifest.files(root, "train")], int(manifest.rows["train"])


def _streamed(root: Path, teacher: Path, bank: Path) -> float:
    """Rows/s of one streamed pass over ``root``'s training files."""
    from distrec.data.batch import BatchBuilder
    from distrec.data.schema import Manifest
    from distrec.orchestrate.stream import ScoringOptions, soft_label_stream

    files, expected = _files_and_rows(root)
    started = time.perf_counter()
    columns = BatchBuilder(Manifest.read(root)).columns
    stream = soft_label_stream(files, columns, {"t": str(teacher)}, ScoringOptions(str(bank)), 1024)
    rows = sum(t.num_rows for t in stream.iter_batches(batch_size=1024, batch_format="pyarrow"))
    seconds = time.perf_counter() - started
    if rows != expected:
        raise RuntimeError(f"streamed {rows} rows of {root}, expected {expected}")
    return rows / seconds


def run(out: Path, quick: bool) -> dict[str, object]:
    rows, many_target = (100_000, 1_000) if quick else (300_000, 3_000)
    _, train_rows = _files_and_rows(synthetic(out, rows))
    many = synthetic(out, rows, rows_per_file=math.ceil(train_rows / many_target))
    few = synthetic(out, rows, rows_per_file=math.ceil(train_rows / 10))
    teacher, bank = stream_inputs(few, out / f"files-{rows}", BANK_SIZE)
    counts = {name: len(_files_and_rows(root)[0]) for name, root in (("many", many), ("few", few))}
    load_before = load_average()
    sides = {"many": lambda: _streamed(many, teacher, bank), "few": lambda: _streamed(few, teacher, bank)}
    results = interleave(sides, 3)
    return {
        "ratio": ratio(results["many"], results["few"]),
        "ratio_spread": spread(results["many"], results["few"]),
        "loaded": loaded(load_before),
        "many_files_vs_few": ratio(results["many"], results["few"]),
        "many_rows_per_s": round(median(results["many"])),
        "few_rows_per_s": round(median(results["few"])),
        "files": counts,
        "rows": train_rows,
        "dataset_rows": rows,
        "bank_size": BANK_SIZE,
        "repeats": 3,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "samples": {k: [round(v) for v in vs] for k, vs in results.items()},
    }
