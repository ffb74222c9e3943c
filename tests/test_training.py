"""A real 2-worker sharded TorchRec training run through Ray Train, and its unsharded export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distrec.config import ModelConfig, TrainConfig
from distrec.data.batch import BatchBuilder
from distrec.data.schema import Manifest
from distrec.eval.evaluate import score_files
from distrec.eval.metrics import auc
from distrec.orchestrate.trainers import fit
from distrec.train.export import load_export
from distrec.train.loop import WorkerTask


@pytest.fixture(scope="module")
def trained_teacher(
    ray_local: None, tiny_dataset: tuple[Path, Manifest], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict, Path]:
    root, _ = tiny_dataset
    task = WorkerTask(
        model=ModelConfig(name="dcn", arch="dcn", dim=8, hidden=[16]),
        train=TrainConfig(num_workers=2, epochs=2, batch_size=256),
        dataset=str(root),
    )
    storage = tmp_path_factory.mktemp("ray")
    trained = fit(task, str(storage))
    export = tmp_path_factory.mktemp("export") / "dcn"
    trained.checkpoint.to_directory(str(export))
    # both ranks' DCP shards were merged into the one final checkpoint
    assert {p.name for p in (export / "dcp").iterdir()} >= {".metadata", "__0_0.distcp", "__1_0.distcp"}
    return trained.metrics, export


def test_tables_are_sharded_across_both_workers(trained_teacher: tuple[dict, Path]) -> None:
    metrics, _ = trained_teacher
    plan = metrics["plan"]
    assert {row["table"] for row in plan} == {"dcn_user_id", "dcn_item_id", "dcn_item_tag"}
    assert all(row["sharding"] in ("table_wise", "column_wise", "table_column_wise") for row in plan)
    assert all(row["kernel"] == "fused" for row in plan)
    assert set().union(*(row["ranks"] for row in plan)) == {0, 1}


def test_every_row_trained_exactly_once_per_epoch(
    trained_teacher: tuple[dict, Path], tiny_dataset: tuple[Path, Manifest]
) -> None:
    metrics, _ = trained_teacher
    _, manifest = tiny_dataset
    assert metrics["epoch"] == 1
    assert metrics["rows"] == 2 * manifest.rows["train"]  # two epochs
    assert 0.3 < metrics["train_loss"] < 0.69
    # each epoch's first step (waiting for the data to flow) is timed apart from the steady steps
    timers = metrics["timers"]
    assert timers["first_step"] > 0 and timers["train_step"] > 0
    assert timers["first_step"] + timers["train_step"] < metrics["seconds"]


def test_export_loads_unsharded_and_ranks_better_than_chance(
    trained_teacher: tuple[dict, Path], tiny_dataset: tuple[Path, Manifest]
) -> None:
    _, export = trained_teacher
    root, manifest = tiny_dataset
    model, spec, loaded_manifest = load_export(export)
    assert spec["arch"] == "dcn" and loaded_manifest.to_json() == manifest.to_json()
    table = model.encoder.sparse_arch.embedding_bags["dcn_item_id"].weight
    assert table.shape == (manifest.cardinality["item_id"], 8) and torch.isfinite(table).all()
    scored = score_files(model, BatchBuilder(manifest), manifest.files(root, "test_id"), batch_size=512)
    assert scored["probs"].shape == (manifest.rows["test_id"],)
    assert np.all((scored["probs"] > 0) & (scored["probs"] < 1))
    assert auc(scored["labels"], scored["probs"]) > 0.55  # the oracle (true_ctr) reaches 0.84


def test_valid_metrics_of_the_loop_are_those_of_its_export(
    trained_teacher: tuple[dict, Path], tiny_dataset: tuple[Path, Manifest]
) -> None:
    """Known answer: the loop validates each rank's share and combines them (the AUC from every rank's
    logits, the log-loss summed batch by batch); the kept export is the best epoch, so scoring it alone on
    the whole valid split gives the same two figures."""
    from distrec.eval.metrics import logloss

    metrics, export = trained_teacher
    root, manifest = tiny_dataset
    best = max(metrics["curve"], key=lambda p: p["valid_auc"])
    model, _, _ = load_export(export)
    scored = score_files(model, BatchBuilder(manifest), manifest.files(root, "valid"), batch_size=512)
    assert scored["labels"].shape == (manifest.rows["valid"],)
    assert best["valid_auc"] == pytest.approx(auc(scored["labels"], scored["probs"]), abs=1e-4)
    assert best["valid_logloss"] == pytest.approx(logloss(scored["labels"], scored["probs"]), abs=1e-4)


def test_a_node_lost_mid_call_resumes_the_fit_within_max_failures(
    ray_local: None, tiny_dataset: tuple[Path, Manifest], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray Train v2 takes its controller's call to a worker meeting the worker's node going away
    (``ActorUnavailableError``) for a controller failure, which it never retries; ``fit`` starts the
    trainer again. The fault is injected where Ray raises it, in ``TorchTrainer.fit``: the run's first
    attempt fails so, the next one trains for real. Any other controller error, or one past
    ``train.max_failures``, is raised."""
    from ray.exceptions import ActorUnavailableError
    from ray.train import ControllerError
    from ray.train.torch import TorchTrainer

    real_fit, attempts = TorchTrainer.fit, []

    def fails_first(failure: Exception) -> object:
        def attempt(self: TorchTrainer) -> object:
            attempts.append(failure)
            if len(attempts) == 1:
                raise ControllerError(failure)
            return real_fit(self)

        return attempt

    root, _ = tiny_dataset
    model = ModelConfig(name="fm", arch="deepfm", dim=8, hidden=[16])
    lost = ActorUnavailableError("the actor is unavailable: its node went away", None)
    monkeypatch.setattr(TorchTrainer, "fit", fails_first(lost))
    task = WorkerTask(model=model, train=TrainConfig(num_workers=1, epochs=1, batch_size=256), dataset=str(root))
    trained = fit(task, str(tmp_path / "resumed"))
    assert len(attempts) == 2 and trained.metrics["rows"] > 0

    for failure, max_failures in ((lost, 0), (ValueError("a bug in the controller"), 1)):
        attempts.clear()
        monkeypatch.setattr(TorchTrainer, "fit", fails_first(failure))
        train = TrainConfig(num_workers=1, epochs=1, batch_size=256, max_failures=max_failures)
        with pytest.raises(ControllerError) as raised:
            fit(WorkerTask(model=model, train=train, dataset=str(root)), str(tmp_path / f"raised{max_failures}"))
        assert raised.value.controller_failure is failure and len(attempts) == 1
