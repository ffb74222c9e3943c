"""Fault tolerance: a training worker killed mid-run is restarted by Ray Train and resumes from the
last sharded checkpoint, ending where an uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from distrec.config import ModelConfig, TrainConfig
from distrec.data.batch import BatchBuilder
from distrec.data.schema import Manifest
from distrec.eval.evaluate import score_files
from distrec.eval.metrics import auc, logloss
from distrec.orchestrate.trainers import TrainedModel, fit
from distrec.train.export import load_export
from distrec.train.loop import WorkerTask

EPOCHS, BATCH, EVERY = 2, 128, 5


def task(root: Path) -> WorkerTask:
    return WorkerTask(
        model=ModelConfig(name="dcn", arch="dcn", dim=8, hidden=[16]),
        train=TrainConfig(num_workers=2, epochs=EPOCHS, batch_size=BATCH, checkpoint_every=EVERY, max_failures=2),
        dataset=str(root),
    )


def train_workers() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])]


def kill_after_first_checkpoint(storage: Path, killed: list[int], timeout: float = 240.0) -> None:
    """Wait for the first mid-epoch checkpoint of the run, then SIGKILL one training worker."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if list(storage.glob(f"dcn/epoch000-step{EVERY:07d}/dcp/.metadata")):
            workers = train_workers()
            if workers:
                os.kill(workers[-1].pid, signal.SIGKILL)
                killed.append(workers[-1].pid)
                return
        time.sleep(0.05)


def quality(trained: TrainedModel, root: Path, manifest: Manifest, tmp: Path) -> tuple[float, float]:
    trained.checkpoint.to_directory(str(tmp))
    model, _, _ = load_export(tmp)
    scored = score_files(model, BatchBuilder(manifest), manifest.files(root, "test_id"), batch_size=1024)
    return auc(scored["labels"], scored["probs"]), logloss(scored["labels"], scored["probs"])


@pytest.mark.slow  # the same path on several nodes stays in make test: tests/test_cluster.py's student kill
def test_killed_worker_resumes_from_checkpoint(
    ray_local: None, tiny_dataset: tuple[Path, Manifest], tmp_path: Path
) -> None:
    root, manifest = tiny_dataset
    reference = fit(task(root), str(tmp_path / "reference"))

    storage = tmp_path / "interrupted"
    killed: list[int] = []
    killer = threading.Thread(target=kill_after_first_checkpoint, args=(storage, killed), daemon=True)
    killer.start()
    interrupted = fit(task(root), str(storage))
    killer.join(timeout=5)

    assert killed, "no training worker was killed: the run finished before its first checkpoint"
    # progress comes from the checkpoint: every row trained once per epoch, none skipped or repeated
    assert reference.metrics["rows"] == interrupted.metrics["rows"] == EPOCHS * manifest.rows["train"]
    ref_auc, ref_loss = quality(reference, root, manifest, tmp_path / "ref_export")
    got_auc, got_loss = quality(interrupted, root, manifest, tmp_path / "int_export")
    assert got_auc == pytest.approx(ref_auc, abs=0.01)
    assert got_loss == pytest.approx(ref_loss, abs=0.01)
