"""``distrec tune``: a search over training, model and causal settings on Ray Tune, selected on ``valid``.

A trial trains one model (``tune.target``: ``base``, a teacher's name, or ``student``) with the trial's
settings applied as dotted overrides of the run's configuration, and reports the best ``valid`` AUC of
its epochs (the loop's own early stopping and best-epoch selection). Test splits are never read.
For the student, the teachers are trained once, before the trials, in the tuning directory, and so
are the soft labels, which every trial then reads in the same order; a search over what the soft labels
depend on (``SCORING_KEYS``: the bank size and groups, the mediator samples, the target) scores them in
each trial instead.

The search space maps dotted keys to a list (a grid, every value tried) or to one distribution:
``{loguniform: [lo, hi]}``, ``{uniform: [lo, hi]}``, ``{choice: [a, b, ...]}`` (``tune.num_samples``
draws). For the student, ``teachers`` searches K: each option a subset of the run's own teachers (the
student distils only their columns). Results, written into ``<runs_dir>/<run_id>/``:

    tune.json    every trial's settings, best valid AUC and best epoch, ranked
    best.yaml    the run configuration with the best settings applied
    logs/        the libraries' output (Ray Tune's status tables, Ray Train's, the workers'), as a run's

The console shows the stages and the trials done, then the trials ranked (``distrec.console``).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from ray import tune as ray_tune

from distrec.config import Config, to_yaml
from distrec.console import Console
from distrec.errors import ConfigError
from distrec.io import atomic_write_json, atomic_write_text
from distrec.orchestrate.pipeline import (
    RunContext,
    configure_ray_data,
    console_session,
    open_run,
    ray_with_progress,
    score_soft_labels,
    student_variants,
    train_teachers,
)
from distrec.orchestrate.trainers import fit
from distrec.train.loop import WorkerTask

DISTRIBUTIONS = ("loguniform", "uniform", "choice")
# what the soft labels depend on (the run scores only its distill.target's)
SCORING_KEYS = ("distill.bank_size", "distill.bank_groups", "distill.mediator_samples", "distill.target")


def with_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """``config`` with dotted-key overrides applied and validated as ``load_config`` validates them."""
    from distrec.config import check

    merged = OmegaConf.merge(
        OmegaConf.structured(config), OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()])
    )
    out = OmegaConf.to_object(merged)
    assert isinstance(out, Config)
    check(out)
    return out


def param_space(space: dict[str, Any]) -> dict[str, Any]:
    """Ray Tune's search space from the config's ``tune.space``; ConfigError on a malformed entry."""
    out: dict[str, Any] = {}
    for key, spec in space.items():
        if isinstance(spec, list):
            out[key] = ray_tune.grid_search(spec)
        elif isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS:
            kind, args = next(iter(spec.items()))
            out[key] = ray_tune.choice(list(args)) if kind == "choice" else getattr(ray_tune, kind)(*args)
        else:
            raise ConfigError(f"tune.space.{key} must be a list (grid) or one of {list(DISTRIBUTIONS)}, got {spec!r}")
    return out


def check_target(config: Config) -> None:
    targets = ["base", "student", *(t.name for t in config.teachers)]
    if config.tune.target not in targets:
        raise ConfigError(f"tune.target must be one of {targets}, got {config.tune.target!r}")
    if "teachers" in config.tune.space:
        check_teacher_subsets(config)


def check_teacher_subsets(config: Config) -> None:
    """A search over K (``tune.space.teachers``) chooses among the run's own teachers, which are trained
    and scored once before the trials: each option is a non-empty list of them, for the student."""
    options = config.tune.space["teachers"]
    run_teachers = {t.name: t for t in config.teachers}
    if config.tune.target != "student":
        raise ConfigError("tune.space.teachers (a search over K) needs tune.target=student")
    if not isinstance(options, list) or not all(isinstance(o, list) and o for o in options):
        raise ConfigError("tune.space.teachers must be a list of non-empty lists of the run's teachers")
    for option in options:
        for teacher in option:
            name = teacher.get("name") if isinstance(teacher, dict) else None
            if (
                name not in run_teachers
                or with_overrides(config, {"teachers": [teacher]}).teachers[0] != run_teachers[name]
            ):
                raise ConfigError(
                    f"tune.space.teachers: {teacher!r} is not one of the run's teachers {list(run_teachers)} as "
                    "configured; a search over K chooses subsets of them"
                )


def _trial_task(config: Config, ctx: RunContext, soft_labels: list[str] | None) -> WorkerTask:
    """The WorkerTask of the model being tuned (``check_target`` has passed), under ``config``."""
    target = config.tune.target
    if target == "base":
        return ctx.task(replace(config.student, name="base"), config.seed, config.train)
    if target == "student":
        model, extra = student_variants(config, [t.name for t in config.teachers])[-1]
        return ctx.task(model, config.seed, config.train, train_files=soft_labels, **extra)
    i, teacher = next((i, t) for i, t in enumerate(config.teachers) if t.name == target)
    return ctx.task(teacher, config.seed + i, config.train)


def trial_count(config: Config) -> int:
    """How many trials ``tune.space`` makes: every grid point ``tune.num_samples`` times."""
    grid = math.prod(len(spec) for spec in config.tune.space.values() if isinstance(spec, list))
    return grid * config.tune.num_samples


class TrialProgress(ray_tune.Callback):
    """The search's progress on the console (Ray Tune's own status tables go to RUN_DIR/logs)."""

    def __init__(self, console: Console, total: int) -> None:
        self.console: Console | None = console
        self.total, self.done = total, 0
        self.best: tuple[float, dict[str, Any]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Ray Tune pickles its run configuration (to restore an experiment); the console stays here."""
        return {**self.__dict__, "console": None}

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if self.console is None:
            return
        self.done += 1
        auc = (trial.last_result or {}).get("valid_auc")
        if auc is not None and math.isfinite(auc) and (self.best is None or auc > self.best[0]):
            self.best = (auc, trial.config)
        best = "" if self.best is None else f", best valid AUC {self.best[0]:.4f} at {json.dumps(self.best[1])}"
        self.console.advance(f"{self.done}/{self.total} trials done{best}")


