"""(e) Peak memory of the streaming data path on a large log against a log ten times smaller.

"A run" is the soft-label stream, the part of distrec that must stay bounded whatever the log size:
``soft_label_stream`` (Ray Data: read the training Parquet -> a ``SoftLabeler`` stage adding the
front-door column of one teacher, in scoring calls of the job's default ``distill.score_batch_size``)
consumed batch by batch into ``BatchBuilder``, as the student's feed does. Each size runs in a fresh
interpreter with its own embedded Ray (``ray_session``, the local defaults), so nothing carries over.
A background thread samples the summed PSS (proportional set size: each shared page split among the
processes mapping it, so object-store and library pages count once) of that interpreter and all its
descendants (Ray's GCS, raylet, workers, actors); summed RSS and anonymous memory are kept beside it,
and the kernel's per-process peak (VmHWM) gives the largest single process. The datasets are the
synthetic default (2000 users, 1000 items, histories of 20) at three sizes: the ratio is the largest
over the smallest, and ``mib_per_million_rows`` the least-squares slope of peak PSS against the log's
rows over all three (flat memory: a slope near 0, whatever the fixed base that dilutes the ratio). The
teacher is a freshly initialised DeepFM of ``jobs/local.yaml`` with a history bank of 8 (memory does
not depend on the weights, and a small bank keeps the 10M-row run short; the bank size changes
compute, not what is buffered).

The synthetic logs roll files at 1M rows, so the large log also has larger files (and Ray Data
blocks) than the small one. The full run therefore adds a third pass, the large log rewritten with
the small log's file size (same rows, same values), reported as ``ratio_same_file_size``: it
separates growth with the number of rows from growth with the size of a file, and one pass more over
the large log for each candidate cause in ``EXPERIMENTS`` (Arrow's memory pool, glibc's arenas, Ray
Data's block size), reported as ``experiments``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import REPO, load_average, loaded, measured_child, ratio, stream_inputs, synthetic

BANK_SIZE = 8
# The candidate causes of the read workers' growth, each one more pass over the large log (full runs):
# (environment of the child and so of every Ray process, ``ray.*`` settings of its embedded Ray)
EXPERIMENTS: dict[str, tuple[dict[str, str], list[str]]] = {
    "arrow_system_pool": ({"ARROW_DEFAULT_MEMORY_POOL": "system"}, []),
    "malloc_arena_max_2": ({"MALLOC_ARENA_MAX": "2"}, []),
    "blocks_128mib": ({}, ["data_block_mib=128"]),  # Ray's default (distrec's is 16)
}


def _prepare(out: Path, rows: int, rows_per_file: int | None = None) -> list[str]:
    """Dataset, teacher export and history bank for one log; returns the child's arguments."""
    root = synthetic(out, rows, rows_per_file=rows_per_file)
    teacher, bank = stream_inputs(root, out / f"memory-{root.name}", BANK_SIZE)
    return ["--root", str(root.resolve()), "--teacher", str(teacher), "--bank", str(bank)]


def _measure(out: Path, rows: int, args: list[str], env: dict[str, str] | None = None) -> dict[str, object]:
    log = Path(args[args.index("--teacher") + 1]).parent / "child.log"
    result = {"dataset_rows": rows, **measured_child("benchmarks.memory", args, log, env)}
    print(f"[bench] memory {rows}: {result}", flush=True)
    return result


