"""A teacher with 10M-row embedding tables trains across 2 workers within this machine's memory."""

from __future__ import annotations

import threading
from pathlib import Path

import psutil
import pytest

from distrec.config import ModelConfig, TrainConfig
from distrec.data.schema import Manifest
from distrec.orchestrate.trainers import fit
from distrec.train.loop import WorkerTask

ROWS = 10_000_000
GIB = 2**30


def session_rss() -> int:
    """Resident memory of this process and its descendants: the local Ray it started (GCS, raylet,
    workers) and nothing else running on the machine."""
    me = psutil.Process()
    total = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


@pytest.mark.slow
def test_ten_million_row_tables_train_on_two_workers(
    ray_local: None, tiny_dataset: tuple[Path, Manifest], tmp_path: Path
) -> None:
    root, manifest = tiny_dataset
    task = WorkerTask(
        model=ModelConfig(name="big", arch="dcn", dim=16, hidden=[16], table_rows={"user_id": ROWS, "item_id": ROWS}),
        train=TrainConfig(num_workers=2, epochs=1, batch_size=512),
        dataset=str(root),
    )
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            peak[0] = max(peak[0], session_rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        trained = fit(task, str(tmp_path))
    finally:
        done.set()
        sampler.join()

    plan = {row["table"]: row for row in trained.metrics["plan"]}
    assert {plan["big_user_id"]["ranks"][0], plan["big_item_id"]["ranks"][0]} == {0, 1}  # one 10M table per rank
    assert trained.metrics["rows"] == manifest.rows["train"]
    print(f"peak RSS of the driver and its Ray: {peak[0] / GIB:.2f} GiB")
    assert peak[0] < 12 * GIB  # measured 8.5 GiB; the machine has 24