def tune(config: Config, console: Console | None = None) -> Path:
    """Run the search; returns the finished tuning directory. A ``console`` shows the stages (the
    teachers' training for a student search, then the trials), with the libraries' output in RUN_DIR/logs."""
    if not config.tune.space:
        raise ConfigError(
            "tune.space is empty: give the settings to search, e.g. tune.space={train.sparse_lr: [0.05, 0.1]}"
        )
    space = param_space(dict(config.tune.space))
    check_target(config)
    started = time.perf_counter()
    ctx = open_run(config)
    # Ray Tune runs each trial in a working directory of its own: the trials need absolute paths
    ctx = replace(ctx, run_dir=ctx.run_dir.resolve(), root=ctx.root.resolve(), console=console)
    rescore = config.tune.target == "student" and any(key in SCORING_KEYS for key in space)
    with console_session(ctx), ray_with_progress(ctx):
        soft_labels = None
        if config.tune.target == "student":
            train_teachers(ctx)
            soft_labels = None if rescore else score_soft_labels(ctx)
        ctx.stage("trials")
        # what the trials (in Ray Tune's actors) see of the run: not the console, which stays in this
        # process, nor its progress board
        shared = replace(ctx, console=None, progress=None)

        def trial(params: dict[str, Any]) -> None:
            trial_config = with_overrides(config, params)
            trial_dir = shared.run_dir / "trials" / ray_tune.get_context().get_trial_id()
            labels = soft_labels
            if rescore:  # this trial's soft labels, from the teachers trained above, into its own directory
                configure_ray_data(trial_config.ray)
                trial_dir.mkdir(parents=True, exist_ok=True)
                own = replace(shared, config=trial_config, run_dir=trial_dir, models=shared.run_dir / "models")
                labels = score_soft_labels(own)
            trained = fit(_trial_task(trial_config, shared, labels), str(trial_dir.resolve()))
            curve = trained.metrics.get("curve") or []
            best = max(curve, key=lambda p: p["valid_auc"]) if curve else {"valid_auc": float("nan"), "epoch": -1}
            ray_tune.report({"valid_auc": best["valid_auc"], "best_epoch": best["epoch"]})

        tuner = ray_tune.Tuner(
            trial,
            param_space=space,
            tune_config=ray_tune.TuneConfig(
                metric="valid_auc",
                mode="max",
                num_samples=config.tune.num_samples,
                max_concurrent_trials=config.tune.max_concurrent_trials,
            ),
            run_config=ray_tune.RunConfig(
                storage_path=str((ctx.run_dir / "tune").resolve()),
                name="search",
                callbacks=[TrialProgress(console, trial_count(config))] if console is not None else None,
            ),
        )
        results = tuner.fit()
    trials = []
    for result in results:  # type: ignore[attr-defined]  # ResultGrid iterates by __getitem__; mypy needs __iter__
        if result.error is not None:
            raise RuntimeError(f"a tuning trial failed: {result.error}")
        params = {k: result.config[k] for k in space}
        trials.append(
            {"params": params, "valid_auc": result.metrics["valid_auc"], "best_epoch": result.metrics["best_epoch"]}
        )
    trials.sort(key=lambda t: -t["valid_auc"])
    best = trials[0]
    atomic_write_json(
        ctx.run_dir / "tune.json",
        {
            "target": config.tune.target,
            "metric": "valid_auc",
            "trials": trials,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    atomic_write_text(ctx.run_dir / "best.yaml", to_yaml(with_overrides(config, best["params"])))
    final = ctx.run_dir.with_name(ctx.run_dir.name.removesuffix(".partial"))
    os.replace(ctx.run_dir, final)
    return final
