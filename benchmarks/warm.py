"""(f) Wall time of a cold nightly that reaches a warm-started nightly's held-out AUC, against the warm one.

Both sides are ``distrec nightly`` (``distrec.nightly.job.nightly``, in this process, with its data
checks, window, training stages, gates and MLflow record) on the same date of one synthetic day
store (``distrec.data.days``, with drift), trained on the day before it, each in a registry whose
champion is the same night before (a cold start on the day before that, run in each registry and not
counted). The warm side continues from that champion for ``nightly.warm_epochs`` (1) epoch. The cold
side retrains from scratch (``nightly.warm_start=false``) for 1, 2, 4, ... epochs, each in its own
registry, until its held-out AUC (``test_id.auc`` of ``nightly.model``, the gates' own figure) is
within 0.005 of the warm one's. Both sides are gated against the champion, so both pay for fetching
and evaluating it. The figure is that cold nightly's wall time over the warm nightly's (above 1: the
warm start is cheaper). Where no cold run gets there, the ratio is the longest cold run's, a lower
bound, and ``reached`` is false.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from benchmarks.common import REPO, load_average

TOLERANCE = 0.005  # "reaches the same held-out AUC": within this of the warm night's


def _night(config_overrides: list[str], date: str) -> tuple[float, float]:
    """(wall seconds, held-out AUC) of one nightly; a night its gates reject counts as well."""
    from distrec.config import load_config
    from distrec.nightly.job import GATES, NotPromoted, nightly

    config = load_config(REPO / "jobs" / "nightly.yaml", config_overrides)
    started = time.perf_counter()
    try:
        run_dir = nightly(config, date).run_dir
    except NotPromoted:
        run_dir = None
    seconds = time.perf_counter() - started
    if run_dir is None:  # rejected: the run directory the night wrote its gates into
        run_dir = next(p for p in Path(config.runs_dir).glob(f"nightly-{date}-*") if p.is_dir())
    gates = json.loads((Path(run_dir) / GATES).read_text())
    auc = float(gates["metrics"]["challenger"]["test_id"]["auc"])
    print(f"[bench] nightly {date} {Path(config.runs_dir).name}: {seconds:.1f}s, held-out AUC {auc:.4f}", flush=True)
    return seconds, auc


def run(out: Path, quick: bool) -> dict[str, object]:
    from distrec.data.days import synthesize_days

    if quick:
        rows, users, items, dim, hidden, batch, cold_epochs = 5_000, 150, 80, 8, 16, 256, (1, 2, 4)
    else:
        rows, users, items, dim, hidden, batch, cold_epochs = 50_000, 2_000, 1_000, 16, 64, 1_024, (1, 2, 4, 8)
    champion_epochs = 2
    root = (out / "warm_vs_cold").resolve()
    shutil.rmtree(root, ignore_errors=True)  # an earlier run's registries would make every night a no-op
    store = root / "days"
    synthesize_days(store, 3, rows, users=users, items=items, seed=5, overwrite=True)
    days = [f"2026-01-0{d}" for d in (1, 2, 3)]

    def settings(runs: str, epochs: int) -> list[str]:
        return [
            f"runs_dir={root / runs}",
            f"data.path={store}",
            "ray.address=null",
            "train.device=cpu",
            "train.num_workers=1",
            "train.gpus_per_worker=0",
            "train.cpus_per_worker=1",
            f"train.epochs={epochs}",
            f"train.batch_size={batch}",
            "train.warmup_steps=0",
            "distill.bank_size=16",
            "distill.score_batch_size=2048",
            f"teachers=[{{name: fm, arch: deepfm, dim: {dim}, hidden: [{hidden}]}}]",
            f"student.dim={dim}",
            f"student.hidden=[{hidden}]",
            "nightly.window_days=1",
            "nightly.warm_epochs=1",
        ]

    load_before = load_average()
    _night(settings("warm", champion_epochs), days[1])  # last night's champion, cold: not counted
    warm_seconds, warm_auc = _night(settings("warm", champion_epochs), days[2])
    cold: list[dict[str, float]] = []
    reached = False
    for epochs in cold_epochs:
        _night(settings(f"cold-{epochs}", champion_epochs), days[1])  # the same champion: not counted
        seconds, auc = _night([*settings(f"cold-{epochs}", epochs), "nightly.warm_start=false"], days[2])
        cold.append({"epochs": epochs, "seconds": round(seconds, 1), "auc": round(auc, 4)})
        reached = auc >= warm_auc - TOLERANCE
        if reached:
            break
    return {
        "ratio": round(cold[-1]["seconds"] / warm_seconds, 3),
        "reached": reached,
        "warm_seconds": round(warm_seconds, 1),
        "warm_auc": round(warm_auc, 4),
        "warm_epochs": 1,
        "cold_seconds": cold[-1]["seconds"],
        "cold_epochs": cold[-1]["epochs"],
        "cold_runs": cold,
        "sizes": {"rows_per_day": rows, "users": users, "items": items, "dim": dim, "hidden": hidden},
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
