"""The console of ``distrec run``: a live display fed by the ProgressBoard actor, a short summary, and
the libraries' output in RUN_DIR/logs, checked on one tiny real run."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import ray

from distrec.console import Console, ProgressBoard, summary_table
from distrec.data.schema import Manifest

REPO = Path(__file__).resolve().parents[1]


def report(step: int, rows: int, **extra: object) -> dict[str, object]:
    base = {"epoch": 1, "epochs": 4, "step": step, "steps": 60, "rows": rows, "loss": 0.5, "auc": 0.7}
    return {**base, "best_epoch": 0, "elapsed": 10.0, "status": "train", **extra}


def test_display_redraws_on_a_terminal_and_prints_plain_lines_elsewhere(ray_local: None) -> None:
    board = ray.remote(num_cpus=0)(ProgressBoard).remote()
    outputs = {}
    for tty in (True, False):
        out = io.StringIO()
        console = Console(out, tty=tty)
        console.attach(board)
        console.stage("teachers and base", ["fm", "base"])
        ray.get(board.update.remote("fm", report(30, 30_000)))
        console._draw()
        ray.get(board.update.remote("fm", report(45, 45_000)))
        console._draw()
        ray.get(board.update.remote("fm", report(60, 240_000, epoch=3, status="done")))
        console.stage("students", ["student"])
        outputs[tty] = out.getvalue()
    live, plain = outputs[True], outputs[False]
    assert "\x1b[3F\x1b[J" in live  # the 3-line block is redrawn in place
    assert "epoch 2/4" in live and "45/60 batches" in live and "loss 0.5000" in live and "ETA" in live
    assert "fm   done: best epoch 1/4, valid auc 0.7000" in live and "base starting" in live
    assert "\x1b" not in plain
    lines = plain.splitlines()
    assert len(lines) == 3 and all(line.startswith("[") for line in lines), plain  # one line per draw
    first = lines[0]
    assert "teachers and base" in first and "fm epoch 2/4 38% 30/60 batches" in first and "| base starting" in first


def test_summary_compares_student_and_base() -> None:
    def metrics(auc: float) -> dict[str, object]:
        return {"test_id": {"auc": auc, "groups": {"q1": {"auc": auc - 0.1}}}, "test_ood": {"auc": auc - 0.05}}

    table = summary_table({"student": metrics(0.80), "base": metrics(0.78)})
    assert table[0].split() == ["AUC", "student", "base", "change"]
    assert table[1].split() == ["test_id", "0.8000", "0.7800", "+0.0200"]
    assert table[2].split() == ["test_ood", "0.7500", "0.7300", "+0.0200"]
    assert table[3].split() == ["q1", "(test_id)", "0.7000", "0.6800", "+0.0200"]
    assert len(table) == 4  # test_do and q1 of test_ood are left out where the models lack them


def test_tiny_run_console_fits_on_a_screen_and_logs_go_to_the_run(
    tiny_dataset: tuple[Path, Manifest], tmp_path: Path
) -> None:
    """One real ``distrec run`` as a user starts it (a subprocess: its stdout is a pipe, not a terminal)."""
    root, _ = tiny_dataset
    teachers = "teachers=[{name: fm, arch: deepfm, dim: 8, hidden: [16]}]"
    args = [f"data.path={root}", f"runs_dir={tmp_path}", "run_id=tiny", "train.epochs=2", "train.batch_size=512"]
    args += ["distill.bank_size=16", teachers, "student.dim=8", "student.hidden=[16]", "ray.num_cpus=8"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "distrec.cli", "run", "jobs/local.yaml", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-3000:]
    run_dir = tmp_path / "tiny"
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


def test_library_output_goes_to_the_driver_log(tmp_path: Path) -> None:
    """Whatever writes to fds 1 and 2 (C++ included) lands in driver.log; the display does not."""
    out = io.StringIO()
    console = Console(out, tty=False)
    with console.session(tmp_path / "logs"):
        os.write(2, b"fbgemm chatter\n")
        os.write(1, b"stdout chatter\n")
        console.stage("evaluation", [])
    assert (tmp_path / "logs" / "driver.log").read_text() == "fbgemm chatter\nstdout chatter\n"
    assert "evaluation" in out.getvalue() and "chatter" not in out.getvalue()
    verbose = Console(io.StringIO(), verbose=True, tty=False)
    with verbose.session(tmp_path / "v"):
        pass
    assert not (tmp_path / "v" / "driver.log").exists()
