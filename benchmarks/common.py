"""Shared pieces: interleaved repeats and medians, machine facts, cached datasets, process-tree memory.

The machine may be shared and noisy, so every benchmark measures its two sides in the same command,
alternating them round by round (A B, B A, A B, ...), and compares medians; ``spread`` gives the
min, median and max of the per-round ratios beside it, and ``loaded`` marks a figure taken while the
1-minute load average was above the core count.
"""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def interleave(sides: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run every side ``repeats`` times, alternating the order each round; returns each side's results."""
    out: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            out[name].append(sides[name]())
    return out


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def ratio(numerator: list[float], denominator: list[float]) -> float:
    """Ratio of the medians, rounded for the report."""
    return round(median(numerator) / median(denominator), 3)


def spread(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """min, median and max of the ratios of the rounds (round i's numerator over round i's denominator)."""
    ratios = [n / d for n, d in zip(numerator, denominator, strict=True)]
    return {"min": round(min(ratios), 3), "median": round(median(ratios), 3), "max": round(max(ratios), 3)}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cores() -> int:
    return len(os.sched_getaffinity(0))


def loaded(*loads: list[float]) -> bool:
    """Whether any of these load averages (or now's) had a 1-minute figure above the core count."""
    return any(load[0] > cores() for load in (*loads, load_average()))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, object]:
    import pyarrow
    import ray
    import torch
    import torchrec

    try:
        from importlib.metadata import version

        fbgemm = version("fbgemm_gpu-cpu")
    except Exception:
        fbgemm = "unknown"
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kb = next((int(line.split()[1]) for line in meminfo if line.startswith("MemTotal")), 0)
    return {
        "nproc": cores(),
        "cpu_model": cpu_model(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchrec": torchrec.__version__,
        "fbgemm_gpu_cpu": fbgemm,
        "ray": ray.__version__,
        "pyarrow": pyarrow.__version__,
    }


def synthetic(out: Path, rows: int, seed: int = 0, rows_per_file: int | None = None) -> Path:
    """The default synthetic dataset (``distrec.data.synth`` defaults) with ``rows`` rows, generated once.

    ``rows_per_file`` (default: synthesize's 1M) also sets the row-group size when it is smaller.
    """
    from distrec.data.schema import MANIFEST
    from distrec.data.synth import synthesize

    layout = {} if rows_per_file is None else {"rows_per_file": rows_per_file, "chunk_rows": rows_per_file}
    root = synthetic_root(out, rows, seed, rows_per_file)
    if not (root / MANIFEST).is_file():
        started = time.perf_counter()
        synthesize(root, rows, seed=seed, overwrite=True, processes=cores(), **layout)
        print(f"[bench] generated {rows} rows at {root} in {time.perf_counter() - started:.0f}s", flush=True)
    return root


def synthetic_root(out: Path, rows: int, seed: int = 0, rows_per_file: int | None = None) -> Path:
    """Where ``synthetic`` keeps that log under ``out``."""
    return out / "data" / (f"synth-{rows}-s{seed}" + (f"-f{rows_per_file}" if rows_per_file is not None else ""))


def measured_child(module: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, object]:
    """``python -m MODULE ARGS`` in a fresh interpreter (``env`` added to this one's), its output in ``log``;
    the last JSON object it printed, its wall seconds, and the peak memory of its whole process tree
    (``TreeMemory``: Ray's processes are its descendants and inherit ``env``)."""
    import json
    import subprocess
    import sys

    started = time.perf_counter()
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        with TreeMemory(proc.pid, interval=0.5) as memory:
            code = proc.wait()
    if code != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed ({code}); see {log}")
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    return {**json.loads(lines[-1]), "wall_seconds": round(time.perf_counter() - started, 1), **memory.as_mib()}


def stream_inputs(root: Path, work: Path, bank_size: int) -> tuple[Path, Path]:
    """A freshly initialised export of ``jobs/local.yaml``'s first teacher and a history bank for
    ``root``, under ``work``: what a soft-label stream needs (its cost does not depend on the weights)."""
    import torch

    from distrec.config import load_config
    from distrec.data.schema import Manifest
    from distrec.models.architectures import model_from_config
    from distrec.orchestrate.stream import write_history_bank
    from distrec.train.export import export_spec, write_export

    manifest = Manifest.read(root)
    spec = load_config(REPO / "jobs" / "local.yaml").teachers[0]
    torch.manual_seed(0)
    model = model_from_config(spec, manifest, torch.device("cpu"))
    write_export(work / "teacher", export_spec(spec), manifest, model.state_dict())
    bank = write_history_bank(manifest, str(root), bank_size, 0, work / "bank.parquet")
    return (work / "teacher").resolve(), bank.resolve()


# ---- memory of a process tree, read from /proc (PSS through psutil) ------------------------------


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (Ray's GCS, raylet and workers are descendants of the driver)."""
    children = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def memory_kib(pid: int) -> dict[str, int | str]:
    """VmRSS, VmHWM (the kernel's own peak RSS), RssAnon, RssShmem, Pss and the command name of one process.

    PSS splits each shared page (libraries, Ray's object store) among the processes mapping it, so
    the PSS of a tree sums to the memory it really holds; summed RSS counts shared pages once per process.
    """
    import psutil

    out: dict[str, int | str] = {}
    try:
        out["Pss"] = psutil.Process(pid).memory_full_info().pss // 1024
    except (psutil.Error, OSError):
        return {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssShmem"):
                out[key] = int(value.split()[0])
            elif key == "Name":
                out["name"] = value.strip()
    except OSError:
        return {}
    return out


@dataclass
class TreeMemory:
    """Samples the summed PSS and RSS of a process tree in a background thread (``with TreeMemory(pid) as m``).

    ``peak_pss_sum`` is the largest sum of PSS over the tree seen in one sample (the headline);
    ``peak_rss_sum`` the same for VmRSS; ``peak_anon_sum``
    the same for anonymous memory only (RSS also counts shared library pages once per process);
    ``peak_single`` is the largest VmHWM of any process (exact: the kernel tracks it); ``per_process``
    keeps each process's peak anonymous and shared-memory (Ray's object store) RSS.
    """

    root: int
    interval: float = 0.2
    peak_pss_sum: int = 0
    peak_rss_sum: int = 0
    peak_anon_sum: int = 0
    peak_single: int = 0
    peak_single_name: str = ""
    processes_seen: int = 0
    per_process: dict[int, dict[str, int | str]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        pss = rss = anon = 0
        for pid in process_tree(self.root):
            m = memory_kib(pid)
            if not m:
                continue
            peaks = self.per_process.setdefault(pid, {"anon": 0, "shmem": 0})
            peaks["name"] = f"{m.get('name', '')}[{pid}]"  # the latest: Ray renames its workers
            peaks["anon"] = max(int(peaks["anon"]), int(m.get("RssAnon", 0)))
            peaks["shmem"] = max(int(peaks["shmem"]), int(m.get("RssShmem", 0)))
            pss += int(m["Pss"])
            rss += int(m.get("VmRSS", 0))
            anon += int(m.get("RssAnon", 0))
            if int(m.get("VmHWM", 0)) > self.peak_single:
                self.peak_single, self.peak_single_name = int(m["VmHWM"]), str(m.get("name", ""))
        self.peak_pss_sum = max(self.peak_pss_sum, pss)
        self.peak_rss_sum = max(self.peak_rss_sum, rss)
        self.peak_anon_sum = max(self.peak_anon_sum, anon)
        self.processes_seen = len(self.per_process)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeMemory:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def as_mib(self) -> dict[str, object]:
        return {
            "peak_pss_sum_mib": round(self.peak_pss_sum / 1024, 1),
            "peak_rss_sum_mib": round(self.peak_rss_sum / 1024, 1),
            "peak_anon_sum_mib": round(self.peak_anon_sum / 1024, 1),
            "peak_single_mib": round(self.peak_single / 1024, 1),
            "peak_single_process": self.peak_single_name,
            "processes": self.processes_seen,
            "top_anon_mib": self.top("anon"),
            "top_shmem_mib": self.top("shmem"),
        }

    def top(self, key: str, n: int = 4) -> list[list[object]]:
        """The ``n`` processes with the largest peak of ``key`` (anon or shmem): [name, MiB]."""
        ranked = sorted(self.per_process.values(), key=lambda p: -int(p[key]))[:n]
        return [[p["name"], round(int(p[key]) / 1024, 1)] for p in ranked]
