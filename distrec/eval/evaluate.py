"""Score exported models on the test splits and compute every metric overall and per user group."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from distrec.data.batch import BatchBuilder
from distrec.data.schema import LABEL, MANIFEST, P_DO, P_FD, TRUTHS, USER, Manifest
from distrec.errors import DataError
from distrec.eval.groups import GROUP_NAMES, group_counts_from_parquet, groups_from_counts
from distrec.eval.metrics import evaluate, paired_auc_interval, paired_logloss_interval, score_confounder_mi
from distrec.eval.report import COMPARED, HEADLINE
from distrec.slots import cpu_slots, gather_bounded
from distrec.train.export import load_export

EVAL_SPLITS = ("test_id", "test_ood", "test_do")
# the interventional truths a model's errors are measured against: metric-name prefix -> column
CAUSAL_TRUTHS = {"causal": P_DO, "fd": P_FD}


def score_files(
    model: torch.nn.Module, builder: BatchBuilder, files: list[Path], batch_size: int
) -> dict[str, np.ndarray]:
    """Predicted probabilities with the users and labels (and, on synthetic data, the interventional
    truths ``p_do`` and ``p_fd``) of every row of ``files``; with confounder columns also ``confounders``,
    one code per row for the combination of them."""
    truth = list(CAUSAL_TRUTHS.values()) if builder.manifest.has_true_ctr else []
    out: dict[str, list[np.ndarray]] = {"users": [], "labels": [], "probs": [], **{t: [] for t in truth}}
    if builder.confounders:
        out["confounders"] = []
    columns = sorted(set(builder.columns) | {USER, LABEL, *truth})
    with torch.inference_mode():
        for path in files:
            for record_batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns):
                table = pa.Table.from_batches([record_batch])
                batch = builder(table)
                out["probs"].append(torch.sigmoid(model(batch)).numpy())
                out["users"].append(table.column(USER).to_numpy())
                out["labels"].append(table.column(LABEL).to_numpy())
                for t in truth:
                    out[t].append(table.column(t).to_numpy())
                if builder.confounders:
                    out["confounders"].append(joint_code(batch.confounders.numpy(), builder.manifest))
    empty = {"users": np.int64, "labels": np.float32, "probs": np.float32, **{t: np.float32 for t in truth}}
    empty["confounders"] = np.int64
    return {k: np.concatenate(v) if v else np.zeros(0, empty[k]) for k, v in out.items()}


def joint_code(codes: np.ndarray, manifest: Manifest) -> np.ndarray:
    """One code per row for the combination of its confounder codes [B, C] (mixed radix)."""
    joint = np.zeros(len(codes), dtype=np.int64)
    for j, cardinality in enumerate(manifest.confounders.values()):
        joint = joint * cardinality + codes[:, j]
    return joint


def causal_error(
    users: np.ndarray, probs: np.ndarray, truth: np.ndarray, groups: np.ndarray, prefix: str = "causal"
) -> dict[str, Any]:
    """RMSE and cross-entropy of predictions against an interventional truth (``p_do``: P(Y | u, do(i)),
    or ``p_fd``: P(Y | do(x), i)), overall and per activity group: how far a model is from what a
    deconfounded model would predict. Keys ``<prefix>_rmse`` and ``<prefix>_logloss``."""

    def errors(rows: np.ndarray) -> dict[str, float]:
        p, t = np.clip(probs[rows].astype(np.float64), 1e-7, 1 - 1e-7), truth[rows].astype(np.float64)
        if not rows.any():
            return {f"{prefix}_rmse": float("nan"), f"{prefix}_logloss": float("nan")}
        return {
            f"{prefix}_rmse": float(np.sqrt(np.mean((p - t) ** 2))),
            f"{prefix}_logloss": float(-np.mean(t * np.log(p) + (1 - t) * np.log1p(-p))),
        }

    out: dict[str, Any] = errors(np.ones(len(users), dtype=bool))
    out["groups"] = {name: errors(groups[users] == g) for g, name in enumerate(GROUP_NAMES)}
    return out


def with_causal_error(metrics: dict[str, Any], scored: dict[str, np.ndarray], groups: np.ndarray) -> dict[str, Any]:
    """``metrics`` (of ``evaluate``) with the errors against every truth in ``scored`` merged in, overall
    and per group."""
    for prefix, column in CAUSAL_TRUTHS.items():
        if column not in scored:
            continue
        error = causal_error(scored["users"], scored["probs"], scored[column], groups, prefix)
        for name, values in error.pop("groups").items():
            metrics.get("groups", {}).get(name, {}).update(values)
        metrics = {**metrics, **error}
    return metrics


def ceilings(root: str | Path, groups: np.ndarray, k: int) -> dict[str, dict[str, Any]]:
    """On synthetic data, the metrics of the stored truths themselves, per test split: the ceilings
    every model's AUC is read against (``p_obs``: a perfect fit of the logs; ``p_do``: a perfectly
    deconfounded model, P(Y | u, do(i)); ``p_fd``: the front-door target P(Y | do(x), i), the Bayes
    predictor on test_do; ``true_ctr``: an oracle that also sees the session confounder)."""
    manifest = Manifest.read(root)
    if not manifest.has_true_ctr:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for split in EVAL_SPLITS:
        if split not in manifest.splits:
            continue
        tables = [pq.read_table(f, columns=[USER, LABEL, *TRUTHS]) for f in manifest.files(root, split)]
        table = pa.concat_tables(tables)
        users, labels = table.column(USER).to_numpy(), table.column(LABEL).to_numpy()
        out[split] = {t: evaluate(users, labels, table.column(t).to_numpy(), groups=groups, k=k) for t in TRUTHS}
    return out


def interaction_counts(manifest: Manifest, root: str | Path) -> np.ndarray:
    """Every user's count of training interactions (what the activity groups rank)."""
    return group_counts_from_parquet(manifest.files(root, "train"), num_users=manifest.cardinality[USER])


