"""Smoke test of scripts/gpu_check.sh: on this CPU machine it runs its tiny sizes and must still
print exactly one JSON object with every part, with and without torchrec importable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def _run(extra_env: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, dict[str, Any], str]:
    # Without conftest's PYTHONPATH (the tests folder): the script must need nothing from the
    # repository, as on a bare GPU image.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"PYTHON": sys.executable, "GPU_CHECK_QUICK": "1", **(extra_env or {})})
    proc = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO.parent
    )
    try:
        report = json.loads(proc.stdout)  # the whole stdout is the one object
    except json.JSONDecodeError as exc:
        message = f"stdout is not one JSON object: {exc}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        raise AssertionError(message) from exc
    return proc.returncode, report, proc.stderr


def _check_rate(part: dict[str, Any], unit: str) -> None:
    assert "error" not in part, part
    assert part["repeats"] == 5 and part["warmup_iters"] >= 1
    rate = part[f"{unit}_per_s"]
    assert 0 < rate["min"] <= rate["median"] <= rate["max"]
    seconds = part["repeat_s"]
    assert 0 < seconds["min"] <= seconds["median"] <= seconds["max"]


@pytest.fixture(scope="module")
def quick_report() -> dict[str, Any]:
    pytest.importorskip("torch")
    code, report, stderr = _run()
    assert code == 0, stderr[-3000:]
    return report


def test_stack_keys(quick_report: dict[str, Any]) -> None:
    for key in ("nvidia_smi", "torch", "cuda", "device", "quick", "imports", "bench"):
        assert key in quick_report, key
    assert quick_report["quick"] is True
    assert isinstance(quick_report["cuda"], bool)
    assert quick_report["torch"]["version"]
    assert set(quick_report["imports"]) == {"torchrec", "fbgemm_gpu"}
    if not quick_report["cuda"]:
        assert quick_report["device"] == "cpu"


def test_pytorch_parts(quick_report: dict[str, Any]) -> None:
    bench = quick_report["bench"]
    assert set(bench) == {"frontdoor_scoring", "student_dense", "embedding_bag", "torchrec"}
    front = bench["frontdoor_scoring"]
    assert front["head"] == [48, 64, 32, 1] and front["dim"] == 16
    _check_rate(front, "rows")
    dense = bench["student_dense"]
    _check_rate(dense, "steps")
    assert dense["samples_per_s"]["median"] == pytest.approx(dense["steps_per_s"]["median"] * dense["batch"], rel=1e-3)
    bags = bench["embedding_bag"]
    assert bags["tables"] == 4
    _check_rate(bags["sparse_adam"], "samples")
    # Sparse Adagrad may be unsupported on a device: then it reports the error instead.
    adagrad = bags["sparse_adagrad"]
    if "error" not in adagrad:
        _check_rate(adagrad, "samples")


def test_torchrec_part(quick_report: dict[str, Any]) -> None:
    torchrec = quick_report["bench"]["torchrec"]
    if quick_report["imports"]["torchrec"]["ok"] and quick_report["imports"]["fbgemm_gpu"]["ok"]:
        _check_rate(torchrec["fbgemm_tbe_rowwise_adagrad"], "samples")
    else:
        assert "skipped" in torchrec


def test_without_torchrec(tmp_path: Path) -> None:
    """Like the lent GPU image: torch, but no torchrec and no fbgemm_gpu."""
    pytest.importorskip("torch")
    for name in ("torchrec", "fbgemm_gpu"):
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('{name} hidden by the test')\n")
    code, report, stderr = _run({"PYTHONPATH": str(tmp_path)})
    assert code == 0, stderr[-3000:]
    assert report["imports"]["torchrec"]["ok"] is False
    assert report["bench"]["torchrec"] == {"skipped": "torchrec not installed"}
    assert "error" not in report["bench"]["frontdoor_scoring"]


def test_missing_interpreter() -> None:
    code, report, _ = _run({"PYTHON": "/nonexistent/python3"}, timeout=30)
    assert code == 2 and "error" in report
