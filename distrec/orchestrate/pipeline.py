"""``distrec run``: data -> K teachers (+ base) in parallel -> soft-label stream -> student -> report.

A run writes into ``<runs_dir>/<run_id>.partial/`` and is renamed to ``<runs_dir>/<run_id>/`` only
when its report is complete, so a directory without the suffix is always a finished run:

    config.yaml            the resolved configuration
    history_bank.parquet   the N sampled histories x' of the front-door estimate
    models/<name>/         unsharded exports (model.json + weights.pt) of every model
    checkpoints/           Ray Train's run storage
    report.json, report.md, *.png
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import ray

from distrec.config import Config, ModelConfig, RayConfig, to_dict, to_yaml
from distrec.data.batch import BatchBuilder
from distrec.data.schema import MANIFEST, SPLITS, Manifest
from distrec.data.synth import synthesize
from distrec.data.validate import read_parquet_checked
from distrec.errors import ConfigError
from distrec.eval.evaluate import evaluate_checkpoints
from distrec.eval.report import build_report, write_report
from distrec.io import atomic_write_text
from distrec.orchestrate.stream import conditional_column, front_door_column, soft_label_stream, write_history_bank
from distrec.orchestrate.trainers import fit, fit_concurrently
from distrec.train.loop import WorkerTask

log = logging.getLogger("distrec")
RESERVED_NAMES = ("student", "base", "kd", "causald", "crl", "causald+crl")


def synthetic_dataset(config: Config) -> Path:
    """The embedded default dataset, generated once per parameter set under ``data.cache_dir``."""
    params = asdict(config.data.synth)
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    root = Path(config.data.cache_dir) / f"synth-{params['rows']}-{digest}"
    if not (root / MANIFEST).is_file():
        log.info("generating the synthetic dataset (%d rows) at %s", params["rows"], root)
        synthesize(root, overwrite=True, **params)
    return root


def prepare_dataset(config: Config) -> Path:
    root = Path(config.data.path) if config.data.path else synthetic_dataset(config)
    manifest = Manifest.read(root)
    for split in ("train", "test_id"):
        if not manifest.files(root, split):
            raise ConfigError(f"{root}: split {split!r} has no Parquet files")
    if config.data.validate:
        for split in manifest.splits:
            for path in manifest.files(root, split):
                read_parquet_checked(path, manifest)  # reads, casts and validates every value
    return root


def check_names(config: Config) -> None:
    names = [t.name for t in config.teachers]
    if not names:
        raise ConfigError("at least one teacher is needed (teachers: [...])")
    clashes = sorted({n for n in names if names.count(n) > 1 or n in RESERVED_NAMES})
    if clashes:
        raise ConfigError(f"teacher names must be unique and not {list(RESERVED_NAMES)}: {clashes}")
    if config.distill.target not in ("front_door", "conditional"):
        raise ConfigError(f"distill.target must be front_door or conditional, got {config.distill.target!r}")


@contextmanager
def ray_session(settings: RayConfig) -> Iterator[None]:
    """Connect to a cluster, or start an embedded local Ray (on 127.0.0.1: see ``distrec.loopback``)."""
    if ray.is_initialized():
        yield
        return
    if settings.address:
        ray.init(address=settings.address)
    else:
        ray.init(
            num_cpus=settings.num_cpus,
            include_dashboard=False,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
        )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def run(config: Config) -> Path:
    """Run the whole pipeline; returns the finished run directory."""
    started = time.perf_counter()
    check_names(config)
    run_id = config.run_id or new_run_id()
    final_dir = Path(config.runs_dir) / run_id
    if final_dir.exists():
        raise ConfigError(f"{final_dir} already exists; choose another run_id")
    run_dir = final_dir.with_name(run_id + ".partial")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", to_yaml(config))

    root = prepare_dataset(config)
    manifest = Manifest.read(root)
    columns = BatchBuilder(manifest).columns
    train_files = [str(f.resolve()) for f in manifest.files(root, "train")]
    storage = str((run_dir / "checkpoints").resolve())
    dataset = str(root.resolve())

    with ray_session(config.ray):

        def task(model_config: ModelConfig, seed: int, **extra: Any) -> WorkerTask:
            return WorkerTask(model=model_config, train=config.train, dataset=dataset, seed=seed, **extra)

        log.info("training %d teachers and the base model concurrently", len(config.teachers))
        jobs = [(task(t, config.seed + i), None) for i, t in enumerate(config.teachers)]
        jobs.append((task(replace(config.student, name="base"), config.seed), None))
        trained = fit_concurrently(jobs, storage)

        bank = write_history_bank(
            manifest, str(root), config.distill.bank_size, config.seed, run_dir / "history_bank.parquet"
        )
        teachers = {t.name: trained[t.name].checkpoint for t in config.teachers}
        stream = soft_label_stream(train_files, columns, teachers, bank, config.distill.score_batch_size)
        students = student_variants(config, list(teachers))
        if config.ablation:
            # every variant trains on the same soft labels: score once, then train them side by side
            log.info("scoring soft labels once for %d ablation students", len(students))
            soft_dir = run_dir / "soft_labels"
            stream.write_parquet(str(soft_dir))
            precomputed = [str(p) for p in sorted(soft_dir.glob("*.parquet"))]
            jobs = [(task(m, config.seed, **kw), ray.data.read_parquet(precomputed)) for m, kw in students]
            trained.update(fit_concurrently(jobs, storage))
        else:
            log.info("training the student on the streamed soft labels")
            model_config, extra = students[-1]
            trained["student"] = fit(task(model_config, config.seed, **extra), storage, stream)

        log.info("evaluating %d models", len(trained))
        checkpoints = {name: model.checkpoint for name, model in trained.items()}
        metrics = evaluate_checkpoints(checkpoints, root, config.eval.k, config.eval.batch_size)
        for name, checkpoint in checkpoints.items():
            checkpoint.to_directory(str(run_dir / "models" / name))
    if config.ablation:
        metrics["causald+crl"] = metrics["student"]  # the configured student is the full method

    run_info = {
        "id": run_id,
        "config": to_dict(config),
        "dataset": {"path": dataset, "name": manifest.name, "source": manifest.source},
        "rows": {split: manifest.rows.get(split) for split in SPLITS},
        "training": {name: _training_summary(model.metrics) for name, model in trained.items()},
        "seconds": round(time.perf_counter() - started, 1),
        "host": {"cpus": os.cpu_count()},
    }
    write_report(run_dir, build_report(run_info, metrics))
    os.replace(run_dir, final_dir)
    return final_dir


def student_variants(config: Config, teachers: list[str]) -> list[tuple[ModelConfig, dict[str, Any]]]:
    """The students of a run as (model config, task arguments); the configured student comes last.

    Without ablation that is the one student (CausalD + CRL as configured). With ``ablation=true``
    the same architecture also trains as ``kd`` (plain multi-teacher distillation, no x'
    marginalisation), ``causald`` (front-door distillation only) and ``crl`` (the MI penalty only);
    ``base`` (labels only) is trained with the teachers either way.
    """
    fd = [front_door_column(t) for t in teachers]
    kd = [conditional_column(t) for t in teachers]
    configured = fd if config.distill.target == "front_door" else kd
    student = (config.student, {"soft_label_columns": configured, "distill": config.distill, "crl": config.crl})
    if not config.ablation:
        return [student]
    return [
        (replace(config.student, name="kd"), {"soft_label_columns": kd, "distill": config.distill}),
        (replace(config.student, name="causald"), {"soft_label_columns": fd, "distill": config.distill}),
        (replace(config.student, name="crl"), {"crl": config.crl}),
        student,
    ]


def _training_summary(metrics: dict[str, object]) -> dict[str, object]:
    keep = ("train_loss", "train_bce", "train_kd", "train_mi", "train_critic", "rows", "seconds", "plan")
    return {k: metrics[k] for k in keep if k in metrics}
