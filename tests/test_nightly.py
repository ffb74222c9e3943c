"""Five nights of ``distrec nightly`` on a synthetic day store, with real MLflow (SQLite), real Ray and
real TorchRec: cold start, warm start, a corrupt partition, a label-shuffled challenger, a driver killed
mid-night; then rollback, a re-run that is a no-op, and ``distrec evaluate`` on the champion.

The first two nights are a module fixture checked by a fast test (``make test``); the other three and
the rest continue from them in a slow test (``make test-all``), which takes about 6 minutes more."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distrec.cli import main
from distrec.config import load_config
from distrec.data.days import synthesize_days
from distrec.data.schema import LABEL
from distrec.nightly.registry import CHALLENGER, CHAMPION, Registry

DAYS = [f"2026-01-0{d}" for d in range(1, 7)]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("days") / "store"
    synthesize_days(root, len(DAYS), 5_000, users=150, items=80, new_users_per_day=5, new_items_per_day=2, seed=3)
    return root


def overrides(store: Path, runs: Path) -> list[str]:
    return [
        f"runs_dir={runs}",
        f"data.path={store}",
        "ray.address=null",
        "train.device=cpu",
        "train.num_workers=1",
        "train.gpus_per_worker=0",
        "train.cpus_per_worker=1",
        "train.epochs=2",
        "train.batch_size=256",
        "train.warmup_steps=0",
        "distill.bank_size=16",
        "distill.score_batch_size=2048",
        "teachers=[{name: fm, arch: deepfm, dim: 8, hidden: [16]}]",
        "student.dim=8",
        "student.hidden=[16]",
        "nightly.window_days=1",
        "nightly.warm_epochs=1",
    ]


def night(store: Path, runs: Path, date: str, *extra: str) -> int:
    return main(["nightly", "--date", date, "jobs/nightly.yaml", *overrides(store, runs), *extra])


def shuffle_labels(path: Path, seed: int) -> None:
    table = pq.read_table(path)
    labels = np.random.default_rng(seed).permutation(table.column(LABEL).to_numpy())
    pq.write_table(table.set_column(table.schema.get_field_index(LABEL), LABEL, pa.array(labels)), path)


def driver(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """``distrec ARGS`` in a process of its own, as a scheduler starts it (and as a retry restarts it);
    its output goes to ``log`` (a pipe nobody reads would fill and stall it)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "distrec.cli", *args],
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(Path.cwd())},
        )


def run_dir_of(registry: Registry, runs: Path, version: str) -> Path:
    """The run directory a version came from, as the nightly that registered it named it (its tags):
    the run id is the driver's own (date, config hash), never recomputed here."""
    tags = registry.version(version).tags
    assert tags["run_id"] == f"nightly-{tags['nightly_date']}-{tags['config_hash']}"
    return runs / tags["run_id"]


