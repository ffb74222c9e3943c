"""What ``distrec run`` and ``distrec tune`` show while they work: one live progress display, then a
short summary.

Progress reaches the driver through :class:`ProgressBoard`, a tiny Ray actor: rank 0 of every model
sends it its position about once a second (fire-and-forget, off the training step's critical path)
and the driver polls it. On a terminal the display is redrawn in place; otherwise (CI, a Ray job's
log) one plain line is printed every ``interval_s`` seconds.

Everything else the run prints goes to ``RUN_DIR/logs/``: the driver's own stdout and stderr
(Python logging, warnings, and what fbgemm and TorchRec print from C++) are redirected at the file
descriptor level into ``driver.log``, and the Ray workers' logs are copied from Ray's session
directory when the session ends (``ray.init(log_to_driver=False)``). ``-v`` shows all of it instead.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from distrec.eval.report import headline

# What a model's rank 0 reports (distrec.train.loop.Worker.report_progress).
Report = dict[str, Any]
RAY_LOG_SUFFIXES = (".out", ".err", ".log")


class ProgressBoard:
    """The latest progress report of every model; a Ray actor (``ray.remote(num_cpus=0)``) in a run."""

    def __init__(self) -> None:
        self.reports: dict[str, Report] = {}

    def update(self, name: str, report: Report) -> None:
        self.reports[name] = {**report, "time": time.time()}

    def snapshot(self) -> dict[str, Report]:
        return self.reports


def _seconds(s: float) -> str:
    return tqdm.format_interval(max(0, int(s)))


def _rate(rows_per_s: float) -> str:
    return (tqdm.format_sizeof(rows_per_s, divisor=1000) if rows_per_s > 0 else "?") + " rows/s"


class Console:
    """The live display of one run: ``with console.session(run_dir): console.stage(...)``.

    ``tty`` (default: whether the output stream is a terminal) chooses redrawing over plain lines;
    ``verbose`` leaves the library output on the terminal instead of in ``RUN_DIR/logs``.
    """

    def __init__(
        self, out: TextIO | None = None, verbose: bool = False, tty: bool | None = None, interval_s: float = 30.0
    ) -> None:
        self.out = out or sys.stdout
        self.verbose = verbose
        self.tty = self.out.isatty() if tty is None else tty
        self.interval_s = interval_s
        self.board: Any = None  # the ProgressBoard actor, once Ray runs
        self.started = time.monotonic()
        self._stage = ""
        self._models: list[str] = []  # the models the current stage trains
        self._stage_started = self.started
        self._extra = ""  # progress of a stage the driver itself drives (scoring)
        self._drawn = 0  # lines of the last redraw
        self._rates: dict[str, tuple[float, int, float]] = {}  # model -> (time, rows, rows/s)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream: TextIO = self.out

    # ------------------------------------------------------------------ lifecycle

    @contextmanager
    def session(self, log_dir: Path) -> Iterator[None]:
        """Library output into ``log_dir/driver.log`` (unless verbose), the display redrawn meanwhile."""
        log_dir.mkdir(parents=True, exist_ok=True)
        with self._redirected(log_dir / "driver.log"):
            self._thread = threading.Thread(target=self._loop, name="distrec-console", daemon=True)
            self._thread.start()
            try:
                yield
            finally:
                self._stop.set()
                self._thread.join()
                self._draw(final=True)

    @contextmanager
    def _redirected(self, log: Path) -> Iterator[None]:
        """fds 1 and 2 into ``log``; the console writes to a duplicate of the original stdout."""
        if self.verbose:
            yield
            return
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        saved = {fd: os.dup(fd) for fd in (1, 2)}
        if self.out is sys.stdout:  # the display keeps the terminal: a copy of the original fd 1
            self._stream = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding=sys.stdout.encoding)
        with open(log, "ab", buffering=0) as target:
            for fd in (1, 2):
                os.dup2(target.fileno(), fd)
            try:
                yield
            finally:
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
                for fd, copy in saved.items():
                    os.dup2(copy, fd)
                    os.close(copy)
                if self._stream is not self.out:
                    self._stream.close()
                self._stream = self.out

    def attach(self, board: Any) -> None:
        """Start polling a ProgressBoard actor (Ray is up)."""
        self.board = board

    # ------------------------------------------------------------------ what the pipeline tells it

    def stage(self, name: str, models: list[str]) -> None:
        """A new stage begins; the previous one's last state stays on screen."""
        self._draw(final=True)
        with self._lock:
            self._stage, self._models, self._stage_started, self._extra = name, models, time.monotonic(), ""

    def advance(self, text: str) -> None:
        """Progress of work the driver does itself (e.g. rows of soft labels scored)."""
        self._extra = text

    def summary(self, run_dir: Path) -> None:
        """The headline of a finished run: student against base on test_id, test_ood and q1."""
        self._finish(run_dir, summary_table(json.loads((run_dir / "report.json").read_text())))

    def tune_summary(self, tune_dir: Path) -> None:
        """A finished search's trials, best first (``distrec tune``)."""
        self._finish(tune_dir, trials_table(json.loads((tune_dir / "tune.json").read_text())))

    def _finish(self, out_dir: Path, lines: list[str]) -> None:
        took = _seconds(time.monotonic() - self.started)
        self._write([f"done in {took}; logs in {out_dir / 'logs'}", *lines])

    # ------------------------------------------------------------------ drawing

    def _loop(self) -> None:
        period = 0.5 if self.tty else self.interval_s
        while not self._stop.wait(period):
            self._draw()

    def _reports(self) -> dict[str, Report]:
        import ray

        if self.board is None or not ray.is_initialized():
            return {}
        try:
            return ray.get(self.board.snapshot.remote(), timeout=5)
        except Exception:  # the board went away with the Ray session: nothing more to show
            return {}

    def _model_line(self, name: str, r: Report, width: int) -> str:
        now = r["time"]
        last = self._rates.get(name)
        # the rate since the last draw; before there is one (the first of the plain lines printed every 30 s
        # off a terminal), the mean rate since the model started training
        rate = last[2] if last else (r["rows"] / r["elapsed"] if r["elapsed"] > 0 else 0.0)
        if last and now > last[0] and r["rows"] >= last[1]:
            rate = (r["rows"] - last[1]) / (now - last[0])
        self._rates[name] = (now, r["rows"], rate)
        done = r["epoch"] * r["steps"] + r["step"]
        total = max(r["epochs"] * r["steps"], done, 1)
        auc = f", valid auc {r['auc']:.4f}" if r.get("auc") is not None else ""
        if r.get("status") == "done":
            return f"  {name:<{width}} done: best epoch {r['best_epoch'] + 1}/{r['epochs']}{auc}"
        if self.tty:
            bar = "{percentage:3.0f}%|{bar}|"
            meter = tqdm.format_meter(done, total, r["elapsed"], ncols=32, bar_format=bar)
        else:
            meter = f"{100 * done / total:.0f}%"
        eta = _seconds((total - done) / (done / r["elapsed"])) if done and r["elapsed"] > 0 else "?"
        epoch = f"epoch {min(r['epoch'] + 1, r['epochs'])}/{r['epochs']}"
        batches = f"{r['step']}/{r['steps']} batches"
        return f"  {name:<{width}} {epoch} {meter} {batches}, {_rate(rate)}, loss {r['loss']:.4f}{auc}, ETA {eta}"

    def _lines(self) -> list[str]:
        reports = self._reports()
        elapsed = _seconds(time.monotonic() - self._stage_started)
        lines = [f"{self._stage} [{elapsed}]" + (f"  {self._extra}" if self._extra else "")]
        width = max((len(n) for n in self._models), default=0) if self.tty else 0
        for name in self._models:
            r = reports.get(name)
            lines.append(self._model_line(name, r, width) if r else f"  {name:<{width}} starting")
        return lines

    def _draw(self, final: bool = False) -> None:
        """Redraw the stage's block (a terminal) or print it as one line; ``final``: the block stays."""
        if not self._stage:
            return
        with self._lock:
            lines = self._lines()
            if self.tty:
                self._write(lines, redraw=not final)
            else:
                self._write([f"[{_seconds(time.monotonic() - self.started)}] " + " | ".join(s.strip() for s in lines)])

    def _write(self, lines: list[str], redraw: bool = False) -> None:
        stream = self._stream
        if self.tty and self._drawn:
            stream.write(f"\x1b[{self._drawn}F\x1b[J")  # back to the block's first line, clear below
        stream.write("".join(line + "\n" for line in lines))
        stream.flush()
        self._drawn = len(lines) if redraw else 0


