"""(g) Fixed cost: wall seconds of the README's main job on a 10,000-row synthetic dataset.

``distrec run jobs/local.yaml data.synth.rows=10000`` as a user starts it: the CLI in a fresh
interpreter with its own embedded Ray, timed from the command's start to its exit. Its report.json
says where the time went: ``stages`` (data and checks, starting Ray, teachers and base, scoring soft
labels, students, evaluation, report) and each model's training-loop seconds. The teachers and
``base`` train concurrently, then the students, so the time spent inside training loops is taken
as the longest loop of each of those two stages; ``outside_loops_share`` is the rest of the wall
time over the wall time: start-up, planning, scoring, evaluation and the processes Ray starts.
The figure is the median of the repeats' wall seconds (target: under 90 s on 2 cores), with their
min and max.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO, load_average, loaded, median

ROWS = 10_000


def _one(out: Path, repeat: int) -> dict[str, object]:
    runs = out / "tiny-runs"
    overrides = [f"data.synth.rows={ROWS}", f"data.cache_dir={out / 'data'}", f"runs_dir={runs}", f"run_id=r{repeat}"]
    log = out / f"tiny-r{repeat}.log"
    started = time.perf_counter()
    with open(log, "w") as sink:
        code = subprocess.call(
            [sys.executable, "-m", "distrec.cli", "run", "jobs/local.yaml", *overrides],
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"distrec run exited {code}; see {log}")
    run = json.loads((runs / f"r{repeat}" / "report.json").read_text())["run"]
    first = {t["name"] for t in run["config"]["teachers"]} | {"base"}
    loops = {name: float(t["seconds"]) for name, t in run["training"].items()}
    in_loops = max(v for k, v in loops.items() if k in first) + max(
        (v for k, v in loops.items() if k not in first), default=0.0
    )
    result = {
        "wall_seconds": round(wall, 1),
        "training_loop_seconds": round(in_loops, 1),
        "outside_loops_share": round(1 - in_loops / wall, 3),
        "stages": {s["stage"]: s["seconds"] for s in run["stages"]},
        "loops": {k: round(v, 1) for k, v in loops.items()},
    }
    print(f"[bench] tiny run {repeat}: {result}", flush=True)
    return result


def run(out: Path, quick: bool) -> dict[str, object]:
    import shutil

    shutil.rmtree(out / "tiny-runs", ignore_errors=True)
    load_before = load_average()
    runs = [_one(out, r) for r in range(1 if quick else 3)]
    walls = [float(r["wall_seconds"]) for r in runs]  # type: ignore[arg-type]
    typical = runs[walls.index(sorted(walls)[len(walls) // 2])]
    return {
        "ratio": round(median(walls), 1),
        "ratio_spread": {"min": min(walls), "median": round(median(walls), 1), "max": max(walls)},
        "loaded": loaded(load_before),
        "tiny_run_seconds": round(median(walls), 1),
        "outside_loops_share": typical["outside_loops_share"],
        "training_loop_seconds": typical["training_loop_seconds"],
        "stages": typical["stages"],
        "loops": typical["loops"],
        "rows": ROWS,
        "repeats": len(runs),
        "runs": runs,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