@pytest.fixture(scope="module")
def two_nights(ray_local: None, store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """Nights 1 and 2 on a fresh registry: (the runs directory, their exit codes). The fast test checks
    them; the slow one continues from them with nights 3-5."""
    runs = tmp_path_factory.mktemp("nights") / "runs"
    return runs, [night(store, runs, DAYS[1]), night(store, runs, DAYS[2])]


def test_cold_start_then_warm_start_promotes(store: Path, two_nights: tuple[Path, list[int]]) -> None:
    runs, codes = two_nights
    assert codes == [0, 0]
    registry = Registry(load_config("jobs/nightly.yaml", overrides(store, runs)).registry, runs)

    # night 1: no champion, cold start with the floors only -> v1 champion
    assert registry.version("1").tags["decision"] == "promoted"
    gates = json.loads((run_dir_of(registry, runs, "1") / "gates.json").read_text())
    assert gates["passed"] and gates["champion"] is None
    assert all(g["champion"] is None for g in gates["gates"])
    v1 = registry.version("1")
    assert v1.tags["nightly_date"] == DAYS[1] and v1.tags["data_window"] == f"{DAYS[0]}..{DAYS[0]}"
    assert v1.tags["decision"] == "promoted" and v1.tags["previous_champion"] == ""

    # night 2: warm start from v1 -> v2 promoted, gated against v1 on the held-out day
    assert registry.alias(CHAMPION) == "2"
    run2 = run_dir_of(registry, runs, "2")
    saved = load_config(run2 / "config.yaml")
    assert saved.student.warm_start and saved.student.warm_start.endswith("v1/student")
    assert saved.teachers[0].warm_start.endswith("v1/fm") and saved.train.epochs == 1
    gates = json.loads((run2 / "gates.json").read_text())
    assert gates["champion"] == "1" and all(g["champion"] is not None for g in gates["gates"])
    # AUC and log loss are compared as paired bootstrap intervals over the held-out day's users
    compared = [g for g in gates["gates"] if g["status"] != "skipped"]
    assert compared and all(g["interval"][0] <= g["interval"][1] for g in compared), compared
    assert "## Nightly gates" in (run2 / "report.md").read_text()
    assert registry.version("2").tags["previous_champion"] == "1"
    mlflow_run = registry.client.get_run(registry.version("2").run_id)
    curve = registry.client.get_metric_history(mlflow_run.info.run_id, "student.valid_auc")
    assert [m.step for m in curve] == [0]  # one warm epoch, per-epoch metrics from training.json
    artifacts = {a.path for a in registry.client.list_artifacts(mlflow_run.info.run_id, "models/student")}
    assert {"models/student/model.json", "models/student/weights.pt"} <= artifacts


def test_retrain_from_scratch_is_gated_against_the_champion(ray_local: None, store: Path, tmp_path: Path) -> None:
    """``nightly.warm_start=false``: with a champion, the night trains every model from scratch for
    ``train.epochs`` (not ``warm_epochs``), and is still gated against that champion."""
    runs = tmp_path / "runs"
    assert night(store, runs, DAYS[1], "train.epochs=1") == 0
    assert night(store, runs, DAYS[2], "nightly.warm_start=false") == 0
    registry = Registry(load_config("jobs/nightly.yaml", overrides(store, runs)).registry, runs)
    assert registry.alias(CHAMPION) == "2" and registry.version("2").tags["warm_start_from"] == ""
    run2 = run_dir_of(registry, runs, "2")
    saved = load_config(run2 / "config.yaml")
    assert saved.student.warm_start is None and saved.teachers[0].warm_start is None
    assert saved.train.epochs == 2  # train.epochs, where a warm night would run nightly.warm_epochs=1
    gates = json.loads((run2 / "gates.json").read_text())
    assert gates["champion"] == "1" and all(g["champion"] is not None for g in gates["gates"])


@pytest.mark.slow
def test_bad_day_bad_challenger_killed_driver_rollback_and_noop(
    store: Path, two_nights: tuple[Path, list[int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nights 3-5 after the two good nights; then rollback, a no-op re-run and ``distrec evaluate``."""
    runs, codes = two_nights
    assert codes == [0, 0]
    registry = Registry(load_config("jobs/nightly.yaml", overrides(store, runs)).registry, runs)

    # night 3: a corrupt partition of the held-out day -> refused (bad data), nothing registered
    part = store / "train" / f"ds={DAYS[3]}" / "part-00000.parquet"
    original = part.read_bytes()
    part.write_bytes(original[: len(original) // 2])
    capsys.readouterr()
    assert night(store, runs, DAYS[3]) == 2
    assert str(part) in capsys.readouterr().err
    assert registry.alias(CHAMPION) == "2" and len(registry.versions()) == 2
    assert not list(runs.glob(f"nightly-{DAYS[3]}-*"))  # refused before any training
    part.write_bytes(original)

    # night 4: the day it trains on has shuffled labels (the label rate is unchanged, so the data checks
    # pass) -> the gates fail against v2, v3 is tagged rejected, the champion stays v2, exit 1
    for split in ("train", "valid"):
        shuffle_labels(store / split / f"ds={DAYS[3]}" / "part-00000.parquet", 4)
    capsys.readouterr()
    assert night(store, runs, DAYS[4]) == 1
    assert "rejected" in capsys.readouterr().err
    assert registry.alias(CHAMPION) == "2" and registry.alias(CHALLENGER) == "3"
    v3 = registry.version("3")
    assert v3.tags["decision"] == "rejected" and v3.tags["gates"] == "failed"
    gates = json.loads((run_dir_of(registry, runs, "3") / "gates.json").read_text())
    assert not gates["passed"] and any(g["status"] == "failed" for g in gates["gates"])
    assert night(store, runs, DAYS[4]) == 1 and len(registry.versions()) == 3  # a decided night: no-op

    # night 5, its driver killed after the teachers; the retry (a new driver process from the same code,
    # as a scheduler's retry is) resumes the partial run and promotes exactly once
    args = ["nightly", "--date", DAYS[5], "jobs/nightly.yaml", *overrides(store, runs)]
    first = driver(args, tmp_path / "driver-1.log")
    try:
        deadline = time.time() + 600
        partial: Path | None = None
        while time.time() < deadline:
            assert first.poll() is None, f"the driver ended before the student stage: {tmp_path / 'driver-1.log'}"
            partial = next(runs.glob(f"nightly-{DAYS[5]}-*.partial"), None)
            if partial and all((partial / "models" / m / "training.json").is_file() for m in ("fm", "base")):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the driver did not finish its teachers in time")
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        first.wait(timeout=60)
    assert not (partial / "models" / "student" / "training.json").exists()
    trained = {m: (partial / "models" / m / "training.json").stat().st_mtime_ns for m in ("fm", "base")}
    retry = driver(args, tmp_path / "driver-2.log")
    retry.wait(timeout=900)
    out = (tmp_path / "driver-2.log").read_text()
    assert retry.returncode == 0, out[-4000:]
    assert f"{DAYS[5]}: version 4 promoted" in out
    run5 = run_dir_of(registry, runs, "4")
    assert run5.name == partial.name.removesuffix(".partial") and not partial.exists()
    for name, mtime in trained.items():  # resumed: the teachers were not trained again
        assert (run5 / "models" / name / "training.json").stat().st_mtime_ns == mtime
    assert registry.alias(CHAMPION) == "4" and len(registry.versions()) == 4
    assert [v.tags["nightly_date"] for v in registry.versions()].count(DAYS[5]) == 1
    assert registry.version("4").tags["previous_champion"] == "2"

    # rollback: champion v4 -> v2; re-running night 2 is a no-op that prints its version
    assert main(["registry", "--config", "jobs/nightly.yaml", "rollback", *overrides(store, runs)]) == 0
    assert registry.alias(CHAMPION) == "2"
    capsys.readouterr()
    assert night(store, runs, DAYS[2]) == 0
    assert "version 2 promoted (already done)" in capsys.readouterr().out
    assert len(registry.versions()) == 4 and registry.alias(CHAMPION) == "2"

    assert main(["registry", "--config", "jobs/nightly.yaml", "list", *overrides(store, runs)]) == 0
    listed = capsys.readouterr().out
    assert "aliases=champion" in listed and "decision=rejected" in listed

    # distrec evaluate: the champion from the registry on a day store's split
    args = [
        "evaluate",
        "models:/distrec@champion",
        *overrides(store, runs),
        "--data",
        str(store),
        "--split",
        "test_ood",
    ]
    assert main([*args, "--config", "jobs/nightly.yaml"]) == 0  # key=value right after MODEL: argparse positionals
    report = json.loads(capsys.readouterr().out)
    assert report["model"].endswith("v2/student") and 0.5 < report["metrics"]["test_ood"]["auc"] <= 1.0
