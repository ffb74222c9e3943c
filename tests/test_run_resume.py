"""The pipeline's stages: a driver killed during the student stage, then ``distrec run --resume``
finishes the run without retraining the teachers; and ``distrec tune`` on a real Ray Tune search."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_pipeline import TINY

from distrec.cli import main
from distrec.data.schema import Manifest

TEACHERS = ("fm", "cross", "base")


@pytest.mark.slow  # make test keeps tests/test_cluster.py's student-worker kill as its fault test
def test_driver_killed_in_the_student_stage_resumes_without_retraining_teachers(
    tiny_dataset: tuple[Path, Manifest], tmp_path: Path
) -> None:
    root, manifest = tiny_dataset
    runs = tmp_path / "runs"
    args = ["run", "jobs/local.yaml", f"data.path={root}", f"runs_dir={runs}", "run_id=r", *TINY]
    partial = runs / "r.partial"
    # the driver in its own session, so the kill takes its embedded Ray with it, as a lost head would
    driver = subprocess.Popen(
        [sys.executable, "-m", "distrec.cli", *args],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    try:
        deadline = time.time() + 300
        done = [partial / "models" / n / "training.json" for n in TEACHERS]
        while time.time() < deadline and not all(p.is_file() for p in done):
            assert driver.poll() is None, "the driver ended before the student stage"
            time.sleep(0.2)
        assert all(p.is_file() for p in done)
        assert not (partial / "models" / "student" / "training.json").exists()
        os.killpg(driver.pid, signal.SIGKILL)
    finally:
        driver.wait(timeout=60)
    finished = {n: (partial / "models" / n / "training.json").stat().st_mtime_ns for n in TEACHERS}

    assert main(["run", "--resume", str(partial)]) == 0
    run_dir = runs / "r"
    assert not partial.exists() and (run_dir / "report.json").is_file()
    for name, mtime in finished.items():  # the teachers' exports were kept, not trained again
        assert (run_dir / "models" / name / "training.json").stat().st_mtime_ns == mtime, name
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["models"]) == {"fm", "cross", "base", "student"}
    assert report["run"]["training"]["student"]["rows"] == manifest.rows["train"]  # every row once, one epoch


def test_resume_refuses_another_configuration(tiny_dataset: tuple[Path, Manifest], tmp_path: Path) -> None:
    partial = tmp_path / "x.partial"
    partial.mkdir()
    (partial / "config.yaml").write_text("seed: 0\n")
    assert main(["run", "--resume", str(partial)]) == 3
    assert main(["run", "--resume", str(tmp_path / "nothing")]) == 3


def test_tune_searches_on_valid_and_writes_the_best_config(tiny_dataset: tuple[Path, Manifest], tmp_path: Path) -> None:
    """As a user starts it (its own process and embedded Ray, output to a pipe): the search, and a console
    that shows the stages and the ranked trials while the libraries' output goes to RUN_DIR/logs."""
    root, _ = tiny_dataset
    space = "tune.space={train.sparse_lr: [0.01, 0.3]}"
    # a relative data path (as data.cache_dir is by default): Ray Tune runs each trial in a directory of its own
    relative = os.path.relpath(root)
    args = ["tune", "jobs/local.yaml", f"data.path={relative}", f"runs_dir={tmp_path}", "run_id=t", *TINY, space]
    done = subprocess.run(
        [sys.executable, "-m", "distrec.cli", *args, "ray.num_cpus=8"],
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
        capture_output=True,
        text=True,
        timeout=600,
    )
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-3000:]
    lines = console.splitlines()
    assert lines[-1] == str(tmp_path / "t") and len(lines) <= 25, console
    assert any("2/2 trials done, best valid AUC" in line for line in lines), console
    for noise in ("Trial status", "Reporting training result", "TrainController", "(raylet)"):
        assert noise not in console, noise
    assert "Trial status" in (tmp_path / "t" / "logs" / "driver.log").read_text()
    result = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert result["target"] == "base" and result["metric"] == "valid_auc"
    trials = result["trials"]
    assert sorted(t["params"]["train.sparse_lr"] for t in trials) == [0.01, 0.3]
    assert trials[0]["valid_auc"] > trials[1]["valid_auc"]  # ranked by valid AUC; the setting reached the trial
    best = (tmp_path / "t" / "best.yaml").read_text()
    assert f"sparse_lr: {trials[0]['params']['train.sparse_lr']}" in best