def activity_groups_of(manifest: Manifest, root: str | Path) -> np.ndarray:
    """User -> activity group index (q1..q5 by training-interaction quintiles)."""
    return groups_from_counts(interaction_counts(manifest, root))


def _scorer(directory: str | Path, root: str | Path) -> tuple[torch.nn.Module, BatchBuilder, Manifest]:
    """An exported model with the batch builder that reads the dataset at ``root`` into its tables."""
    model, _, trained_on = load_export(directory)
    manifest = Manifest.read(root)
    if manifest.schema() != trained_on.schema():
        raise DataError(
            f"{Path(root) / MANIFEST}: its columns {manifest.schema().names} are not those the model "
            f"{directory} was trained on {trained_on.schema().names}"
        )
    return model, BatchBuilder(manifest.with_table_rows(trained_on.table_rows)), manifest


def score_export(
    directory: str | Path, root: str | Path, batch_size: int, splits: tuple[str, ...] = EVAL_SPLITS
) -> dict[str, dict[str, np.ndarray]]:
    """``score_files`` of the exported model at ``directory`` on each of ``splits`` that the dataset at
    ``root`` has (any dataset with the model's columns: its ids, read into the model's tables)."""
    torch.set_num_threads(1)
    model, builder, manifest = _scorer(directory, root)
    return {
        split: score_files(model, builder, manifest.files(root, split), batch_size)
        for split in splits
        if split in manifest.splits
    }


def split_metrics(scored: dict[str, np.ndarray], groups: np.ndarray, k: int) -> dict[str, Any]:
    """Every metric of one scored split (``score_files``), overall and per group."""
    metrics = evaluate(scored["users"], scored["labels"], scored["probs"], groups=groups, k=k)
    if "confounders" in scored:
        metrics["confounder_mi"] = score_confounder_mi(scored["probs"], scored["confounders"])
    return with_causal_error(metrics, scored, groups)


def evaluate_export(
    directory: str | Path,
    root: str | Path,
    groups: np.ndarray,
    k: int,
    batch_size: int,
    splits: tuple[str, ...] = EVAL_SPLITS,
) -> dict[str, Any]:
    """``{split: metrics with per-group metrics}`` for one exported model on the dataset at ``root``."""
    scored = score_export(directory, root, batch_size, splits)
    return {split: split_metrics(s, groups, k) for split, s in scored.items()}


PAIRED_METRICS: dict[str, Callable[..., tuple[float, float]]] = {
    "auc": paired_auc_interval,
    "logloss": paired_logloss_interval,
}
"""The metrics with a paired bootstrap interval (distrec.eval.metrics), by the last part of a metric path."""


