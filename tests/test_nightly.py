"""Five nights of ``distrec nightly`` on a synthetic day store, with real MLflow (SQLite), real Ray and
real TorchRec: cold start, warm start, a corrupt partition, a label-shuffled challenger, a driver killed
mid-night; then rollback, a re-run that is a no-op, and ``distrec evaluate`` on the champion."""

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
from distrec.nightly.job import config_hash
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


def test_five_nights(ray_local: None, store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    config = load_config("jobs/nightly.yaml", overrides(store, runs))
    registry = Registry(config.registry, runs)
    key = config_hash(config)

    # night 1: no champion, cold start with the floors only -> v1 champion
    assert night(store, runs, DAYS[1]) == 0
    assert registry.alias(CHAMPION) == "1"
    gates = json.loads((runs / f"nightly-{DAYS[1]}-{key}" / "gates.json").read_text())
    assert gates["passed"] and gates["champion"] is None
    assert all(g["champion"] is None for g in gates["gates"])
    v1 = registry.version("1")
    assert v1.tags["nightly_date"] == DAYS[1] and v1.tags["data_window"] == f"{DAYS[0]}..{DAYS[0]}"
    assert v1.tags["config_hash"] == key and v1.tags["decision"] == "promoted" and v1.tags["previous_champion"] == ""

    # night 2: warm start from v1 -> v2 promoted, gated against v1 on the held-out day
    assert night(store, runs, DAYS[2]) == 0
    assert registry.alias(CHAMPION) == "2"
    run2 = runs / f"nightly-{DAYS[2]}-{key}"
    saved = load_config(run2 / "config.yaml")
    assert saved.student.warm_start and saved.student.warm_start.endswith("v1/student")
    assert saved.teachers[0].warm_start.endswith("v1/fm") and saved.train.epochs == 1
    gates = json.loads((run2 / "gates.json").read_text())
    assert gates["champion"] == "1" and all(g["champion"] is not None for g in gates["gates"])
    assert "## Nightly gates" in (run2 / "report.md").read_text()
    assert registry.version("2").tags["previous_champion"] == "1"
    mlflow_run = registry.client.get_run(registry.version("2").run_id)
    curve = registry.client.get_metric_history(mlflow_run.info.run_id, "student.valid_auc")
    assert [m.step for m in curve] == [0]  # one warm epoch, per-epoch metrics from training.json
    artifacts = {a.path for a in registry.client.list_artifacts(mlflow_run.info.run_id, "models/student")}
    assert {"models/student/model.json", "models/student/weights.pt"} <= artifacts

    # night 3: a corrupt partition of the held-out day -> refused (bad data), nothing registered
    part = store / "train" / f"ds={DAYS[3]}" / "part-00000.parquet"
    original = part.read_bytes()
    part.write_bytes(original[: len(original) // 2])
    capsys.readouterr()
    assert night(store, runs, DAYS[3]) == 2
    assert str(part) in capsys.readouterr().err
    assert registry.alias(CHAMPION) == "2" and len(registry.versions()) == 2
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
    gates = json.loads((runs / f"nightly-{DAYS[4]}-{key}" / "gates.json").read_text())
    assert not gates["passed"] and any(g["status"] == "failed" for g in gates["gates"])
    assert night(store, runs, DAYS[4]) == 1 and len(registry.versions()) == 3  # a decided night: no-op

    # night 5, its driver killed after the teachers: the re-run resumes and promotes exactly once
    partial = runs / f"nightly-{DAYS[5]}-{key}.partial"
    args = ["nightly", "--date", DAYS[5], "jobs/nightly.yaml", *overrides(store, runs)]
    driver = subprocess.Popen(
        [sys.executable, "-m", "distrec.cli", *args],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    done = [partial / "models" / name / "training.json" for name in ("fm", "base")]
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not all(p.is_file() for p in done):
            assert driver.poll() is None, "the driver ended before the student stage"
            time.sleep(0.2)
        assert all(p.is_file() for p in done)
        os.killpg(driver.pid, signal.SIGKILL)
    finally:
        driver.wait(timeout=60)
    assert not (partial / "models" / "student" / "training.json").exists()
    trained = {p.parent.name: p.stat().st_mtime_ns for p in done}
    assert night(store, runs, DAYS[5]) == 0
    run5 = runs / f"nightly-{DAYS[5]}-{key}"
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
    assert "aliases=champion" in capsys.readouterr().out

    # distrec evaluate: the champion from the registry on a day store's split
    args = ["evaluate", "models:/distrec@champion", "--data", str(store), "--split", "test_ood"]
    assert main([*args, "--config", "jobs/nightly.yaml", *overrides(store, runs)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"].endswith("v2/student") and 0.5 < report["metrics"]["test_ood"]["auc"] <= 1.0