def summary_table(report: dict[str, Any]) -> list[str]:
    """Student against base: AUC on the report's headline rows (splits and q1), the change and its
    95% interval where the evaluation computed one."""
    out = [f"{'AUC':<14}{'student':>9}{'base':>9}{'change':>9}  95% interval"]
    for row in headline(report):
        line = f"{row.label:<14}{row.model:>9.4f}{row.reference:>9.4f}{row.model - row.reference:>+9.4f}"
        if row.interval is not None:
            line += f"  [{row.interval[0]:+.4f}, {row.interval[1]:+.4f}]"
        out.append(line)
    return out


def trials_table(result: dict[str, Any], most: int = 10) -> list[str]:
    """A search's trials (tune.json), best first: valid AUC, best epoch and settings; the first ``most``."""
    trials = result["trials"]
    out = [f"{'valid AUC':>9}  {'epoch':>5}  settings"]
    for t in trials[:most]:
        out.append(f"{t['valid_auc']:>9.4f}  {t['best_epoch'] + 1:>5}  {json.dumps(t['params'])}")
    if len(trials) > most:
        out.append(f"... {len(trials) - most} more in tune.json")
    return out


def copy_ray_logs(log_dir: Path) -> None:
    """The Ray session's process logs (workers, raylet, GCS) into ``log_dir/ray``; call before shutdown."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # the local node of an embedded session
    if node is None:
        return
    source = Path(node.get_session_dir_path()) / "logs"
    target = log_dir / "ray"
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and path.suffix in RAY_LOG_SUFFIXES and path.stat().st_size:
            shutil.copy2(path, target / path.name)