def paired_intervals(
    mine: dict[str, dict[str, np.ndarray]],
    theirs: dict[str, dict[str, np.ndarray]],
    groups: np.ndarray,
    paths: list[tuple[str, ...]],
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> dict[tuple[str, ...], tuple[float, float]]:
    """The paired bootstrap interval of one model minus another, from their scores of the same rows
    (``score_export`` of each on the same dataset), for each metric path (``(split, metric)`` or
    ``(split, "groups", NAME, metric)``, metric one of ``PAIRED_METRICS``) whose split both scored."""
    out: dict[tuple[str, ...], tuple[float, float]] = {}
    for path in paths:
        split, *group, metric = path
        if split not in mine or split not in theirs:
            continue
        a, b = mine[split], theirs[split]
        rows = groups[a["users"]] == GROUP_NAMES.index(group[-1]) if group else slice(None)
        interval = PAIRED_METRICS[metric]
        out[path] = interval(
            a["users"][rows], a["labels"][rows], a["probs"][rows], b["probs"][rows], resamples, level, seed
        )
    return out


@ray.remote(num_cpus=1)
def _headline_intervals(
    directory: str, reference: str, root: str, groups: np.ndarray, batch_size: int, resamples: int, seed: int
) -> dict[str, list[float]]:
    """``{row: [lo, hi]}``: the paired bootstrap interval of the AUC of the model at ``directory``
    minus that at ``reference``, on every headline row the dataset has."""
    paths = {label: (*path, "auc") for label, path in HEADLINE}
    splits = tuple(dict.fromkeys(path[0] for path in paths.values()))
    mine, theirs = (score_export(d, root, batch_size, splits) for d in (directory, reference))
    intervals = paired_intervals(mine, theirs, groups, list(paths.values()), resamples, seed)
    return {label: list(intervals[path]) for label, path in paths.items() if path in intervals}


_evaluate_export = ray.remote(num_cpus=1)(evaluate_export)


@ray.remote(num_cpus=1)
def _evaluate_peer(name: str, root: str, groups: np.ndarray, k: int, seed: int) -> tuple[dict[str, Any], dict]:
    """A peer (``distrec.eval.peers``) tuned on valid, then scored on the test splits."""
    from distrec.eval.peers import predict, read_ids, tune_mf

    torch.set_num_threads(1)
    manifest = Manifest.read(root)
    model, chosen = tune_mf(manifest, root, seed)
    out: dict[str, Any] = {}
    for split in EVAL_SPLITS:
        if split in manifest.splits:
            users, items, labels = read_ids(manifest, root, split)
            probs = predict(model, users, items)
            scored = {"users": users, "probs": probs}
            truths = list(CAUSAL_TRUTHS.values()) if manifest.has_true_ctr else []
            names = list(manifest.confounders)
            metrics = evaluate(users, labels, probs, groups=groups, k=k)
            if truths or names:  # one read of the split for both
                table = pa.concat_tables(pq.read_table(f, columns=truths + names) for f in manifest.files(root, split))
                scored.update({c: table.column(c).to_numpy() for c in truths})
                if names:
                    confounders = np.stack([table.column(c).to_numpy() for c in names], axis=1)
                    metrics["confounder_mi"] = score_confounder_mi(probs, joint_code(confounders, manifest))
            out[split] = with_causal_error(metrics, scored, groups)
    return out, chosen


class Evaluation(NamedTuple):
    metrics: dict[str, dict[str, Any]]  # by model (and peer) name: {split: metrics}
    peers: dict[str, dict]  # what each peer's search chose
    intervals: dict[str, dict[str, list[float]]]  # {"MODEL_vs_REFERENCE": {headline row: [lo, hi]}}


def evaluate_exports(
    exports: dict[str, Path],
    root: str | Path,
    k: int,
    batch_size: int,
    peers: tuple[str, ...] | list[str] = (),
    seed: int = 0,
    bootstrap: int = 0,
) -> Evaluation:
    """Evaluate every model, and train and evaluate every peer, in Ray tasks, as many at a time as there
    are real cores (``distrec.slots``; on a cluster they run where the data is). With ``bootstrap``
    resamples, also the intervals of the headline's pair (``distrec.eval.report.COMPARED``) where both
    were exported."""
    manifest = Manifest.read(root)
    groups_ref = ray.put(activity_groups_of(manifest, root))
    calls: dict[str, Callable[[], ray.ObjectRef]] = {}
    # the longest first: the peers tune on valid, the intervals score two models 'resamples' times
    for name in peers:
        calls[f"peer:{name}"] = partial(_evaluate_peer.remote, name, str(root), groups_ref, k, seed)
    model, reference = COMPARED
    pair = f"{model}_vs_{reference}"
    if bootstrap and model in exports and reference in exports:
        calls[f"interval:{pair}"] = partial(
            _headline_intervals.remote,
            str(exports[model]),
            str(exports[reference]),
            str(root),
            groups_ref,
            batch_size,
            bootstrap,
            seed,
        )
    for name, directory in exports.items():
        calls[f"model:{name}"] = partial(_evaluate_export.remote, str(directory), str(root), groups_ref, k, batch_size)
    results = gather_bounded(calls, cpu_slots())
    metrics = {name: results[f"model:{name}"] for name in exports}
    chosen = {}
    for name in peers:
        metrics[name], chosen[name] = results[f"peer:{name}"]
    intervals = {pair: results[f"interval:{pair}"]} if f"interval:{pair}" in results else {}
    return Evaluation(metrics, chosen, intervals)
