"""``python -m benchmarks.run [--quick] [--only a,b,...] [--out bench_out]`` (``make bench``).

Runs the benchmarks, writes ``docs/performance.md`` (atomically) and prints one JSON object as the
last line of output. Every figure is a ratio against a reference measured in the same command:

    a  reader_vs_raw           Parquet -> Batch (KJT) rows/s  /  raw pyarrow scan rows/s
    b  torchrec_vs_plain       TorchRec fused teacher training samples/s  /  the faster of nn.EmbeddingBag
                               (sparse=True) + SparseAdam and + sparse Adagrad
    c  stream_vs_precomputed   student samples/s on the live soft-label stream  /  on precomputed labels
    d  two_vs_one_worker       teacher samples/s with 2 Ray Train workers  /  with 1
    e  rss_10m_vs_1m           peak PSS of the streamed data path on the large log  /  on a 10x smaller one
    f  warm_vs_cold            wall time of a cold nightly reaching the warm one's held-out AUC  /  the warm one
    g  tiny_run_seconds        wall seconds of `distrec run jobs/local.yaml` on 10,000 rows (not a ratio)
    h  many_files_vs_few       soft-label stream rows/s over ~3,000 small files  /  over ~10 files
    i  scale_pss_vs_1m         peak PSS of one teacher's epoch and its soft-label stream over 20M rows of a
                               100M-row log  /  the same job on a 1M-row log (full runs only)

``--quick`` (under 5 minutes on 2 cores once its logs are cached in ``--out``) uses smaller sizes, two
rounds instead of three where a round is whole trainer fits ((c), (d)), leaves out the sides that only
explain a ratio, and leaves out the whole-job figures (f), (g) and (i), which
take minutes by nature, unless ``--only`` names them; the JSON and the document say which sizes were
used. Only a full run (every figure, not quick) rewrites ``docs/performance.md`` by default. Each figure
carries the min/median/max of its rounds' ratios (``spread``) and ``loaded``: true when the 1-minute load
average exceeded the cores while it ran.
"""

from __future__ import annotations

from distrec.loopback import bind_local_ray_to_loopback

bind_local_ray_to_loopback()  # before anything imports ray

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks.common import REPO, load_average, machine_info  # noqa: E402

