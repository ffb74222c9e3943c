"""``distrec evaluate MODEL --data DIR [--split S]``: one model's metrics on any dataset.

MODEL is an export directory (``models/<name>/`` of a run) or a registry URI: ``models:/NAME@ALIAS``
or ``models:/NAME/VERSION``, whose version's ``nightly.model`` export is evaluated.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from distrec.config import Config, load_config
from distrec.data.schema import USER, Manifest
from distrec.errors import ConfigError, DataError
from distrec.eval.evaluate import EVAL_SPLITS, activity_groups_of, evaluate_export
from distrec.eval.groups import groups_from_counts
from distrec.nightly.registry import Registry

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


def resolve_model(model: str, config: Config) -> Path:
    """The export directory MODEL names (module docstring); registry versions are downloaded once."""
    if not model.startswith("models:/"):
        return Path(model)
    match = MODEL_URI.match(model)
    if match is None:
        raise ConfigError(f"{model!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    registry = Registry(replace(config.registry, model_name=match["name"]), config.runs_dir)
    version = match["version"] or registry.alias(match["alias"])
    if version is None:
        raise ConfigError(f"{model}: registry {registry.uri} has no alias {match['alias']!r} on {match['name']!r}")
    return registry.download(version) / config.nightly.model


def evaluate_model(
    model: str, data: Path, split: str | None, config_path: str | None, overrides: list[str]
) -> dict[str, Any]:
    """``{"model", "data", "metrics": {split: metrics with per-group metrics}}``."""
    config = load_config(config_path if config_path and Path(config_path).is_file() else None, overrides)
    export = resolve_model(model, config)
    manifest = Manifest.read(data)
    if split is not None and split not in manifest.splits:
        raise DataError(f"{data}: no split {split!r}; it has {sorted(manifest.splits)}")
    splits = (split,) if split else tuple(s for s in EVAL_SPLITS if s in manifest.splits)
    if "train" in manifest.splits:
        groups = activity_groups_of(manifest, data)
    else:  # no training rows to rank users by: every user is in the least active group
        groups = groups_from_counts(np.zeros(manifest.cardinality[USER]))
    metrics = evaluate_export(export, data, groups, config.eval.k, config.eval.batch_size, splits)
    return {"model": str(export), "data": str(data), "metrics": metrics}
