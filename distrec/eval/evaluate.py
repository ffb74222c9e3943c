"""Score exported models on the test splits and compute every metric overall and per user group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from ray.train import Checkpoint

from distrec.data.batch import BatchBuilder
from distrec.data.schema import LABEL, USER, Manifest
from distrec.eval.groups import group_counts_from_parquet, groups_from_counts
from distrec.eval.metrics import evaluate
from distrec.train.export import load_export

EVAL_SPLITS = ("test_id", "test_ood")


def score_files(
    model: torch.nn.Module, builder: BatchBuilder, files: list[Path], batch_size: int
) -> dict[str, np.ndarray]:
    """Predicted probabilities with the users and labels of every row of ``files``."""
    users, labels, probs = [], [], []
    columns = sorted(set(builder.columns) | {USER, LABEL})
    with torch.no_grad():
        for path in files:
            for record_batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns):
                table = pa.Table.from_batches([record_batch])
                probs.append(torch.sigmoid(model(builder(table))).numpy())
                users.append(table.column(USER).to_numpy())
                labels.append(table.column(LABEL).to_numpy())
    if not probs:
        return {"users": np.zeros(0, np.int64), "labels": np.zeros(0, np.float32), "probs": np.zeros(0, np.float32)}
    return {"users": np.concatenate(users), "labels": np.concatenate(labels), "probs": np.concatenate(probs)}


def activity_groups_of(manifest: Manifest, root: str | Path) -> np.ndarray:
    """User -> activity group index (q1..q5 by training-interaction quintiles)."""
    counts = group_counts_from_parquet(manifest.files(root, "train"), num_users=manifest.cardinality[USER])
    return groups_from_counts(counts)


def evaluate_export(
    directory: str | Path, root: str | Path, groups: np.ndarray, k: int, batch_size: int
) -> dict[str, Any]:
    """``{split: metrics with per-group metrics}`` for one exported model."""
    torch.set_num_threads(1)
    model, _, manifest = load_export(directory)  # the model's manifest: its table sizes
    builder = BatchBuilder(manifest)
    out: dict[str, Any] = {}
    for split in EVAL_SPLITS:
        if split not in manifest.splits:
            continue
        scored = score_files(model, builder, manifest.files(root, split), batch_size)
        out[split] = evaluate(scored["users"], scored["labels"], scored["probs"], groups=groups, k=k)
    return out


@ray.remote(num_cpus=1)
def _evaluate_checkpoint(
    checkpoint: Checkpoint, root: str, groups: np.ndarray, k: int, batch_size: int
) -> dict[str, Any]:
    with checkpoint.as_directory() as directory:
        return evaluate_export(directory, root, groups, k, batch_size)


def evaluate_checkpoints(
    checkpoints: dict[str, Checkpoint], root: str | Path, k: int, batch_size: int
) -> dict[str, dict[str, Any]]:
    """Evaluate every model in parallel Ray tasks (on a cluster they run where the data is)."""
    manifest = Manifest.read(root)
    groups_ref = ray.put(activity_groups_of(manifest, root))
    refs = {
        name: _evaluate_checkpoint.remote(ckpt, str(root), groups_ref, k, batch_size)
        for name, ckpt in checkpoints.items()
    }
    return {name: ray.get(ref) for name, ref in refs.items()}