BENCHMARKS = {
    "a": ("reader_vs_raw", "benchmarks.reader"),
    "b": ("torchrec_vs_plain", "benchmarks.embeddings"),
    "c": ("stream_vs_precomputed", "benchmarks.stream"),
    "d": ("two_vs_one_worker", "benchmarks.scaling"),
    "e": ("rss_10m_vs_1m", "benchmarks.memory"),
    "f": ("warm_vs_cold", "benchmarks.warm"),
    "g": ("tiny_run_seconds", "benchmarks.tiny"),
    "h": ("many_files_vs_few", "benchmarks.files"),
    "i": ("scale_pss_vs_1m", "benchmarks.scale"),
}
FULL_ONLY = {"f", "g", "i"}  # whole jobs: left out of --quick unless --only names them
NEEDS_RAY = {"c", "d", "f", "h"}  # in this process; (b), (e) and (g) start their own interpreters


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (< 5 min on 2 cores)")
    parser.add_argument("--only", default=None, help="comma-separated subset of a,b,...,i (default: all)")
    parser.add_argument("--out", default="bench_out", help="cached datasets, logs and results.json")
    parser.add_argument(
        "--doc", default=None, help="where to write the report (default: docs/performance.md for a full run)"
    )
    args = parser.parse_args(argv)
    if args.only is None:
        selected = [k for k in BENCHMARKS if not (args.quick and k in FULL_ONLY)]
    else:
        selected = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in selected if k not in BENCHMARKS]
    if unknown:
        parser.error(f"--only: unknown benchmarks {unknown}; choose from {sorted(BENCHMARKS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    full_run = not args.quick and set(selected) == set(BENCHMARKS)  # only a full run rewrites docs/performance.md
    doc = Path(args.doc) if args.doc else (REPO / "docs" if full_run else out) / "performance.md"
    command = shlex.join(["python", "-m", "benchmarks.run", *(argv if argv is not None else sys.argv[1:])])

    from distrec.config import RayConfig
    from distrec.orchestrate.pipeline import ray_session

    started = time.perf_counter()
    info = {**machine_info(), "load_average_start": load_average()}
    details: dict[str, dict[str, object]] = {}
    errors: dict[str, str] = {}
    for key in [k for k in "ab" if k in selected]:
        details[key] = _one(key, out, args.quick, errors)
    if NEEDS_RAY & set(selected):
        with ray_session(RayConfig()):  # one embedded Ray (the local defaults) for (c), (d), (f) and (h)
            for key in [k for k in "dcfh" if k in selected]:
                details[key] = _one(key, out, args.quick, errors)
    for key in [k for k in "gei" if k in selected]:  # last, with no Ray of ours running: each starts its own
        details[key] = _one(key, out, args.quick, errors)
    info["load_average_end"] = load_average()
    seconds = round(time.perf_counter() - started, 1)

    summary: dict[str, object] = {BENCHMARKS[k][0]: details[k].get("ratio") for k in sorted(details)}
    summary.update(_absolute(details))
    summary["spread"] = {BENCHMARKS[k][0]: d["ratio_spread"] for k, d in sorted(details.items()) if "ratio_spread" in d}
    summary["loaded"] = {BENCHMARKS[k][0]: d["loaded"] for k, d in sorted(details.items()) if "loaded" in d}
    summary.update(
        {
            "quick": args.quick,
            "sizes": _sizes(details),
            "seconds": seconds,
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average": [info["load_average_start"], info["load_average_end"]],
            "nproc": info["nproc"],
        }
    )
    if errors:
        summary["errors"] = {BENCHMARKS[k][0]: e.splitlines()[-1][:300] for k, e in errors.items()}
    from benchmarks.report import render
    from distrec.io import atomic_write_json, atomic_write_text

    atomic_write_json(out / "results.json", {"command": command, "machine": info, "details": details, **summary})
    atomic_write_text(doc, render(command, info, details, errors, summary))
    print(f"[bench] wrote {doc} and {out / 'results.json'} in {seconds}s", flush=True)
    print(json.dumps(summary), flush=True)
    return 1 if errors else 0


def _one(key: str, out: Path, quick: bool, errors: dict[str, str]) -> dict[str, object]:
    name, module = BENCHMARKS[key]
    print(f"[bench] ({key}) {name} ...", flush=True)
    started = time.perf_counter()
    try:
        result = importlib.import_module(module).run(out, quick)
    except Exception:
        errors[key] = traceback.format_exc()
        print(f"[bench] ({key}) {name} FAILED:\n{errors[key]}", flush=True)
        result = {"ratio": None}
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(f"[bench] ({key}) {name} = {result.get('ratio')} ({result['wall_seconds']}s)", flush=True)
    return result


def _absolute(details: dict[str, dict[str, object]]) -> dict[str, object]:
    """A few absolute figures beside the ratios (rows/s, samples/s, MiB)."""
    keys = {
        "a": ("batch_rows_per_s", "raw_rows_per_s"),
        "b": (
            "torchrec_samples_per_s",
            "plain_samples_per_s",
            "plain_reference",
            "ratio_vs_plain_sparseadam",
            "ratio_vs_plain_adagrad",
        ),
        "c": (
            "stream_samples_per_s",
            "precomputed_samples_per_s",
            "scoring_generic_rows_per_s",
            "first_batch_seconds",
            "steady_rows_per_s",
            "epoch_ratio",
            "full_bank_ratio",
        ),
        "d": ("two_workers_samples_per_s", "one_worker_samples_per_s", "demo_ratio"),
        "e": ("ratio_rss_sum", "ratio_max_single_process", "ratio_anon_sum", "ratio_same_file_size"),
        "f": ("warm_seconds", "cold_seconds", "warm_auc", "cold_epochs", "reached"),
        "g": ("outside_loops_share", "training_loop_seconds", "stages"),
        "h": ("many_rows_per_s", "few_rows_per_s", "files"),
        "i": ("generate_rows_per_s", "train_rows_per_s", "stream_rows_per_s", "peak_pss_mib", "reference_peak_pss_mib"),
    }
    out: dict[str, object] = {}
    for k, names in keys.items():
        for n in names:
            if k in details and n in details[k]:
                out[f"{k}_{n}"] = details[k][n]
    if "e" in details and "small" in details["e"]:
        for size in ("small", "large"):
            out[f"e_{size}_peak_pss_sum_mib"] = details["e"][size]["peak_pss_sum_mib"]  # type: ignore[index]
    for k, name in (("c", "scoring_rows_per_s"), ("e", "mib_per_million_rows")):  # the issue's own key names
        if name in details.get(k, {}):
            out[name] = details[k][name]
    return out


def _sizes(details: dict[str, dict[str, object]]) -> dict[str, object]:
    sizes: dict[str, object] = {}
    for k, d in details.items():
        if "sizes" in d:
            sizes[k] = d["sizes"]
        elif "tables" in d:
            sizes[k] = d["tables"]
        elif "dataset_rows" in d:
            sizes[k] = d["dataset_rows"]
    return sizes


if __name__ == "__main__":
    sys.exit(main())
