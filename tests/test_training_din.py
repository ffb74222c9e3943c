"""DIN through the same loop as every model: a 2-worker Ray Train fit with its sequence (EmbeddingCollection)
table sharded next to the pooled ones, and an unsharded export that scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distrec.config import ModelConfig, TrainConfig
from distrec.data.batch import BatchBuilder
from distrec.data.schema import ITEM, Manifest
from distrec.eval.evaluate import score_files
from distrec.eval.metrics import logloss
from distrec.orchestrate.trainers import fit
from distrec.train.export import load_export
from distrec.train.loop import WorkerTask


@pytest.fixture(scope="module")
def trained_din(
    ray_local: None, tiny_dataset: tuple[Path, Manifest], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict, Path]:
    root, _ = tiny_dataset
    task = WorkerTask(
        model=ModelConfig(name="din", arch="din", dim=8, hidden=[16]),
        train=TrainConfig(num_workers=2, epochs=1, batch_size=128),
        dataset=str(root),
    )
    trained = fit(task, str(tmp_path_factory.mktemp("ray")))
    export = tmp_path_factory.mktemp("export") / "din"
    trained.checkpoint.to_directory(str(export))
    return trained.metrics, export


def test_din_trains_sharded_and_its_export_scores(
    trained_din: tuple[dict, Path], tiny_dataset: tuple[Path, Manifest]
) -> None:
    metrics, export = trained_din
    root, manifest = tiny_dataset
    tables = {row["table"]: row for row in metrics["plan"]}
    assert set(tables) == {"din_user_id", "din_item_tag", "din_item_id"}
    sequence = tables["din_item_id"]  # the EmbeddingCollection's table: candidate item and history
    assert sequence["module"].endswith("encoder.sequence_arch")
    assert sequence["sharding"] in ("table_wise", "column_wise") and sequence["kernel"] == "fused"
    assert all(row["sharding"] in ("table_wise", "column_wise", "table_column_wise") for row in tables.values())
    assert set().union(*(row["ranks"] for row in tables.values())) == {0, 1}
    assert metrics["rows"] == manifest.rows["train"]
    assert 0.3 < metrics["train_loss"] < 0.69

    model, spec, _ = load_export(export)
    assert spec["arch"] == "din"
    table = model.encoder.sequence_arch.embeddings["din_item_id"].weight
    assert table.shape == (manifest.cardinality[ITEM], 8) and torch.isfinite(table).all()
    scored = score_files(model, BatchBuilder(manifest), manifest.files(root, "test_id"), batch_size=512)
    assert scored["probs"].shape == (manifest.rows["test_id"],)
    assert np.all((scored["probs"] > 0) & (scored["probs"] < 1))
    # the export is the trained model: it fits the training rows better than the epoch's running loss
    fitted = score_files(model, BatchBuilder(manifest), manifest.files(root, "train"), batch_size=512)
    assert logloss(fitted["labels"], fitted["probs"]) < metrics["train_loss"]
