"""The nightly's parts without training: gates, the MLflow registry (real SQLite store), the data checks."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from distrec.config import Config, GateConfig, RegistryConfig
from distrec.data.days import day_rows, synthesize_days, window_view
from distrec.data.schema import Manifest
from distrec.errors import ConfigError, DataError
from distrec.nightly.gates import check_gates, gate_table
from distrec.nightly.job import check_day
from distrec.nightly.registry import CHAMPION, Registry


def test_gates_floor_tolerance_and_skipped() -> None:
    gates = [
        GateConfig("test_id.auc", floor=0.6, tolerance=0.01),
        GateConfig("test_id.logloss", floor=0.6, tolerance=0.01, higher_is_better=False),
        GateConfig("test_ood.auc", floor=0.5),
    ]
    challenger = {"test_id": {"auc": 0.70, "logloss": 0.55}}
    passed, rows = check_gates(gates, challenger, None)  # the first night: floors only
    assert passed and [r["status"] for r in rows] == ["passed", "passed", "skipped"]
    passed, rows = check_gates(gates, challenger, {"test_id": {"auc": 0.705, "logloss": 0.545}})
    assert passed  # within the tolerance of the champion on both
    passed, rows = check_gates(gates, challenger, {"test_id": {"auc": 0.72, "logloss": 0.50}})
    assert not passed and [r["status"] for r in rows] == ["failed", "failed", "skipped"]
    assert "beyond the tolerance" in rows[0]["reason"]
    passed, rows = check_gates(gates, {"test_id": {"auc": 0.59, "logloss": 0.61}}, None)
    assert not passed and "floor 0.6" in rows[0]["reason"] and "floor 0.6" in rows[1]["reason"]
    assert "| test_id.auc | 0.5900 | - | - | 0.6000 | 0.01 | failed |" in gate_table(rows)


def test_gates_against_the_champion_decide_on_the_interval_where_there_is_one() -> None:
    """The same point values, 0.02 below the champion: a failure without an interval, and with one,
    a failure only when all of the interval lies beyond the tolerance."""
    gates = [
        GateConfig("test_id.auc", floor=0.5, tolerance=0.01),
        GateConfig("test_id.logloss", floor=0.7, tolerance=0.01, higher_is_better=False),
    ]
    challenger, champion = {"test_id": {"auc": 0.68, "logloss": 0.57}}, {"test_id": {"auc": 0.70, "logloss": 0.55}}
    assert not check_gates(gates, challenger, champion)[0]  # point values: 0.02 worse on both
    noisy = {"test_id.auc": (-0.05, 0.01), "test_id.logloss": (-0.01, 0.05)}  # the day cannot tell them apart
    passed, rows = check_gates(gates, challenger, champion, noisy)
    assert passed and [r["interval"] for r in rows] == [[-0.05, 0.01], [-0.01, 0.05]]
    worse = {"test_id.auc": (-0.04, -0.011), "test_id.logloss": (0.011, 0.04)}  # worse beyond the tolerance
    passed, rows = check_gates(gates, challenger, champion, worse)
    assert not passed and all("paired bootstrap" in r["reason"] for r in rows)
    edge = {"test_id.auc": (-0.04, -0.01), "test_id.logloss": (0.01, 0.04)}  # reaches the tolerance: passes
    assert check_gates(gates, challenger, champion, edge)[0]
    nan = {"test_id.auc": (float("nan"), float("nan"))}  # no evidence either way is not a pass
    assert not check_gates(gates, challenger, champion, nan)[0]
    assert "| test_id.auc | 0.6800 | 0.7000 | [-0.0400, -0.0110] | 0.5000 | 0.01 | failed |" in gate_table(
        check_gates(gates, challenger, champion, worse)[1]
    )
    # without a champion an interval means nothing: floors only
    assert check_gates(gates, challenger, None, worse)[0]


def fake_run(root: Path, run_id: str, auc: float) -> Path:
    """A finished run directory as the pipeline leaves it, with one small real export."""
    run_dir = root / run_id
    model = run_dir / "models" / "student"
    model.mkdir(parents=True)
    (model / "model.json").write_text("{}")
    (model / "weights.pt").write_bytes(b"\0" * 16)
    curve = [{"epoch": 0, "valid_auc": auc - 0.02}, {"epoch": 1, "valid_auc": auc}]
    (model / "training.json").write_text(json.dumps({"curve": curve}))
    report = {"run": {"config": {"seed": 0, "train": {"epochs": 2}}}, "models": {"student": {"test_id": {"auc": auc}}}}
    (run_dir / "report.json").write_text(json.dumps(report))
    (run_dir / "report.md").write_text("# report\n")
    return run_dir


def test_registry_records_promotes_and_rolls_back(tmp_path: Path) -> None:
    registry = Registry(RegistryConfig(), tmp_path)
    assert registry.uri == f"sqlite:///{tmp_path.resolve()}/registry/mlflow.db"
    assert registry.alias(CHAMPION) is None and registry.table() == []
    versions = []
    for i, auc in enumerate((0.7, 0.72, 0.71)):
        run_dir = fake_run(tmp_path, f"r{i}", auc)
        mlflow_id = registry.log_run(run_dir, {"k": str(i)})
        assert registry.log_run(run_dir) == mlflow_id  # recorded once
        version = registry.register(mlflow_id, {"nightly_date": f"d{i}"})
        assert registry.register(mlflow_id, {}) == version
        versions.append(version)
        with registry.lock():
            registry.promote(version, "test")
    assert versions == ["1", "2", "3"] and registry.alias(CHAMPION) == "3"
    history = registry.client.get_metric_history(registry.version("1").run_id, "student.valid_auc")
    assert [(m.step, m.value) for m in history] == [(0, pytest.approx(0.68)), (1, pytest.approx(0.7))]
    local = registry.download("2")
    assert (local / "student" / "weights.pt").read_bytes() == b"\0" * 16
    assert registry.rollback() == ("3", "2") and registry.alias(CHAMPION) == "2"
    assert registry.rollback() == ("2", "1")
    with pytest.raises(ConfigError, match="nothing to roll back"):
        registry.rollback()
    assert [row["aliases"] for row in registry.table()] == ["champion", "", ""]
    with pytest.raises(ConfigError, match="no version 9"):
        registry.version("9")


@pytest.fixture(scope="module")
def days(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reg-days") / "store"
    synthesize_days(root, 4, 400, users=40, items=30, new_users_per_day=3, new_items_per_day=2, policy_change_day=2)
    return root


def test_day_store_drift_and_window(days: Path, tmp_path: Path) -> None:
    manifest = Manifest.read(days)
    rows = day_rows(manifest)
    assert list(rows) == ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"]
    assert rows["2026-01-01"] == {"train": 320, "valid": 40, "test_ood": 40}
    users = [pq.read_table(days / "train" / f"ds={d}", columns=["user_id"]).column(0).to_numpy().max() for d in rows]
    assert max(users) >= 40 and min(users) < 40  # new users arrive, with new indices
    assert manifest.table_rows["user_id"] == 2 * manifest.cardinality["user_id"]  # headroom
    view = window_view(days, manifest, ["2026-01-02", "2026-01-03"], "2026-01-04", tmp_path / "view")
    assert view.rows == {"train": 640, "valid": 80, "test_id": 360, "test_ood": 40}
    assert Manifest.read(tmp_path / "view").splits["test_id"] == ["ds=2026-01-04"]


def test_data_checks_fail_closed(days: Path) -> None:
    manifest = Manifest.read(days)
    config = replace(Config(), nightly=replace(Config().nightly, window_days=2))
    assert check_day(days, manifest, "2026-01-04", config) == ["2026-01-02", "2026-01-03"]
    with pytest.raises(DataError, match="no complete partition for 2026-01-05"):
        check_day(days, manifest, "2026-01-05", config)
    with pytest.raises(DataError, match="lacks the days"):
        check_day(days, manifest, "2026-01-02", config)
    listed = json.loads(json.dumps(manifest.to_json()))
    listed["source"]["days"]["2026-01-04"]["valid"] = 41
    with pytest.raises(DataError, match="incomplete partition: 40 rows, the manifest lists 41"):
        check_day(days, Manifest(**listed), "2026-01-04", config)
    band = replace(config.nightly, min_rows_ratio=1.5, max_rows_ratio=3.0)
    with pytest.raises(DataError, match="logged rows, outside"):
        check_day(days, manifest, "2026-01-04", replace(config, nightly=band))
    rate = replace(config.nightly, min_label_rate=0.9, max_label_rate=1.0)
    with pytest.raises(DataError, match="column 'label': label rate"):
        check_day(days, manifest, "2026-01-04", replace(config, nightly=rate))
