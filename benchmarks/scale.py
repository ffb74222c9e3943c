"""(i) Production scale on one machine: 100M synthetic rows, one teacher over 20M of them, and its
front-door soft labels streamed for those 20M rows, in memory that does not grow with the log.

Every step runs in a fresh interpreter whose whole process tree (the driver and every Ray process) is
sampled for PSS (``TreeMemory``), as in (e):

- ``generate``: ``distrec.data.synth.synthesize`` of ``ROWS`` rows (the synthetic default's users and
  items; files of 1M rows). The log is cached under the output directory with the generator's own
  figures beside it, so a later run reuses both.
- ``job``: one embedded Ray (``ray_session``, the local defaults) that trains the first teacher of
  ``jobs/local.yaml`` (its workers and batch size, one epoch, validated on the log's valid split) over
  the first training files that hold ``TRAIN_ROWS`` rows, exports it, writes a history bank of the
  demo's size and streams the teacher's front-door column over the same files into ``BatchBuilder``
  (``benchmarks.memory.stream_pass``; the demo's ``distill.bank_size`` and ``distill.bank_groups``: a
  row scored against 8 of 64 histories keeps one pass over 20M rows to minutes on 2 cores).
- the same job on the 1M-row synthetic log (all of its 700,000 training rows): the reference.

``ratio`` is the job's peak PSS at scale over the reference's (target: at most 1.3); rows/s of the
generator, the teacher's epoch and the stream are reported beside it. Full runs only (``--only i``
runs it with ``--quick`` too, at the quick sizes): the 100M-row log takes tens of minutes to generate
on 2 cores the first time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.common import REPO, cores, load_average, loaded, measured_child, ratio, synthetic, synthetic_root

ROWS, TRAIN_ROWS, REFERENCE_ROWS = 100_000_000, 20_000_000, 1_000_000
QUICK = (4_000_000, 2_000_000, 1_000_000)  # --only i --quick: the same steps at a size that runs in minutes


def _generated(out: Path, rows: int) -> tuple[Path, dict[str, object]]:
    """The cached ``rows``-row synthetic log (the path ``benchmarks.common.synthetic`` uses) and the
    figures of the run that generated it."""
    from distrec.data.schema import MANIFEST
    from distrec.io import atomic_write_json

    root = synthetic_root(out, rows)
    figures = root.with_name(root.name + ".generation.json")
    if not (root / MANIFEST).is_file() or not figures.is_file():
        args = ["generate", "--root", str(root), "--rows", str(rows)]
        result = measured_child("benchmarks.scale", args, out / f"scale-generate-{rows}.log")
        result["rows_per_s"] = round(rows / float(result["seconds"]))  # type: ignore[arg-type]
        atomic_write_json(figures, result)
    return root, json.loads(figures.read_text())


def run(out: Path, quick: bool) -> dict[str, object]:
    rows, train_rows, reference_rows = QUICK if quick else (ROWS, TRAIN_ROWS, REFERENCE_ROWS)
    root, generation = _generated(out, rows)
    reference_root = synthetic(out, reference_rows)
    load_before = load_average()
    jobs = {}
    for name, (data, limit) in {"reference": (reference_root, 0), "scale": (root, train_rows)}.items():
        work = (out / f"scale-{name}").resolve()
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        args = ["job", "--root", str(data.resolve()), "--train-rows", str(limit), "--work", str(work)]
        jobs[name] = measured_child("benchmarks.scale", args, work / "job.log")
        print(f"[bench] scale {name}: {jobs[name]}", flush=True)
    big, small = jobs["scale"], jobs["reference"]
    return {
        "ratio": ratio([big["peak_pss_sum_mib"]], [small["peak_pss_sum_mib"]]),  # type: ignore[list-item]
        "loaded": loaded(load_before),
        "sizes": {"generated": rows, "trained_and_streamed": big["train_rows"], "reference": small["train_rows"]},
        "generate_rows_per_s": generation["rows_per_s"],
        "generate_peak_pss_mib": generation["peak_pss_sum_mib"],
        "train_rows_per_s": big["train_rows_per_s"],
        "stream_rows_per_s": big["stream_rows_per_s"],
        "peak_pss_mib": big["peak_pss_sum_mib"],
        "reference_peak_pss_mib": small["peak_pss_sum_mib"],
        "bank": big["bank"],
        "generation": generation,
        "scale": big,
        "reference": small,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }


def generate(root: Path, rows: int) -> dict[str, object]:
    from distrec.data.synth import synthesize

    started = time.perf_counter()
    synthesize(root, rows, seed=0, overwrite=True, processes=cores())
    return {"rows": rows, "seconds": round(time.perf_counter() - started, 1)}


def job(root: Path, train_rows: int, work: Path) -> dict[str, object]:
    """Train the first teacher for one epoch over the first files holding ``train_rows`` training rows
    (0: all), then stream its front-door column over the same files (run in a subprocess)."""
    from distrec.loopback import bind_local_ray_to_loopback

    bind_local_ray_to_loopback()
    import pyarrow.parquet as pq

    from benchmarks.memory import stream_pass
    from distrec.config import RayConfig, load_config
    from distrec.data.schema import Manifest
    from distrec.orchestrate.pipeline import ray_session
    from distrec.orchestrate.stream import write_history_bank
    from distrec.orchestrate.trainers import fit
    from distrec.train.loop import WorkerTask

    manifest = Manifest.read(root)
    files, rows = [], 0
    for f in manifest.files(root, "train"):
        if train_rows and rows >= train_rows:
            break
        files.append(str(f))
        rows += pq.ParquetFile(f).metadata.num_rows
    config = load_config(REPO / "jobs" / "local.yaml")
    teacher = config.teachers[0]
    task = WorkerTask(model=teacher, train=replace(config.train, epochs=1), dataset=str(root), train_files=files)
    with ray_session(RayConfig()):
        started = time.perf_counter()
        trained = fit(task, str(work / "ray"))
        fit_seconds = time.perf_counter() - started
        export = work / "teacher"
        trained.checkpoint.to_directory(str(export))
        shutil.rmtree(export / "dcp", ignore_errors=True)
        distill = config.distill
        bank = write_history_bank(manifest, str(root), distill.bank_size, 0, work / "bank.parquet")
        stream = stream_pass(manifest, files, str(export), bank, distill.score_batch_size, distill.bank_groups)
    if stream["rows"] != rows:
        raise RuntimeError(f"streamed {stream['rows']} rows, expected {rows}")
    loop = trained.metrics
    return {
        "train_rows": rows,
        "files": len(files),
        "fit_seconds": round(fit_seconds, 1),
        "train_loop_seconds": round(float(loop["seconds"]), 1),
        "train_rows_per_s": round(float(loop["rows"]) / float(loop["seconds"])),
        "valid_auc": round(float(loop["valid_auc"]), 4),
        "stream_seconds": stream["seconds"],
        "stream_rows_per_s": stream["rows_per_s"],
        "bank": {"size": distill.bank_size, "groups": distill.bank_groups},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="a step of benchmark (i), in its own interpreter")
    parser.add_argument("step", choices=["generate", "job"])
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--rows", type=int, default=0)
    parser.add_argument("--train-rows", type=int, default=0)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    root = args.root.resolve()  # the training workers run in directories of their own
    result = generate(root, args.rows) if args.step == "generate" else job(root, args.train_rows, args.work.resolve())
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
