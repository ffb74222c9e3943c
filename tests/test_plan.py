"""`distrec plan`: per-device sharding plans as a dry run, with memory that adds up."""

from __future__ import annotations

import multiprocessing
import os
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


def _one_rank_training(
    root: Path, manifest: Manifest, sharding_types: list[str]
) -> tuple[dict[str, tuple[str, float]], str]:
    """``build_training`` on one gloo rank: each parameter's optimizer (its class, its learning rate;
    ("fused", lr) for the optimizer fused into the backward), and the class of the module DMP wraps.
    Run in a process of its own: TorchRec keeps the group's store alive past ``destroy_process_group``
    (a listening socket test_security would see)."""
    import socket

    import torch
    import torch.distributed as dist

    from distrec.config import ModelConfig, TrainConfig
    from distrec.train.loop import WorkerTask, build_training

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # as distrec's local runs: gloo on the loopback interface
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    train = TrainConfig(num_workers=1, sharding_types=sharding_types, sparse_lr=0.2, dense_lr=0.003)
    task = WorkerTask(model=ModelConfig(name="fm", arch="deepfm", dim=8, hidden=[16]), train=train, dataset=str(root))
    training = build_training(task, manifest, 1, torch.device("cpu"))
    out = {}
    for _, keyed in training.optimizer.optimizers:
        inner = getattr(keyed, "_optimizer", None)  # a KeyedOptimizerWrapper's torch optimizer; the fused one has none
        kind = type(inner).__name__ if inner is not None else "fused"
        for name in keyed.params:
            out[name] = (kind, inner.param_groups[0]["lr"] if inner is not None else train.sparse_lr)
    return out, type(training.dmp._dmp_wrapped_module).__name__


@pytest.mark.parametrize(("sharding_types", "fused"), [([], True), (["data_parallel"], False)])
def test_tables_keep_their_optimizer_whatever_the_sharding(
    tiny_dataset: tuple[Path, Manifest], sharding_types: list[str], fused: bool
) -> None:
    """Sharded tables get the fused sparse optimizer; data_parallel ones (dense replicas that TorchRec
    does not fuse) get the same optimizer at the same learning rate, never the dense layers' Adam
    (which once trained them at dense_lr: valid AUC 0.700 against 0.762 after an epoch). One rank leaves
    the dense layers unwrapped: DDP would have nothing to all-reduce."""
    root, manifest = tiny_dataset
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        holders, wrapped = pool.apply(_one_rank_training, (root, manifest, sharding_types))
    assert wrapped == "Objective"
    tables = [n for n in holders if ".embedding_bags." in n]
    assert len(tables) == len(manifest.sparse)
    for name in tables:
        assert holders[name] == ("fused" if fused else "RowWiseAdagrad", 0.2), name
    dense = [kind for n, (kind, lr) in holders.items() if n not in tables]
    assert dense and set(dense) == {"Adam"}
    assert all(lr == 0.003 for n, (kind, lr) in holders.items() if n not in tables)


def test_small_tables_are_replicated_below_the_threshold(tiny_dataset: tuple[Path, Manifest]) -> None:
    """``train.replicate_below_mib``: on several ranks, every table under the threshold is data_parallel (on
    every rank, whole) and the rest stay sharded; a rank alone keeps its plan."""
    root, manifest = tiny_dataset
    rows = plan_config(load_config("jobs/local.yaml", [f"data.path={root}"]), manifest, 2, "cpu")
    largest = max(r["rows"] * r["dim"] * 4 for r in rows)
    threshold = largest / 2**20  # strictly below it: every table but the largest
    config = load_config("jobs/local.yaml", [f"data.path={root}", f"train.replicate_below_mib={threshold}"])
    replicated = plan_config(config, manifest, 2, "cpu")
    kinds = {r["sharding"] for r in replicated}
    assert "data_parallel" in kinds and len(kinds) > 1  # both: replicated and (however the planner shards) sharded
    for r in replicated:
        small = r["rows"] * r["dim"] * 4 < largest
        assert (r["sharding"] == "data_parallel") == small, r
        if small:
            assert r["ranks"] == [0, 1] and set(r["mib_per_rank"].values()) == {
                round(r["rows"] * r["dim"] * 4 / 2**20, 2)
            }
    assert not any(r["sharding"] == "data_parallel" for r in plan_config(config, manifest, 1, "cpu"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.replicate_below_mib=-1"], "train.replicate_below_mib must be >= 0"),
        (["train.replicate_below_mib=1", "train.sharding_types=[table_wise]"], "exclusive"),
    ],
)
def test_bad_replication_settings_are_config_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("jobs/local.yaml", overrides)
