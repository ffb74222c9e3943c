"""``distrec run``: the pipeline as stages, data -> teachers (+ base) -> soft labels -> students -> evaluate -> report.

Each stage writes a complete artifact into the run directory and is skipped when that artifact is
already complete, so a fresh run, a resumed run (``distrec run --resume RUN_DIR``) and the nightly job
compose the same stages. A run writes into ``<runs_dir>/<run_id>.partial/`` and is renamed to
``<runs_dir>/<run_id>/`` only when its report is complete, so a directory without the suffix is
always a finished run:

    config.yaml            the resolved configuration (a resumed run must match it)
    history_bank.parquet   the N sampled histories x' of the front-door estimate
    models/<name>/         unsharded exports (model.json + weights.pt) and training.json, per model;
                           training.json is written last: its presence marks the model complete
                           (with distill.cross_fit=F also models/<teacher>__fold<f>/, f = 1..F-1)
    soft_labels/           the soft labels scored once, in the train split's row order (not with
                           distill.soft_labels=stream or inline, where the student consumes them live)
    checkpoints/           Ray Train's run storage (sharded DCP checkpoints: a model resumes from them)
    metrics.json           every model's and peer's test metrics
    report.json, report.md, *.png
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from distrec.config import (
    DISTILL_TARGETS,
    Config,
    ModelConfig,
    RayConfig,
    TrainConfig,
    check,
    cross_fit_copy,
    to_dict,
    to_yaml,
)
from distrec.console import Console, ProgressBoard, copy_ray_logs
from distrec.data.batch import BatchBuilder
from distrec.data.schema import ITEM, MANIFEST, SPLITS, USER, Manifest
from distrec.data.synth import SCM_VERSION, synthesize
from distrec.data.validate import check_dataset
from distrec.errors import ConfigError
from distrec.eval.evaluate import activity_groups_of, ceilings, evaluate_exports, interaction_counts
from distrec.eval.groups import group_profile, groups_from_counts
from distrec.eval.report import build_report, write_report
from distrec.io import atomic_write_json, atomic_write_text, partial_dir
from distrec.orchestrate.stream import (
    InlineScoring,
    ScoringOptions,
    conditional_column,
    front_door_column,
    soft_label_stream,
    write_history_bank,
)
from distrec.orchestrate.trainers import TrainedModel, fit, fit_concurrently
from distrec.train.export import read_export
from distrec.train.loop import WorkerTask
from distrec.train.sharding import allowed_sharding_types

log = logging.getLogger("distrec")
TRAINING = "training.json"


def synthetic_dataset(config: Config) -> Path:
    """The embedded default dataset, generated once per parameter set under ``data.cache_dir``."""
    params = asdict(config.data.synth)
    keyed = {**params, "scm_version": SCM_VERSION}  # a changed SCM never reuses an older cache
    digest = hashlib.sha1(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:8]
    root = Path(config.data.cache_dir) / f"synth-{params['rows']}-{digest}"
    if not (root / MANIFEST).is_file():
        log.info("generating the synthetic dataset (%d rows) at %s", params["rows"], root)
        synthesize(root, overwrite=True, **params)
    return root


def prepare_dataset(config: Config) -> Path:
    """The checked dataset's root, absolute: Ray Tune runs each trial in a working directory of its own."""
    root = Path(config.data.path) if config.data.path else synthetic_dataset(config)
    check_dataset(root, Manifest.read(root), values=config.data.validate)
    return root.absolute()


