"""The console of ``distrec run``: a live display fed by the ProgressBoard actor, a short summary, and
the libraries' output in RUN_DIR/logs. The console of a whole real run is checked on the end-to-end run
of tests/test_pipeline.py (``test_console_fits_on_a_screen_and_logs_go_to_the_run``)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import ray

from distrec.console import Console, ProgressBoard, summary_table

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

    intervals = {"student_vs_base": {"test_id": [0.011, 0.029]}}
    table = summary_table({"models": {"student": metrics(0.80), "base": metrics(0.78)}, "intervals": intervals})
    assert table[0].split() == ["AUC", "student", "base", "change", "95%", "interval"]
    assert table[1].split() == ["test_id", "0.8000", "0.7800", "+0.0200", "[+0.0110,", "+0.0290]"]
    assert table[2].split() == ["test_ood", "0.7500", "0.7300", "+0.0200"]
    assert table[3].split() == ["q1", "(test_id)", "0.7000", "0.6800", "+0.0200"]
    assert len(table) == 4  # test_do and q1 of test_ood are left out where the models lack them


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
