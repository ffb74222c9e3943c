"""`distrec plan`: per-device sharding plans as a dry run, with memory that adds up."""

from __future__ import annotations

from pathlib import Path

import pytest

from distrec.cli import main
from distrec.config import load_config
from distrec.data.schema import Manifest
from distrec.errors import ConfigError
from distrec.train.plan import plan_config


def test_cpu_plan_shards_every_table(tiny_dataset: tuple[Path, Manifest]) -> None:
    root, manifest = tiny_dataset
    rows = plan_config(load_config("jobs/local.yaml", [f"data.path={root}"]), manifest, 2, "cpu")
    assert {r["model"] for r in rows} == {"deepfm", "dcn", "student", "base"}
    for r in rows:
        assert r["sharding"] in ("table_wise", "column_wise", "table_column_wise")
        assert sum(r["mib_per_rank"].values()) == pytest.approx(r["rows"] * r["dim"] * 4 / 2**20, abs=0.02)
    assert {rank for r in rows for rank in r["ranks"]} == {0, 1}


def test_gpu_plan_allows_row_wise(tiny_dataset: tuple[Path, Manifest]) -> None:
    root, manifest = tiny_dataset
    config = load_config("jobs/local.yaml", [f"data.path={root}", "train.sharding_types=[row_wise]"])
    rows = plan_config(config, manifest, 4, "cuda")
    assert all(r["sharding"] == "row_wise" and r["ranks"] == [0, 1, 2, 3] for r in rows)
    with pytest.raises(ConfigError, match="not available on cpu"):
        plan_config(config, manifest, 2, "cpu")


def test_cli_prints_the_plan(tiny_dataset: tuple[Path, Manifest], capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = tiny_dataset
    assert main(["plan", "jobs/local.yaml", f"data.path={root}", "--world-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "student_item_id" in out and "MiB" in out
    assert main(["plan", "jobs/local.yaml", f"data.path={root}", "train.sharding_types=[row_wise]"]) == 3
