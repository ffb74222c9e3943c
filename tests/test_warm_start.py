"""Warm start: an unsharded export taken on 2 workers initialises a model trained on 1 worker."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from distrec.config import ModelConfig, TrainConfig
from distrec.data.schema import Manifest
from distrec.errors import CheckpointError
from distrec.orchestrate.trainers import fit
from distrec.train.export import load_unsharded, read_export
from distrec.train.loop import WorkerTask


def test_export_taken_on_two_workers_warm_starts_one(
    ray_local: None, tiny_dataset: tuple[Path, Manifest], tmp_path: Path
) -> None:
    root, _ = tiny_dataset
    model = ModelConfig(name="fm", arch="deepfm", dim=8, hidden=[16])
    first = fit(
        WorkerTask(model=model, train=TrainConfig(num_workers=2, epochs=1, batch_size=256), dataset=str(root)),
        str(tmp_path / "first"),
    )
    source = tmp_path / "source"
    first.checkpoint.to_directory(str(source))

    # learning rates of 0: after one epoch the warm-started model must still equal the export exactly
    frozen = TrainConfig(num_workers=1, epochs=1, batch_size=256, dense_lr=0.0, sparse_lr=0.0)
    second = fit(
        WorkerTask(model=replace(model, warm_start=str(source)), train=frozen, dataset=str(root)),
        str(tmp_path / "second"),
    )
    copy = tmp_path / "copy"
    second.checkpoint.to_directory(str(copy))
    _, before = read_export(source)
    _, after = read_export(copy)
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], msg=key)


def test_mismatched_export_is_refused() -> None:
    module = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(CheckpointError, match="missing"):
        load_unsharded(module, {"0.weight": torch.zeros(2, 3)}, prefix="")
    with pytest.raises(CheckpointError, match="shape"):
        load_unsharded(module, {"0.weight": torch.zeros(3, 3), "0.bias": torch.zeros(2)}, prefix="")