def run(out: Path, quick: bool) -> dict[str, object]:
    import numpy as np

    sizes = (100_000, 500_000, 1_000_000) if quick else (1_000_000, 4_000_000, 10_000_000)
    small, large = sizes[0], sizes[-1]
    args = {rows: _prepare(out, rows) for rows in sizes}
    small_files = _train_file_rows(out, small)
    same = None if quick else _prepare(out, large, rows_per_file=small_files)
    load_before = load_average()
    runs = {rows: _measure(out, rows, args[rows]) for rows in sizes}
    s, big = runs[small], runs[large]
    pss = [float(runs[rows]["peak_pss_sum_mib"]) for rows in sizes]  # type: ignore[arg-type]
    slope = float(np.polyfit(np.array(sizes) / 1e6, pss, 1)[0])
    extra: dict[str, object] = {}
    if same is not None:
        run_same = _measure(out, large, same)
        experiments = {
            name: _measure(out, large, [*args[large], "--ray", *settings], env)
            for name, (env, settings) in EXPERIMENTS.items()
        }
        extra = {
            "ratio_same_file_size": ratio([run_same["peak_pss_sum_mib"]], [s["peak_pss_sum_mib"]]),  # type: ignore[list-item]
            "large_same_file_size": {**run_same, "rows_per_file": small_files},
            "experiments": {
                name: {
                    "env": EXPERIMENTS[name][0],
                    "ray": EXPERIMENTS[name][1],
                    "peak_pss_sum_mib": r["peak_pss_sum_mib"],
                    "ratio": ratio([r["peak_pss_sum_mib"]], [s["peak_pss_sum_mib"]]),  # type: ignore[list-item]
                    "rows_per_s": r["rows_per_s"],
                    "top_anon_mib": r["top_anon_mib"],
                }
                for name, r in experiments.items()
            },
        }
    return {
        "ratio": ratio([big["peak_pss_sum_mib"]], [s["peak_pss_sum_mib"]]),  # type: ignore[list-item]
        "mib_per_million_rows": round(slope, 1),
        "loaded": loaded(load_before),
        "ratio_rss_sum": ratio([big["peak_rss_sum_mib"]], [s["peak_rss_sum_mib"]]),  # type: ignore[list-item]
        "ratio_max_single_process": ratio([big["peak_single_mib"]], [s["peak_single_mib"]]),  # type: ignore[list-item]
        "ratio_anon_sum": ratio([big["peak_anon_sum_mib"]], [s["peak_anon_sum_mib"]]),  # type: ignore[list-item]
        "sizes": list(sizes),
        "peak_pss_sum_mib": dict(zip(map(str, sizes), pss, strict=True)),
        "bank_size": BANK_SIZE,
        "small": s,
        "large": big,
        "file_rows": {"small": small_files, "large": _train_file_rows(out, large)},
        **extra,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }


def _train_file_rows(out: Path, rows: int) -> int:
    """Rows in the largest training file of the default-layout log of ``rows`` rows."""
    import pyarrow.parquet as pq

    from distrec.data.schema import Manifest

    root = synthetic(out, rows)
    return max(pq.ParquetFile(f).metadata.num_rows for f in Manifest.read(root).files(root, "train"))


def child(root: str, teacher: str, bank: str, batch_size: int, ray_settings: list[str]) -> dict[str, object]:
    """One streamed pass over the training logs in a fresh embedded Ray (run in a subprocess): the ``ray``
    settings of ``jobs/local.yaml`` with overrides (``data_block_mib=128``)."""
    from distrec.loopback import bind_local_ray_to_loopback

    bind_local_ray_to_loopback()
    from distrec.config import load_config
    from distrec.data.schema import Manifest
    from distrec.orchestrate.pipeline import ray_session

    manifest = Manifest.read(root)
    files = [str(f) for f in manifest.files(root, "train")]
    settings = load_config(REPO / "jobs" / "local.yaml", [f"ray.{s}" for s in ray_settings]).ray
    with ray_session(settings):
        result = stream_pass(manifest, files, teacher, Path(bank), batch_size)
    if result["rows"] != manifest.rows["train"]:
        raise RuntimeError(f"streamed {result['rows']} rows, expected {manifest.rows['train']}")
    return result


def stream_pass(
    manifest: object, files: list[str], teacher: str, bank: Path, batch_size: int, bank_groups: int = 1
) -> dict[str, object]:
    """``files`` through ``soft_label_stream`` with one teacher, consumed batch by batch into ``BatchBuilder``
    as the student's feed does (inside a running Ray); rows, seconds and rows/s."""
    from distrec.data.batch import BatchBuilder
    from distrec.orchestrate.stream import ScoringOptions, front_door_column, soft_label_stream

    columns = BatchBuilder(manifest).columns  # type: ignore[arg-type]
    options = ScoringOptions(str(bank), bank_groups=bank_groups)
    stream = soft_label_stream(files, columns, {"t": teacher}, options, batch_size)
    name = json.loads(Path(teacher, "model.json").read_text())["name"]
    builder = BatchBuilder(manifest, [front_door_column(name)])  # type: ignore[arg-type]
    rows, started = 0, time.perf_counter()
    for table in stream.iter_batches(batch_size=batch_size, batch_format="pyarrow", prefetch_batches=2):
        rows += builder(table).size
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": round(seconds, 1), "rows_per_s": round(rows / seconds)}


def main() -> None:
    from distrec.config import DistillConfig

    parser = argparse.ArgumentParser(description="one streamed pass (the child of benchmark (e))")
    parser.add_argument("--root", required=True)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--bank", required=True)
    parser.add_argument("--batch-size", type=int, default=DistillConfig().score_batch_size)  # as the job scores
    parser.add_argument("--ray", nargs="*", default=[], help="ray.* settings, e.g. data_block_mib=16")
    args = parser.parse_args()
    print(json.dumps(child(args.root, args.teacher, args.bank, args.batch_size, args.ray)), flush=True)


if __name__ == "__main__":
    main()
