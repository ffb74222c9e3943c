"""Peers: plain PyTorch models trained on the same splits, the floor every distrec model must clear.

``mf`` is logistic matrix factorisation as a user would write it in 40 lines: user and item
embeddings, their dot product plus user, item and global biases, dense Adam, and the epoch chosen
on ``valid`` (early stopping). It reads only the ids and labels, so it sees no history, tags or
confounders: what it learns is preference and popularity. ``distrec run ... eval.peers=[mf]`` adds
it to the report; ``python -m benchmarks.mf_peer DIR`` runs it alone, with a small search on valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

from distrec.data.schema import ITEM, LABEL, USER, Manifest
from distrec.eval.metrics import auc

PEERS = ("mf",)


@dataclass
class MFConfig:
    dim: int = 32
    lr: float = 0.01
    weight_decay: float = 0.0  # L2 on the rows of the batch (Adam's own weight decay would touch every row)
    l2: float = 1e-6
    batch_size: int = 1024
    max_epochs: int = 20
    patience: int = 2
    seed: int = 0
    curve: list[dict[str, float]] = field(default_factory=list)  # filled by fit_mf: valid AUC per epoch


class MatrixFactorisation(nn.Module):
    def __init__(self, users: int, items: int, dim: int) -> None:
        super().__init__()
        self.user, self.item = nn.Embedding(users, dim), nn.Embedding(items, dim)
        self.user_bias, self.item_bias = nn.Embedding(users, 1), nn.Embedding(items, 1)
        self.bias = nn.Parameter(torch.zeros(()))
        for table in (self.user, self.item):
            nn.init.normal_(table.weight, std=0.05)
        for table in (self.user_bias, self.item_bias):
            nn.init.zeros_(table.weight)

    def forward(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        dot = (self.user(u) * self.item(i)).sum(-1)
        return dot + self.user_bias(u).squeeze(-1) + self.item_bias(i).squeeze(-1) + self.bias


def read_ids(manifest: Manifest, root: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user ids, item ids, labels) of every row of ``split``, in file order."""
    tables = [pq.read_table(f, columns=[USER, ITEM, LABEL]) for f in manifest.files(root, split)]
    if not tables:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    cols = [np.concatenate([t.column(c).to_numpy() for t in tables]) for c in (USER, ITEM, LABEL)]
    return cols[0].astype(np.int64), cols[1].astype(np.int64), cols[2].astype(np.float32)


def predict(model: MatrixFactorisation, users: np.ndarray, items: np.ndarray, batch: int = 65_536) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for lo in range(0, len(users), batch):
            u, i = torch.from_numpy(users[lo : lo + batch]), torch.from_numpy(items[lo : lo + batch])
            out.append(torch.sigmoid(model(u, i)).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def fit_mf(manifest: Manifest, root: str, config: MFConfig) -> MatrixFactorisation:
    """Train on ``train``, keep the epoch with the best ``valid`` AUC; ``config.curve`` records them."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    users, items, labels = read_ids(manifest, root, "train")
    valid = read_ids(manifest, root, "valid")
    model = MatrixFactorisation(manifest.cardinality[USER], manifest.cardinality[ITEM], config.dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best, best_state, stale = -math.inf, None, 0
    config.curve.clear()
    for epoch in range(config.max_epochs):
        model.train()
        order = rng.permutation(len(users))
        for lo in range(0, len(order), config.batch_size):
            rows = order[lo : lo + config.batch_size]
            u, i = torch.from_numpy(users[rows]), torch.from_numpy(items[rows])
            logits = model(u, i)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(labels[rows]))
            if config.l2:
                loss = loss + config.l2 * (model.user(u).pow(2).sum() + model.item(i).pow(2).sum()) / len(rows)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        score = auc(valid[2], predict(model, valid[0], valid[1])) if len(valid[0]) else -epoch
        config.curve.append({"epoch": epoch, "valid_auc": float(score)})
        if score > best:
            best, stale = score, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    return model


# The search ``tune_mf`` runs on valid: embedding width x learning rate (the two settings that mattered
# on the synthetic SCM; the l2 of 1e-6 and early stopping handle the rest).
MF_GRID = ({"dim": 16, "lr": 0.003}, {"dim": 32, "lr": 0.003}, {"dim": 16, "lr": 0.01}, {"dim": 32, "lr": 0.01})


def tune_mf(manifest: Manifest, root: str, seed: int = 0) -> tuple[MatrixFactorisation, dict[str, object]]:
    """Fit every ``MF_GRID`` setting; keep the best on valid. Returns the model and what was chosen."""
    valid = read_ids(manifest, root, "valid")
    best: tuple[float, MatrixFactorisation | None, dict[str, object]] = (-math.inf, None, {})
    for setting in MF_GRID:
        config = MFConfig(seed=seed, **setting)  # type: ignore[arg-type]
        model = fit_mf(manifest, root, config)
        score = auc(valid[2], predict(model, valid[0], valid[1]))
        if score > best[0]:
            chosen = {
                **setting,
                "valid_auc": score,
                "best_epoch": max(config.curve, key=lambda p: p["valid_auc"])["epoch"],
            }
            best = (score, model, {**chosen, "curve": list(config.curve)})
    assert best[1] is not None
    return best[1], best[2]