def test_tune_rejects_a_malformed_space(tmp_path: Path) -> None:
    args = ["tune", "jobs/local.yaml", f"runs_dir={tmp_path}", "tune.space={train.sparse_lr: {normal: [0, 1]}}"]
    assert main(args) == 3
    assert (
        main(["tune", "jobs/local.yaml", f"runs_dir={tmp_path}", "tune.target=nobody", "tune.space={seed: [1]}"]) == 3
    )


@pytest.mark.slow  # teachers, then two trials that each score their own soft labels (about 2 minutes)
def test_a_student_tune_over_the_bank_scores_each_trials_soft_labels(
    ray_local: None, tiny_dataset: tuple[Path, Manifest], tmp_path: Path
) -> None:
    """The bank size changes the soft labels themselves, so each trial scores its own from the teachers
    trained once: a shared scoring would give every trial the first bank's labels."""
    import pyarrow.parquet as pq

    root, manifest = tiny_dataset
    space = "tune.space={distill.bank_size: [2, 8]}"
    # a relative runs_dir (as the default is): each trial scores from the teachers under it, in its own directory
    runs = os.path.relpath(tmp_path)
    args = ["tune", "jobs/local.yaml", f"data.path={root}", f"runs_dir={runs}", "run_id=t", *TINY, space]
    args += ["tune.target=student", "distill.bank_groups=1"]  # every row scored against the whole bank
    assert main(args) == 0
    run = tmp_path / "t"
    assert not (run / "soft_labels").exists()  # nothing scored before the trials
    banks = {}
    for trial in (run / "trials").iterdir():
        banks[pq.read_metadata(trial / "history_bank.parquet").num_rows] = pq.read_table(trial / "soft_labels")
    assert sorted(banks) == [2, 8]
    small, large = banks[2], banks[8]
    assert small.num_rows == large.num_rows == manifest.rows["train"]
    fd = [c for c in small.column_names if c.startswith("fd__")]
    assert fd and not any(small[c].equals(large[c]) for c in fd)  # the front-door labels follow the bank
    trials = json.loads((run / "tune.json").read_text())["trials"]
    assert sorted(t["params"]["distill.bank_size"] for t in trials) == [2, 8]


def test_a_search_over_k_chooses_subsets_of_the_runs_teachers(tmp_path: Path) -> None:
    from distrec.config import load_config
    from distrec.orchestrate.pipeline import student_variants
    from distrec.orchestrate.tune import check_target, with_overrides

    deepfm = "{name: deepfm, arch: deepfm, dim: 16, hidden: [64, 32]}"
    dcn = "{name: dcn, arch: dcn, dim: 16, hidden: [64, 32]}"
    config = load_config(
        "jobs/local.yaml", ["tune.target=student", f"tune.space={{teachers: [[{deepfm}], [{deepfm}, {dcn}]]}}"]
    )
    check_target(config)
    one = with_overrides(config, {"teachers": config.tune.space["teachers"][0]})
    _, extra = student_variants(one, [t.name for t in one.teachers])[-1]
    assert extra["soft_label_columns"] == ["fd__deepfm"]  # the K=1 trial distils deepfm's column alone

    args = ["tune", "jobs/local.yaml", f"runs_dir={tmp_path}", "tune.target=student"]
    other = "{name: deepfm, arch: deepfm, dim: 32, hidden: [64, 32]}"  # not the run's deepfm
    assert main([*args, f"tune.space={{teachers: [[{other}]]}}"]) == 3
    assert main([*args, "tune.space={teachers: [[]]}"]) == 3
    assert main([*args[:-1], "tune.target=base", f"tune.space={{teachers: [[{deepfm}]]}}"]) == 3