@contextmanager
def ray_session(settings: RayConfig, log_dir: Path | None = None) -> Iterator[None]:
    """Connect to a cluster, or start an embedded local Ray (on 127.0.0.1: see ``distrec.loopback``).

    With ``log_dir`` the workers' output stays off the driver's console (``log_to_driver=False``) and an
    embedded session's logs are copied into ``log_dir/ray`` before it shuts down.
    """
    configure_ray_data(settings)
    if ray.is_initialized():
        yield
        return
    if settings.address:
        ray.init(address=settings.address, log_to_driver=log_dir is None)
    else:
        ray.init(
            num_cpus=settings.num_cpus,
            object_store_memory=settings.object_store_mib * 2**20,
            include_dashboard=False,
            log_to_driver=log_dir is None,
            runtime_env={
                # gloo's collectives on the loopback interface: every worker is on this machine
                "env_vars": {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"},
                "worker_process_setup_hook": "distrec.orchestrate.worker_hook.quiet_ray_worker",
            },
        )
    try:
        yield
    finally:
        if log_dir is not None and not settings.address:
            copy_ray_logs(log_dir)
        ray.shutdown()


def configure_ray_data(settings: RayConfig) -> None:
    """This process's Ray Data settings: no progress bars (the console shows progress), Ray Data's v1 read
    path, the block size ``ray.data_block_mib`` and no downstream-capacity backpressure.

    v2, Ray 2.60's default, slows every read, distrec's own ``ParquetFiles`` too: one teacher's stream over
    7,000,000 rows ran at 53,000-61,000 rows/s on v2 against 166,000-179,000 on v1 (2 cores).

    Ray 2.60's ``DownstreamCapacityBackpressurePolicy`` holds back the last stage (the scorers) while its
    output exceeds twice what the consumer holds, about two batches: with a few scored blocks waiting it
    stopped feeding the scorer for minutes at a time while the read piled blocks up in the object store and
    the executor's loop spun a core. A stream over 2.4M rows after training a teacher ran at 15,000-20,000
    rows/s in 5 of 7 runs with it and at 202,000-212,000 in 5 of 5 without. The object-store budget
    (``ResourceBudget``) still bounds what the stream buffers."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.use_datasource_v2 = False
    context.target_max_block_size = settings.data_block_mib * 2**20
    context.downstream_capacity_backpressure_ratio = None


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


@dataclass
class RunContext:
    """What every stage reads: the config, the run directory being written and the dataset."""

    config: Config
    run_dir: Path  # the .partial directory
    root: Path
    manifest: Manifest
    console: Console | None = None
    progress: Any = None  # the console's ProgressBoard actor, passed to every model's workers
    timeline: list[tuple[str, float]] = field(default_factory=list)  # (stage, perf_counter at its start)
    models: Path | None = None  # where the trained models are, if not in run_dir/models (a tune trial's)

    def stage(self, name: str, models: list[str] | None = None) -> None:
        self.timeline.append((name, time.perf_counter()))
        if self.console is not None:
            self.console.stage(name, models or [])

    def stage_seconds(self) -> list[dict[str, Any]]:
        """Wall seconds of every stage this process ran, in order (each lasts until the next begins)."""
        ends = [start for _, start in self.timeline[1:]] + [time.perf_counter()]
        spans = zip(self.timeline, ends, strict=True)
        return [{"stage": name, "seconds": round(end - start, 1)} for (name, start), end in spans]

    @property
    def storage(self) -> str:
        return str((self.run_dir / "checkpoints").resolve())

    def model_dir(self, name: str) -> Path:
        return (self.models or self.run_dir / "models") / name

    def done(self, name: str) -> bool:
        return (self.model_dir(name) / TRAINING).is_file()

    def task(self, model: ModelConfig, seed: int, train: TrainConfig | None = None, **extra: Any) -> WorkerTask:
        """The worker task of ``model``, trained with ``train`` (default: the run's training settings)."""
        dataset = str(self.root.resolve())
        train = train or self.config.train
        return WorkerTask(model=model, train=train, dataset=dataset, seed=seed, progress=self.progress, **extra)


def open_run(config: Config, resume: Path | None = None) -> RunContext:
    """The run directory of a new run, or of a partial one to continue.

    A partial run is continued when ``resume`` names it, or when ``config.run_id`` names one (a retried
    nightly); either way its saved config.yaml must equal ``config``, or ConfigError.
    """
    check(config)  # also for a Config built in code rather than by load_config
    if resume is not None:
        run_dir = partial_dir(resume)
    else:
        config = replace(config, run_id=config.run_id or new_run_id())
        final_dir = Path(config.runs_dir) / str(config.run_id)
        if final_dir.exists():
            raise ConfigError(f"{final_dir} already exists; choose another run_id")
        run_dir = final_dir.with_name(final_dir.name + ".partial")
    saved = run_dir / "config.yaml"
    if saved.is_file() and saved.read_text() != to_yaml(config):
        raise ConfigError(f"{run_dir} was started with another configuration; resume it with the same one")
    if resume is not None and not saved.is_file():
        raise ConfigError(f"--resume {resume}: no partial run there (no {saved})")
    # every input is checked before anything is written or started
    root = prepare_dataset(config)
    manifest = Manifest.read(root)
    check_confounders(config, manifest, root)
    check_valid_split(config, manifest, root)
    check_models(config, run_dir)
    if saved.is_file():
        log.info("resuming %s", run_dir)
    else:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(saved, to_yaml(config))
        except OSError as exc:
            raise ConfigError(f"runs_dir={config.runs_dir}: cannot create the run directory {run_dir}: {exc}") from exc
    return RunContext(config, run_dir, root, manifest)


def check_models(config: Config, run_dir: Path) -> None:
    """What the workers would only find out inside Ray: the sharding types on this run's device, and
    every export the run loads (warm starts, a resumed run's finished models), opened but not read."""
    allowed_sharding_types(config.train.device, config.train.sharding_types)
    for model in [*config.teachers, config.student]:
        if model.warm_start:
            read_export(model.warm_start, mmap=True)
    for name in trained_names(config):
        if (run_dir / "models" / name / TRAINING).is_file():
            read_export(run_dir / "models" / name, mmap=True)


def check_valid_split(config: Config, manifest: Manifest, root: Path) -> None:
    """The split ``train.valid_split`` names must be in the dataset (before Ray starts)."""
    split = config.train.valid_split
    if split != "valid" and not manifest.splits.get(split):
        raise ConfigError(
            f"train.valid_split={split}: {root / MANIFEST} has no {split} split; its splits are "
            f"{sorted(manifest.splits)}"
        )


def check_confounders(config: Config, manifest: Manifest, root: Path) -> None:
    """CRL penalises I(Z; C) over the dataset's confounder columns: without any it would silently do
    nothing, so a CRL model on such a dataset is a configuration error."""
    if config.crl.beta > 0 and not manifest.confounders:
        raise ConfigError(
            f"{root / MANIFEST}: the dataset has no confounder columns, so CRL (crl.beta={config.crl.beta}) "
            "has nothing to remove; import the log with --policy-col, --propensity-col, --position-col or "
            "--confounder-col (exposure columns, not user traits), or set crl.beta=0"
        )
    unknown = sorted(set(config.crl.confounders) - set(manifest.confounders))
    if config.crl.beta > 0 and unknown:
        raise ConfigError(
            f"crl.confounders names {unknown}, which {root / MANIFEST} does not have; its confounder columns "
            f"are {sorted(manifest.confounders)}"
        )


def run(config: Config, resume: Path | None = None, console: Console | None = None) -> Path:
    """Run (or continue) the whole pipeline; returns the finished run directory.

    A ``console`` shows the stages and every model's progress, with the libraries' output in RUN_DIR/logs.
    """
    started = time.perf_counter()
    ctx = open_run(config, resume)
    ctx.console = console
    ctx.timeline.append(("data and checks", started))
    with console_session(ctx):
        with ray_with_progress(ctx):
            train_teachers(ctx)
            train_students(ctx)
            metrics = evaluate(ctx)
        ctx.stage("report")
        return write_run_report(ctx, metrics, time.perf_counter() - started)


def console_session(ctx: RunContext) -> AbstractContextManager[None]:
    """The console's session, if there is a console: library output into RUN_DIR/logs, the display live."""
    return ctx.console.session(ctx.run_dir / "logs") if ctx.console is not None else nullcontext()


@contextmanager
def ray_with_progress(ctx: RunContext) -> Iterator[None]:
    """Stage "starting Ray": the run's Ray session and, with a console, the ProgressBoard every model
    reports to; a console that is not verbose keeps the workers' output off the driver's (Ray's logs are
    copied into RUN_DIR/logs/ray as the session ends)."""
    console = ctx.console
    quiet = console is not None and not console.verbose
    ctx.stage("starting Ray")
    with ray_session(ctx.config.ray, ctx.run_dir / "logs" if quiet else None):
        if console is not None:
            ctx.progress = ray.remote(num_cpus=0)(ProgressBoard).remote()
            console.attach(ctx.progress)
        yield


def _keep(ctx: RunContext, trained: TrainedModel) -> None:
    """Copy a trained model's export into models/<name>/ (atomically: training.json marks it complete)."""
    target = ctx.model_dir(trained.name)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    trained.checkpoint.to_directory(str(partial))
    shutil.rmtree(partial / "dcp", ignore_errors=True)  # the sharded state stays in checkpoints/
    atomic_write_json(partial / TRAINING, _training_summary(trained.metrics))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)


def train_teachers(ctx: RunContext) -> None:
    """Stage: the K teachers (each as its cross-fitted copies, if any) and ``base`` (the student's
    architecture on labels alone), concurrently."""
    config = ctx.config
    models = [
        (ctx.task(copy, config.seed + i, held_out=held_out), None)
        for i, t in enumerate(config.teachers)
        for copy, held_out in cross_fitted(t, config.distill.cross_fit)
    ]
    base = replace(config.student, name="base", warm_start=sibling_export(config.student.warm_start, "base"))
    models.append((ctx.task(base, config.seed), None))
    todo = [(task, ds) for task, ds in models if not ctx.done(task.model.name)]
    if todo:
        ctx.stage("teachers and base", [t.model.name for t, _ in todo])
        log.info("training %s concurrently", ", ".join(t.model.name for t, _ in todo))
        for trained in fit_concurrently(todo, ctx.storage).values():
            _keep(ctx, trained)


HeldOut = tuple[int, int] | None  # (fold k, folds K): a cross-fitted copy trains without fold k


def cross_fitted(teacher: ModelConfig, folds: int) -> list[tuple[ModelConfig, HeldOut]]:
    """The models a teacher trains as, with the fold each holds out: itself alone (``folds`` 0), or one
    copy per fold, copy k without fold k. Copy 0 keeps the teacher's name; copy k warm-starts from its
    namesake beside the teacher's warm start (never from a copy that trained on fold k), or from nothing."""
    if folds < 2:
        return [(teacher, None)]
    copies: list[tuple[ModelConfig, HeldOut]] = [(teacher, (0, folds))]
    for k in range(1, folds):
        name = cross_fit_copy(teacher.name, k)
        copies.append((replace(teacher, name=name, warm_start=sibling_export(teacher.warm_start, name)), (k, folds)))
    return copies


def sibling_export(export: str | None, name: str) -> str | None:
    """The export of model ``name`` beside a warm start's export (``models/<name>/`` of the same run),
    if there is one: base warm-starts from the earlier base, not from the student it shares a shape with."""
    sibling = Path(export).parent / name if export else None
    return str(sibling) if sibling is not None and (sibling / "model.json").is_file() else None


def train_students(ctx: RunContext) -> None:
    """Stages: soft labels (from every teacher, the targets the students read), then the student variants."""
    config = ctx.config
    students = student_variants(config, [t.name for t in config.teachers])
    todo = [(m, kw) for m, kw in students if not ctx.done(m.name)]
    if not todo:
        return
    if config.ablation or config.distill.soft_labels == "precompute":
        # Soft labels scored once into Parquet in the train split's row order (the teachers are frozen),
        # read through the same ShardReader as base: every variant sees the same rows in the same
        # order, so variants that differ only in their loss differ only because of it.
        precomputed = score_soft_labels(ctx)
        ctx.stage("students", [m.name for m, _ in todo])
        jobs = [(ctx.task(m, config.seed, train_files=precomputed, **kw), None) for m, kw in todo]
        for trained in fit_concurrently(jobs, ctx.storage).values():
            _keep(ctx, trained)
    elif config.distill.soft_labels == "inline":
        ctx.stage("student scoring its own soft labels", [students[-1][0].name])
        log.info("training the student on soft labels its ranks score inline")
        model_config, extra = students[-1]
        scoring = InlineScoring(teacher_exports(ctx), scoring_options(ctx))
        _keep(ctx, fit(ctx.task(model_config, config.seed, inline_scoring=scoring, **extra), ctx.storage))
    else:
        ctx.stage("student on the streamed soft labels", [students[-1][0].name])
        log.info("training the student on the streamed soft labels")
        model_config, extra = students[-1]
        stream = soft_labels(ctx, beside_training=True)
        _keep(ctx, fit(ctx.task(model_config, config.seed, **extra), ctx.storage, stream))


def history_bank(ctx: RunContext) -> Path:
    """The run's bank of histories x' for the front-door marginalisation, drawn from the train split once;
    an absolute path, as the processes that read it (a Ray Train rank, a Ray worker) may run elsewhere."""
    bank = (ctx.run_dir / "history_bank.parquet").resolve()
    if not bank.is_file():
        write_history_bank(ctx.manifest, str(ctx.root), ctx.config.distill.bank_size, ctx.config.seed, bank)
    return bank


def scoring_options(ctx: RunContext) -> ScoringOptions:
    """How the run's teachers score its soft labels, in a stream's actors or inline: its history bank, the
    draws, the bank's groups and the targets its students read (on one thread)."""
    distill = ctx.config.distill
    return ScoringOptions(
        str(history_bank(ctx)),
        distill.mediator_samples,
        ctx.config.seed,
        bank_groups=distill.bank_groups,
        targets=soft_label_targets(ctx.config),
    )


def teacher_exports(ctx: RunContext) -> dict[str, list[str]]:
    """Each teacher's export directory, or its cross-fitted copies' in fold order."""
    folds = ctx.config.distill.cross_fit
    return {
        t.name: [str(ctx.model_dir(copy.name).resolve()) for copy, _ in cross_fitted(t, folds)]
        for t in ctx.config.teachers
    }


def soft_labels(ctx: RunContext, beside_training: bool = False) -> ray.data.Dataset:
    """The lazily executed soft-label stream over the train split, from every teacher's export;
    ``beside_training``: a student trains on it as it flows (``soft_label_stream``)."""
    train_files = [str(f.resolve()) for f in ctx.manifest.files(ctx.root, "train")]
    columns = BatchBuilder(ctx.manifest).columns
    distill = ctx.config.distill
    return soft_label_stream(
        train_files,
        columns,
        teacher_exports(ctx),
        scoring_options(ctx),
        distill.score_batch_size,
        scorers_per_teacher=distill.scorers_per_teacher,
        scorer_cpus=distill.scorer_cpus,
        beside_training=beside_training,
    )


def score_soft_labels(ctx: RunContext) -> list[str]:
    """Stage: the stream written once to ``soft_labels/`` in the train split's row order; its files."""
    soft_dir = ctx.run_dir / "soft_labels"
    if not soft_dir.is_dir():
        ctx.stage("scoring soft labels")
        log.info("scoring soft labels once into %s", soft_dir)
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        partial = soft_dir.with_name("soft_labels.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        # Written from the ordered stream by one writer: Ray Data's write_parquet names its files after
        # per-task ids, so their sorted names need not follow the row order.
        writer: pq.ParquetWriter | None = None
        stream = cast(  # batch_format="pyarrow": Arrow tables
            Iterator[pa.Table],
            soft_labels(ctx).iter_batches(batch_size=ctx.config.distill.score_batch_size, batch_format="pyarrow"),
        )
        scored, total = 0, ctx.manifest.rows.get("train") or 0
        for table in stream:
            if writer is None:
                writer = pq.ParquetWriter(partial / "part-00000.parquet", table.schema)
            writer.write_table(table)
            scored += table.num_rows
            if ctx.console is not None:
                ctx.console.advance(f"{scored:,} of {total:,} train rows")
        if writer is not None:
            writer.close()
        os.replace(partial, soft_dir)
    return [str(p.resolve()) for p in sorted(soft_dir.glob("*.parquet"))]


def model_names(config: Config) -> list[str]:
    """Every model a run evaluates, teachers first (a cross-fitted teacher as its copy 0)."""
    return [t.name for t in config.teachers] + ["base"] + [m.name for m, _ in student_variants(config, [])]


def trained_names(config: Config) -> list[str]:
    """Every model a run trains: those it evaluates, then the teachers' other cross-fitted copies."""
    copies = [copy.name for t in config.teachers for copy, _ in cross_fitted(t, config.distill.cross_fit)[1:]]
    return model_names(config) + copies


def evaluate(ctx: RunContext) -> dict[str, Any]:
    """Stage: every model's (and peer's) test metrics, per activity group, into metrics.json."""
    path = ctx.run_dir / "metrics.json"
    if path.is_file():
        return json.loads(path.read_text())
    names = model_names(ctx.config)
    ctx.stage("evaluation")
    log.info("evaluating %d models", len(names))
    exports = {name: ctx.model_dir(name) for name in names}
    evaluation = ctx.config.eval
    metrics, peers, intervals = evaluate_exports(
        exports, ctx.root, evaluation.k, evaluation.batch_size, evaluation.peers, ctx.config.seed, evaluation.bootstrap
    )
    if ctx.config.ablation:
        metrics["causald+crl"] = metrics["student"]  # the configured student is the full method
    groups = activity_groups_of(ctx.manifest, ctx.root)
    out = {
        "models": metrics,
        "peers": peers,
        "ceilings": ceilings(ctx.root, groups, evaluation.k),
        "intervals": intervals,
    }
    atomic_write_json(path, out)
    return out


def write_run_report(ctx: RunContext, metrics: dict[str, Any], seconds: float) -> Path:
    """Stage: report.json, report.md and plots; then the run directory is renamed into place."""
    config, manifest = ctx.config, ctx.manifest
    training = {name: json.loads((ctx.model_dir(name) / TRAINING).read_text()) for name in trained_names(config)}
    counts = interaction_counts(manifest, ctx.root)
    run_info = {
        "id": ctx.run_dir.name.removesuffix(".partial"),
        "config": to_dict(config),
        "dataset": {
            "path": str(ctx.root.resolve()),
            "name": manifest.name,
            "users": manifest.cardinality[USER],
            "items": manifest.cardinality[ITEM],
            "source": manifest.source,
        },
        "rows": {split: manifest.rows.get(split) for split in SPLITS},
        "activity": group_profile(counts, groups_from_counts(counts)),
        "training": training,
        "peers": metrics["peers"],
        "seconds": round(seconds, 1),
        "stages": ctx.stage_seconds(),
        "host": {"cpus": os.cpu_count()},
    }
    report = build_report(run_info, metrics["models"], config.eval.k, metrics.get("ceilings"), metrics.get("intervals"))
    write_report(ctx.run_dir, report)
    final_dir = ctx.run_dir.with_name(run_info["id"])
    os.replace(ctx.run_dir, final_dir)
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


def soft_label_targets(config: Config) -> tuple[str, ...]:
    """The soft labels the run's students read (``student_variants``), so the only ones it scores: the
    configured ``distill.target``, and with ablation both (``kd`` reads the conditional, ``causald`` the
    front-door columns)."""
    return DISTILL_TARGETS if config.ablation else (config.distill.target,)


def _training_summary(metrics: dict[str, object]) -> dict[str, object]:
    keep: tuple[str, ...]
    keep = ("train_loss", "train_bce", "train_kd", "train_mi", "train_critic", "rows", "seconds", "plan")
    keep += ("best_epoch", "stopped_early", "curve", "timers", "nodes")
    return {k: metrics[k] for k in keep if k in metrics}
