"""`distrec run` end to end on a tiny config (real Ray, TorchRec, Parquet), and its failure modes."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from distrec.cli import main
from distrec.data.schema import Manifest

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "train.epochs=1",
    "train.batch_size=512",
    "distill.bank_size=16",
    "teachers=[{name: fm, arch: deepfm, dim: 8, hidden: [16]}, {name: cross, arch: dcn, dim: 8, hidden: [16]}]",
    "student.dim=8",
    "student.hidden=[16]",
]


class FinishedRun(NamedTuple):
    dir: Path
    console: str  # its stdout and stderr together


@pytest.fixture(scope="module")
def finished_run(tiny_dataset: tuple[Path, Manifest], tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """One real ``distrec run`` as a user starts it: a subprocess with its own embedded Ray, whose output
    is a pipe, not a terminal (so the console prints plain lines)."""
    root, _ = tiny_dataset
    runs = tmp_path_factory.mktemp("runs")
    # about 5 steps: the default penalty on the score holds the student at chance here (test_id AUC 0.48
    # at beta 1, 0.49 at beta 0.1, measured); this contract is about the report, so it keeps a light
    # penalty on the penultimate layer
    crl = ["crl.beta=0.1", "crl.representation=penultimate"]
    overrides = [f"data.path={root}", f"runs_dir={runs}", "run_id=tiny", *TINY, *crl, "ray.num_cpus=8"]
    done = subprocess.run(
        [sys.executable, "-m", "distrec.cli", "run", "jobs/local.yaml", *overrides],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-3000:]
    return FinishedRun(runs / "tiny", console)


def test_report_contract(finished_run: FinishedRun, tiny_dataset: tuple[Path, Manifest]) -> None:
    _, manifest = tiny_dataset
    report = json.loads((finished_run.dir / "report.json").read_text())
    assert set(report["run"]) >= {"config", "dataset", "rows", "seconds", "stages"}
    stages = [s["stage"] for s in report["run"]["stages"]]
    assert stages[:2] == ["data and checks", "starting Ray"] and stages[-2:] == ["evaluation", "report"], stages
    assert sum(s["seconds"] for s in report["run"]["stages"]) <= report["run"]["seconds"] + 1
    assert report["run"]["rows"]["train"] == manifest.rows["train"]
    activity = report["run"]["activity"]  # the activity groups' edges, for report.md's dataset table
    assert list(activity) == ["q1", "q2", "q3", "q4", "q5"]
    assert sum(g["train_rows"] for g in activity.values()) == manifest.rows["train"]
    assert all(a["max_rows"] <= b["min_rows"] for a, b in itertools.pairwise(activity.values()))
    assert report["run"]["dataset"]["users"] == sum(g["users"] for g in activity.values())
    assert set(report["models"]) == {"fm", "cross", "base", "student"}
    for name, model in report["models"].items():
        for split in ("test_id", "test_ood"):
            for metric in ("auc", "gauc", "logloss"):
                assert isinstance(model[split][metric], float), (name, split, metric)
            assert 0.3 < model[split]["auc"] < 1.0
        assert set(model["groups"]) == {"q1", "q2", "q3", "q4", "q5"}
        assert all(0.0 <= g["auc"] <= 1.0 for g in model["groups"].values() if g["auc"] is not None)
    for name, training in report["run"]["training"].items():
        assert training["rows"] == manifest.rows["train"], name
    assert report["models"]["student"]["test_id"]["auc"] > 0.5  # one epoch on 5.6k rows: above chance
    intervals = report["intervals"]["student_vs_base"]  # the headline's paired bootstrap intervals
    assert {"test_id", "test_ood", "q1 (test_id)"} <= set(intervals)
    assert all(lo < hi for lo, hi in intervals.values()), intervals


def test_crl_confounder_offsets_are_reported_per_epoch(
    finished_run: FinishedRun, tiny_dataset: tuple[Path, Manifest]
) -> None:
    _, manifest = tiny_dataset
    training = json.loads((finished_run.dir / "report.json").read_text())["run"]["training"]
    offsets = training["student"]["curve"][-1]["confounder_offsets"]
    assert {column: len(values) for column, values in offsets.items()} == manifest.confounders
    assert all(abs(sum(values)) < 1e-3 for values in offsets.values()), offsets  # centred
    assert all(any(v != 0 for v in values) for values in offsets.values()), offsets  # trained: not the zero init
    assert "confounder_offsets" not in training["base"]["curve"][-1]  # no CRL, no offsets
    assert "Confounder offsets" in (finished_run.dir / "report.md").read_text()


def test_run_directory_is_complete(finished_run: FinishedRun) -> None:
    run_dir = finished_run.dir
    assert not run_dir.with_name("tiny.partial").exists()
    for name in ("config.yaml", "report.md", "history_bank.parquet", "id_vs_ood.png", "groups_test_id.png"):
        assert (run_dir / name).stat().st_size > 0, name
    for model in ("fm", "cross", "base", "student"):
        assert (run_dir / "models" / model / "weights.pt").is_file()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["train"]["epochs"] == 1 and [t["name"] for t in config["teachers"]] == ["fm", "cross"]
    assert "student" in (run_dir / "report.md").read_text()


def test_console_fits_on_a_screen_and_logs_go_to_the_run(finished_run: FinishedRun) -> None:
    console, run_dir = finished_run.console, finished_run.dir
    lines = console.splitlines()
    assert lines[-1] == str(run_dir)
    assert len(lines) <= 40, console
    for stage in ("teachers and base", "scoring soft labels", "students", "evaluation"):
        assert any(stage in line for line in lines), console
    assert any(line.split()[:1] == ["test_id"] for line in lines), console  # the summary table
    for noise in ("PlacementGroupCleaner", "sharding_plan", "TBE", "Started a local Ray instance", "(raylet)"):
        assert noise not in console, noise
    logs = run_dir / "logs"
    assert "Started a local Ray instance" in (logs / "driver.log").read_text()
    worker_logs = list((logs / "ray").glob("worker-*"))
    assert worker_logs
    assert not [p.name for p in worker_logs if "Failed to query Ray Train Controller" in p.read_text(errors="replace")]


def test_bad_config_key_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "jobs/local.yaml", "train.epoch=2", f"runs_dir={tmp_path}"]) == 3
    assert "train.epoch" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_missing_dataset_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "jobs/local.yaml", f"data.path={tmp_path / 'nope'}", f"runs_dir={tmp_path}"]) == 2
    assert "no manifest" in capsys.readouterr().err


def test_duplicate_teacher_names_exit_3(tmp_path: Path) -> None:
    teachers = "teachers=[{name: a, arch: dcn}, {name: a, arch: deepfm}]"
    assert main(["run", "jobs/local.yaml", teachers, f"runs_dir={tmp_path}"]) == 3


def test_ablation_variants_with_identical_settings_give_identical_metrics(
    ray_local: None, tiny_dataset: tuple[Path, Manifest], tmp_path: Path
) -> None:
    """Every variant reads the same rows in the same order through the same reader as ``base``: with
    the KD weight and beta at 0 all five are the same model, so every metric must agree exactly."""
    root, manifest = tiny_dataset
    args = ["run", "jobs/local.yaml", f"data.path={root}", f"runs_dir={tmp_path}", "run_id=abl", "ablation=true"]
    assert main([*args, *TINY, "distill.weight=0", "crl.beta=0"]) == 0
    report = json.loads((tmp_path / "abl" / "report.json").read_text())
    variants = {"base", "kd", "causald", "crl", "causald+crl", "student"}
    assert set(report["models"]) == {"fm", "cross"} | variants
    assert set(report["heterogeneity"]) >= variants
    for name in ("kd", "causald", "crl", "student"):
        assert report["run"]["training"][name]["rows"] == manifest.rows["train"], name
        assert report["models"][name] == report["models"]["base"], name
    assert all(interval == [0.0, 0.0] for interval in report["intervals"]["student_vs_base"].values())
    # the front-door and the plain soft labels were scored once, for every training row, in row order
    soft = sorted((tmp_path / "abl" / "soft_labels").glob("*.parquet"))
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in soft) == manifest.rows["train"]
    scored = pa.concat_tables(pq.read_table(f, columns=["user_id", "item_id", "label"]) for f in soft)
    logged = pa.concat_tables(
        pq.read_table(f, columns=["user_id", "item_id", "label"]) for f in manifest.files(root, "train")
    )
    assert scored.equals(logged)
