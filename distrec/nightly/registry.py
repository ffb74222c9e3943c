"""The model registry on MLflow: every run recorded, every nightly candidate a registered version.

Embedded default (``registry.uri: null``): a SQLite file ``<runs_dir>/registry/mlflow.db`` with the
artifact store beside it (``<runs_dir>/registry/artifacts``); no server, nothing bound to a port.
Any other ``registry.uri`` is an MLflow tracking URI (a remote server keeps the same records).

A finished run directory becomes an MLflow run: the resolved config as params, each model's per-epoch
curve (``models/<name>/training.json``) and test metrics as metrics, and ``report.*``, the plots,
``gates.json`` and the unsharded exports (``models/<name>/model.json, weights.pt``: tensors only,
no pickled module) as artifacts. A version of the registered model points at that run's ``models``
artifact directory. The aliases ``challenger`` and ``champion`` name versions; moving ``champion``
is the one commit point of a promotion. MLflow keeps no alias history, so each promoted version is
tagged with the ``previous_champion`` it replaced, which is what ``rollback`` restores.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distrec.config import RegistryConfig
from distrec.errors import ConfigError
from distrec.io import atomic_write_text

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

CHAMPION, CHALLENGER = "champion", "challenger"
RUN_TAG = "distrec.run_id"  # the run directory's id, on the MLflow run: a run is recorded once
COMPLETE = ".complete"  # written last into a downloaded version: its files are all there
TOP_FILES = ("report.json", "report.md", "gates.json", "config.yaml", "metrics.json")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class Registry:
    """One MLflow tracking store and registered model (``registry.model_name``)."""

    def __init__(self, settings: RegistryConfig, runs_dir: str | Path) -> None:
        from mlflow import MlflowClient

        self.state = Path(runs_dir).resolve() / "registry"
        self.state.mkdir(parents=True, exist_ok=True)
        self.uri = settings.uri or f"sqlite:///{self.state / 'mlflow.db'}"
        self.name = settings.model_name
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        experiment = self.client.get_experiment_by_name(settings.experiment)
        if experiment is not None:
            self.experiment_id = experiment.experiment_id
        else:
            artifacts = None if settings.uri else (self.state / "artifacts").as_uri()
            self.experiment_id = self.client.create_experiment(settings.experiment, artifact_location=artifacts)

    # --- runs -------------------------------------------------------------------------------------

    def log_run(self, run_dir: Path, tags: dict[str, str] | None = None) -> str:
        """Record a finished run directory as an MLflow run; its MLflow run id.

        A run directory already recorded (a FINISHED run with its id) is not recorded again; an
        attempt that died while logging is marked FAILED and logged anew.
        """
        run_id = run_dir.name
        existing = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{run_id}'")
        for run in existing:
            if run.info.status == "FINISHED":
                return run.info.run_id
            self.client.set_terminated(run.info.run_id, "FAILED")
        report = json.loads((run_dir / "report.json").read_text())
        run = self.client.create_run(self.experiment_id, run_name=run_id, tags={RUN_TAG: run_id, **(tags or {})})
        mlflow_id = run.info.run_id
        self._log_values(mlflow_id, report, run_dir)
        for name in TOP_FILES:
            if (run_dir / name).is_file():
                self.client.log_artifact(mlflow_id, str(run_dir / name))
        for plot in sorted(run_dir.glob("*.png")):
            self.client.log_artifact(mlflow_id, str(plot), "plots")
        for model in sorted((run_dir / "models").iterdir()):
            self.client.log_artifacts(mlflow_id, str(model), f"models/{model.name}")
        self.client.set_terminated(mlflow_id, "FINISHED")
        return mlflow_id

    def _log_values(self, mlflow_id: str, report: dict[str, Any], run_dir: Path) -> None:
        from mlflow.entities import Metric, Param

        params = flatten(report["run"]["config"])
        batch = [Param(k, json.dumps(v) if isinstance(v, list | dict) else str(v)) for k, v in params.items()]
        for lo in range(0, len(batch), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(mlflow_id, params=batch[lo : lo + 100])
        stamp = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        metrics: list[Metric] = []
        for model in sorted((run_dir / "models").iterdir()):
            training = json.loads((model / "training.json").read_text())
            for point in training.get("curve", []):
                for key, value in point.items():
                    if key != "epoch" and isinstance(value, int | float) and math.isfinite(value):
                        metrics.append(Metric(f"{model.name}.{key}", float(value), stamp, int(point["epoch"])))
        for model, splits in report["models"].items():
            for key, value in flatten(splits).items():
                if isinstance(value, int | float) and math.isfinite(value):
                    metrics.append(Metric(f"{model}.{key}".replace("@", "_at_"), float(value), stamp, 0))
        for lo in range(0, len(metrics), 1000):
            self.client.log_batch(mlflow_id, metrics=metrics[lo : lo + 1000])

    # --- versions ---------------------------------------------------------------------------------

    def register(self, mlflow_id: str, tags: dict[str, str]) -> str:
        """The registered version of an MLflow run's ``models`` artifacts (created once); its number."""
        from mlflow.exceptions import MlflowException

        for version in self.client.search_model_versions(f"name='{self.name}' and run_id='{mlflow_id}'"):
            return str(version.version)
        try:
            self.client.create_registered_model(self.name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{self.client.get_run(mlflow_id).info.artifact_uri}/models"
        return str(self.client.create_model_version(self.name, source, mlflow_id, tags=tags).version)

    def versions(self) -> list[ModelVersion]:
        """Every version of the registered model, oldest first (none before the first registration)."""
        found = self.client.search_model_versions(f"name='{self.name}'")
        return sorted(found, key=lambda v: int(v.version))

    def version(self, version: str) -> ModelVersion:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(self.name, str(version))
        except MlflowException as exc:
            raise ConfigError(f"registry {self.uri}: model {self.name!r} has no version {version}") from exc

    def alias(self, alias: str) -> str | None:
        """The version an alias points at, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException:  # no such model, or no such alias
            return None

    def tag(self, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, version, key, value)

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.name, alias, version)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock around a promotion: two nightlies on one state directory cannot both
        promote (on a remote registry the lock is as shared as ``runs_dir`` is)."""
        with open(self.state / "promote.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def promote(self, version: str, reason: str) -> str | None:
        """Make ``version`` the champion (call under ``lock``); the champion it replaced, or None.

        Its tags are written first and the alias moved last: the move is the commit.
        """
        self.version(version)
        previous = self.alias(CHAMPION)
        if previous == version:
            return previous
        self.tag(version, {"previous_champion": previous or "", "promoted_at": now(), "promoted_by": reason})
        self.set_alias(CHAMPION, version)
        return previous

    def rollback(self) -> tuple[str, str]:
        """Point ``champion`` back at the version the current champion replaced: (from, to)."""
        with self.lock():
            current = self.alias(CHAMPION)
            if current is None:
                raise ConfigError(f"registry {self.uri}: model {self.name!r} has no champion to roll back")
            previous = self.version(current).tags.get("previous_champion", "")
            if not previous:
                raise ConfigError(f"version {current} is the first champion of {self.name!r}: nothing to roll back to")
            self.tag(current, {"rolled_back_at": now()})
            self.set_alias(CHAMPION, previous)
            return current, previous

    def download(self, version: str) -> Path:
        """A local copy of a version's exports (``<state>/versions/v<N>/<model>/``), made once."""
        import mlflow.artifacts

        target = self.state / "versions" / f"v{version}"
        if (target / COMPLETE).is_file():
            return target
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=self.version(version).source, dst_path=str(partial), tracking_uri=self.uri
        )
        atomic_write_text(Path(local) / COMPLETE, now() + "\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(local, target)  # the version's models/ directory, downloaded inside the partial one
        shutil.rmtree(partial)
        return target

    def table(self) -> list[dict[str, str]]:
        """One row per version: its number, aliases and the tags an operator reads."""
        from mlflow.exceptions import MlflowException

        aliases: dict[str, list[str]] = {}
        try:
            for alias, version in self.client.get_registered_model(self.name).aliases.items():
                aliases.setdefault(str(version), []).append(alias)
        except MlflowException:  # no registered model yet: no versions either
            return []
        keys = ("nightly_date", "decision", "gates", "force", "previous_champion", "run_id")
        return [
            {"version": str(v.version), "aliases": ",".join(sorted(aliases.get(str(v.version), [])))}
            | {k: v.tags.get(k, "") for k in keys}
            for v in self.versions()
        ]
