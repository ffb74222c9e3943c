"""Typed run configuration: a YAML file plus dotted ``key=value`` overrides, echoed into every run.

The dataclasses below are the schema; OmegaConf checks every key and type against them, so a
typo in a YAML file or an override fails before any work starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from distrec.errors import ConfigError


@dataclass
class SynthConfig:
    """Parameters of the embedded synthetic dataset (``distrec.data.synth``)."""

    # ~350 training rows per user: enough for an 8-dimensional preference to be learnt (at 200k rows
    # and 2,000 users every model stayed at the bias-only AUC; docs/results.md)
    rows: int = 300_000
    users: int = 600
    items: int = 400
    days: int = 7
    history_len: int = 20
    confounding: float = 2.0  # how strongly the session confounder steers which tag sign is shown
    activity: float = 1.0  # lognormal sd of user activity (0: every user equally active)
    random_fraction: float = 0.05
    seed: int = 0


@dataclass
class DataConfig:
    path: str | None = None  # a dataset directory (`distrec data import`); None: the synthetic default
    cache_dir: str = "data"  # where the synthetic default is generated once and reused
    synth: SynthConfig = field(default_factory=SynthConfig)
    validate: bool = True  # check every value of every file before training


@dataclass
class ModelConfig:
    name: str = "student"
    arch: str = "mlp"  # deepfm | dcn | mlp
    dim: int = 16
    hidden: list[int] = field(default_factory=lambda: [64, 32])
    bootstrap: bool = False  # Poisson(1) row weights: an online bootstrap sample of the logs
    # Embedding table rows per sparse feature (default: its id cardinality); fewer rows hash the ids.
    table_rows: dict[str, int] = field(default_factory=dict)
    # A model export directory (models/<name>/ of an earlier run) to start from: a warm start,
    # from any world size or sharding plan. A checkpoint of the same run takes precedence.
    warm_start: str | None = None
    # Dropout on the mediator m = g(x) in training: a stochastic mediator, so P(m | x) has support and a
    # teacher's head is trained on the pairs the front-door scorer asks it about (distill.mediator_samples)
    mediator_dropout: float = 0.0


@dataclass
class TrainConfig:
    num_workers: int = 2
    epochs: int = 8  # at most; the export kept is the best epoch on valid (select_best)
    batch_size: int = 1024  # per worker
    dense_lr: float = 3e-3
    # Row-wise Adagrad at 0.1 reaches 0.816 test AUC on 2M synthetic rows where 0.05 stops at 0.80
    # after 2 epochs (docs/results.md); fbgemm's CPU kernels support rowwise_adagrad, adagrad and sgd.
    sparse_lr: float = 0.1
    sparse_optimizer: str = "rowwise_adagrad"  # rowwise_adagrad | adagrad | sgd (| adam on cuda)
    lr_schedule: str = "cosine"  # constant | cosine | linear: decay over the planned epochs after warm-up
    warmup_steps: int = 50  # linear learning-rate warm-up, in steps
    min_lr_ratio: float = 0.1  # the decayed learning rate at the last planned step, relative to the peak
    patience: int = 2  # stop after this many epochs without a better valid AUC (0: never stop early)
    select_best: bool = True  # keep the export of the best epoch on valid (False: of the last epoch)
    # The split each epoch is validated on (best epoch, early stopping, ``distrec tune``'s objective):
    # valid (the logging policy), valid_random (uniformly random exposure, where the dataset has it) or
    # valid_do (the synthetic SCM's history set by intervention). Only valid_random can show a gain under an
    # exposure shift, so it is the one to tune CRL on; only valid_do rewards the front-door target, CausalD's.
    valid_split: str = "valid"
    device: str = "cpu"  # cpu (gloo) | cuda (nccl)
    # Allowed TorchRec sharding types; empty: every type the device supports except data_parallel.
    sharding_types: list[str] = field(default_factory=list)
    # With several workers, tables smaller than this many MiB are replicated (data_parallel) instead:
    # no all-to-all for their lookups. 0: every table sharded. Exclusive with sharding_types.
    replicate_below_mib: float = 0.0
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0: at epoch ends only)
    max_failures: int = 1  # worker-group restarts Ray Train allows, each resuming from the last checkpoint
    # Ray placement of each model's workers (ScalingConfig.placement_strategy): PACK (as few nodes as fit),
    # SPREAD (as many as possible), STRICT_PACK (one node), STRICT_SPREAD (one worker per node)
    placement_strategy: str = "PACK"
    # Seconds a collective waits for its peers, on the training process group (TorchConfig(timeout_s)) and
    # on the gloo side group: a hung or lost peer fails the group after this long, not torch's 30 minutes
    collective_timeout_s: int = 600
    # Seconds between Ray Train's controller polls of the workers (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 by
    # default): a worker's next ray.train.report waits for the poll that collects the previous one, so at
    # 2 s every epoch's checkpoint cost 1-2 s (benchmarks: 6 reports took 22.9 s at 2, 9.9 s at 0.2)
    controller_poll_s: float = 0.25


@dataclass
class DistillConfig:
    """CausalD: distil the teachers' front-door estimate into the student.

    lambda 0.3: the best of {0.1, 0.3, 1} x crl.beta {1, 2, 3} for the student on the synthetic default's
    random-exposure validation split (``distrec tune ... tune.target=student train.valid_split=valid_random``,
    seed 0; docs/results.md). The front-door labels average the user confounder out, which the exposure
    shift rewards keeping, so a lighter distillation serves the student's objective there. CausalD alone
    (``crl.beta=0``) chose lambda 3 on ``valid_do``, the split on which the front-door target is the Bayes
    predictor (``train.valid_split=valid_do``; docs/results.md, session 21).
    """

    weight: float = 0.3  # lambda
    loss: str = "bce"  # bce | kl (bce takes no temperature: use kl for tau != 1)
    temperature: float = 1.0
    target: str = "front_door"  # front_door | conditional (plain multi-teacher KD, the ablation)
    bank_size: int = 64  # N histories x' for the front-door marginalisation
    # G > 1: the bank is split at random into G equal groups and each chunk of rows (256) is scored against
    # one group drawn uniformly, N/G pairs a row instead of N: G times cheaper, unbiased for the front-door
    # probability (so for the bce loss's gradient); with loss=kl at a temperature other than 1 the tempered
    # target is a non-linear function of it, so that target is biased (and more so the larger G)
    bank_groups: int = 1
    # precompute: the Ray Data scoring stream is written once to Parquet (bounded memory) and every student
    # reads it like base reads the logs; stream: the student consumes the live stream, scored every epoch;
    # inline: each training rank scores the rows it reads with every teacher, in its own process, every
    # epoch (no scorer actors, object store or Ray Data: the scoring scales with the ranks)
    soft_labels: str = "precompute"
    score_batch_size: int = 4096
    schedule: str = "constant"  # constant | linear_warmup (lambda ramps from 0 over warmup_steps)
    warmup_steps: int = 0  # training steps of the linear_warmup ramp
    # Mediator samples m ~ P(m | x) per teacher and row (dropout masks on g(x); needs every teacher's
    # mediator_dropout > 0): the sum over m of the front-door formula, estimated by S samples per teacher
    mediator_samples: int = 1
    # The scoring stage: its actors per teacher (each actor holds every teacher) and the CPUs (and torch
    # threads) of each
    scorers_per_teacher: int = 1
    scorer_cpus: float = 1.0
    # Cross-fitting, F >= 2 folds (0: off): each teacher trains as F copies, copy f giving weight 0 to the rows
    # of fold f (a hash of the row's user-item pair, ``distrec.train.feed.pair_folds``), and each row's soft
    # labels come from the copy that never trained on its pair, so they do not echo the row's own label.
    # Copy 0 keeps the teacher's name (models/<teacher>/, evaluated as the teacher); copy f is <teacher>__fold<f>.
    cross_fit: int = 0


@dataclass
class CRLConfig:
    """CRL: penalise the mutual information between the student's representation and C.

    beta 1 on the score: the best of beta in {0.1, 0.3, 1, 3} x both representations on the synthetic
    default's random-exposure validation split (``distrec tune ... train.valid_split=valid_random``,
    the student, seed 0; docs/results.md), and again of {0.5, 1, 2} for crl at the chosen critic
    (critic_lr 3e-2; session 13). Choosing on ``valid`` would always pick beta 0: the logging policy's
    own split rewards the confounded fit.
    """

    beta: float = 1.0
    estimator: str = "nce_club"  # nce_club | club
    conditional: bool = False  # I(Z; C | Y) instead of I(Z; C)
    # Z: "penultimate", the model's representation (the 'mlp' architecture's read-out input), or "score",
    # its 1-d logit (any architecture). A wide Z can hide the exposure from the critic while the
    # read-out still uses it (docs/results.md: train_mi fell to 0 at beta 1 and nothing changed); the
    # score has nowhere to hide it. The do-predictor's score is independent of C when what C steers the
    # exposure by is unrelated to preference (the synthetic SCM's item sign); where C picks better items
    # (a position), penalising the score would remove real signal: use penultimate there.
    representation: str = "score"
    critic_hidden: int = 32
    # The critic must track Z: tests/test_objective.py's known-answer case works at 3x the encoder's
    # learning rate with 2 critic steps, and stops working at 1x (``check_crl``). On the synthetic default at
    # dense_lr 1e-3, valid_random chose 3e-2 (0.7452 against 0.7383 here; docs/results.md), which its results
    # pass as an override; the default stays 1e-2: at 3e-2 the nightly test's warm-started challenger, on its
    # tiny day, failed the tail-user gate (q1 AUC 0.66 against the champion's 0.71)
    critic_lr: float = 1e-2
    # A logit offset per confounder value, added to the label loss's logit in training only
    # (distrec.train.objective.ConfounderBias): C's own effect on clicks is fitted beside the score, not
    # through it, and the served model scores without it. Part of CRL: off at beta 0. Chosen on the
    # synthetic default's valid_random (seed 0, session 16): crl 0.7472 with it against 0.7452 without, the
    # student 0.7477 against 0.7462
    confounder_bias: bool = True
    critic_steps: int = 2  # critic updates (on Z.detach(), own Adam) per training step, before the penalty
    warmup_steps: int = 0  # beta ramps linearly from 0 over this many training steps; 0: no ramp
    # The dataset's confounder columns C to penalise (empty: all of them). Name only exposure columns whose
    # dependence on Z is spurious: a policy column that marks a uniform-random slice, which shows unpopular
    # items more often, would also make the penalty remove item popularity, a real effect
    confounders: list[str] = field(default_factory=list)


@dataclass
class EvalConfig:
    k: int = 10
    batch_size: int = 8192
    # Plain PyTorch peers trained and reported beside the models (distrec.eval.peers): [] or [mf]
    peers: list[str] = field(default_factory=list)
    # Resamples of the paired user bootstrap behind the headline's intervals (student - base); 0: none
    bootstrap: int = 200


@dataclass
class TuneConfig:
    """``distrec tune``: which model to tune and over what (distrec.orchestrate.tune)."""

    target: str = "base"  # base | student | a teacher's name
    # dotted key -> a list (grid) or {loguniform|uniform: [lo, hi]} / {choice: [...]}
    space: dict[str, Any] = field(default_factory=dict)
    num_samples: int = 1  # draws of the distributions (each grid point num_samples times)
    max_concurrent_trials: int = 2


@dataclass
class RayConfig:
    address: str | None = None  # None: start an embedded local Ray
    # Logical CPUs of the embedded Ray: more than the physical cores, so K+1 trainers, the scoring
    # actors and Ray Data's read tasks (which only get CPUs the trainers leave free) all fit.
    num_cpus: int = 16
    # The embedded Ray's object store (MiB). Ray's default is 30% of RAM, and a stream touches new pages of
    # it as it goes (its objects land at new offsets), so peak memory grew with the log, not with what was
    # in flight: 1,050 of 3,432 MiB PSS on a 10M-row stream were store pages (benchmarks (e)). Ray Data
    # sizes its in-flight budget from the store, so a smaller store bounds the stream, not its throughput.
    object_store_mib: int = 512
    # Ray Data's largest block (MiB; Ray's default is 128): a read task builds up to this much of a file in
    # its heap before handing it to the object store. A 10M-row stream of 1M-row files peaked at 2,715 MiB PSS
    # with 16 against 2,819-2,889 with 128, and ran at 190k rows/s against 177-181k (benchmarks (e))
    data_block_mib: int = 16


@dataclass
class RegistryConfig:
    """The MLflow tracking store and model registry (``distrec.nightly.registry``)."""

    # None: the embedded default, sqlite:///<runs_dir>/registry/mlflow.db with artifacts beside it;
    # or any MLflow tracking URI (http://mlflow:5000 for a server)
    uri: str | None = None
    model_name: str = "distrec"
    experiment: str = "distrec"
    log_runs: bool = False  # also record every `distrec run` as an MLflow run


@dataclass
class GateConfig:
    """One promotion gate on a metric of the challenger on the held-out day (``distrec.nightly.gates``)."""

    metric: str = "test_id.auc"  # a dotted path into the model's metrics, e.g. test_id.groups.q1.auc
    floor: float | None = None  # absolute bound: at least this (higher_is_better), else at most this
    tolerance: float = 0.0  # how much worse than the champion the challenger may be (>= 0)
    higher_is_better: bool = True


@dataclass
class NightlyConfig:
    """``distrec nightly``: data checks, window, warm start and gates (``distrec.nightly.job``)."""

    window_days: int = 3  # train on the days [date - window_days, date - 1]; ``date`` is held out
    first_night: str = "cold_start"  # no champion yet: cold_start (floors only) | refuse
    # A night with a champion continues from its exports; false retrains from scratch every night (for
    # train.epochs), still gated against the champion: a periodic full retrain, or a warm start's baseline.
    warm_start: bool = True
    warm_epochs: int = 0  # train.epochs of a warm-started night (0: train.epochs)
    model: str = "student"  # the model that is gated and served; every export is registered with it
    median_days: int = 7  # the trailing days whose median row count bounds the date's
    min_rows_ratio: float = 0.5  # the date's rows must be within [min, max] x that median
    max_rows_ratio: float = 2.0
    min_label_rate: float = 0.001
    max_label_rate: float = 0.9
    # Against the champion, AUC and log-loss gates compare a paired bootstrap interval of challenger - champion
    # over the held-out day's users (gate_resamples draws, at gate_level), failing only when all of it lies
    # beyond the tolerance; 0: compare the two point values (distrec.nightly.gates)
    gate_resamples: int = 200
    gate_level: float = 0.95
    gates: list[GateConfig] = field(
        default_factory=lambda: [
            GateConfig("test_id.auc", floor=0.55, tolerance=0.01),
            GateConfig("test_id.logloss", floor=0.69, tolerance=0.01, higher_is_better=False),
            GateConfig("test_id.groups.q1.auc", floor=0.5, tolerance=0.02),
            GateConfig("test_ood.auc", floor=0.5, tolerance=0.02),
        ]
    )


@dataclass
class Config:
    seed: int = 0
    runs_dir: str = "runs"
    run_id: str | None = None
    # Also train the ablation students kd, causald and crl next to base and the student (causald+crl).
    ablation: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    teachers: list[ModelConfig] = field(
        default_factory=lambda: [ModelConfig(name="deepfm", arch="deepfm"), ModelConfig(name="dcn", arch="dcn")]
    )
    student: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    crl: CRLConfig = field(default_factory=CRLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    nightly: NightlyConfig = field(default_factory=NightlyConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Schema defaults <- YAML file <- ``key=value`` overrides, validated against ``Config``."""
    try:
        merged: DictConfig = OmegaConf.structured(Config)
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            merged = cast(DictConfig, OmegaConf.merge(merged, _load_yaml(path)))  # merged onto a DictConfig
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"overrides must be key=value, got {bad}")
            merged = cast(DictConfig, OmegaConf.merge(merged, OmegaConf.from_dotlist(overrides)))
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc
    assert isinstance(config, Config)
    check(config)
    return config


def _load_yaml(path: Path) -> DictConfig:
    """A YAML config file that must hold a mapping of keys: ConfigError naming the file otherwise."""
    try:
        loaded = OmegaConf.load(path)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable YAML file: {' '.join(str(exc).split())}") from exc
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: the config must be a YAML mapping of keys (train: ..., data: ...), not a list")
    return loaded


def check(config: Config) -> None:
    """Every check the types alone cannot express, over the whole config in one pass: one ConfigError
    that lists every problem, so a config is fixed in one round (as torchtune's recipes validate)."""
    errors = Errors()
    check_root(config, errors)
    for i, teacher in enumerate(config.teachers):
        check_model(f"teachers[{i}]", teacher, errors)
    check_model("student", config.student, errors)
    check_train(config.train, errors)
    check_causal(config.distill, config.crl, errors)
    if config.distill.mediator_samples > 1:
        fixed = [t.name for t in config.teachers if not t.mediator_dropout > 0]
        if fixed:
            errors.add(
                f"distill.mediator_samples={config.distill.mediator_samples} needs mediator_dropout > 0 on every "
                f"teacher (a deterministic mediator gives identical samples): not on {fixed}"
            )
    check_cross_fit_names(config, errors)
    if config.crl.beta > 0 and not config.crl.critic_lr > config.train.dense_lr:
        errors.add(
            f"crl.critic_lr={config.crl.critic_lr} must exceed train.dense_lr={config.train.dense_lr}: "
            "a critic that learns no faster than the representation cannot track it"
        )
    check_data(config.data, errors)
    check_eval(config.eval, config.tune, config.ray, errors)
    check_nightly(config.nightly, errors)
    errors.raise_if_any()


class Errors:
    """The problems found so far, with the checks that find them; every failed check is kept."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def add(self, message: str) -> None:
        self.found.append(message)

    def choice(self, key: str, value: object, allowed: Sequence[object], where: str = "") -> None:
        if value not in allowed:
            self.add(f"{key} must be one of {list(allowed)}{where}, got {value!r}")

    def at_least(self, key: str, value: float, low: float, strict: bool = False) -> None:
        """``value >= low`` (``> low`` if strict) and finite; NaN and infinity fail too."""
        if not (math.isfinite(value) and (value > low if strict else value >= low)):
            self.add(f"{key} must be {'>' if strict else '>='} {low:g}, got {value}")

    def within(self, key: str, value: float, low: float, high: float) -> None:
        if not low <= value <= high:  # also rejects NaN
            self.add(f"{key} must be in [{low:g}, {high:g}], got {value}")

    def raise_if_any(self) -> None:
        if self.found:
            count = f"{len(self.found)} problem{'s' if len(self.found) > 1 else ''}"
            raise ConfigError(f"invalid configuration ({count}):\n  " + "\n  ".join(self.found))


# Names of the models a run trains besides its teachers (and of the peers, distrec.eval.peers.PEERS).
RESERVED_NAMES = ("student", "base", "kd", "causald", "crl", "causald+crl")


def _plain_name(name: str) -> bool:
    """A name that is one path component: run ids and model names become directories."""
    return bool(name) and name not in (".", "..") and Path(name).name == name


def check_root(config: Config, errors: Errors) -> None:
    """Top-level keys and the model names a run reserves for itself."""
    from distrec.eval.peers import PEERS

    if not config.runs_dir:
        errors.add("runs_dir must not be empty")
    if config.run_id is not None and not _plain_name(config.run_id):
        errors.add(f"run_id must be a plain directory name (no '/', not '..'), got {config.run_id!r}")
    names = [t.name for t in config.teachers]
    if not names:
        errors.add("at least one teacher is needed (teachers: [...])")
    reserved = (*RESERVED_NAMES, *PEERS)
    if clashes := sorted({n for n in names if names.count(n) > 1 or n in reserved}):
        errors.add(f"teacher names must be unique and not {list(reserved)}: {clashes}")
    if config.student.name in names:
        errors.add(f"student.name {config.student.name!r} is also a teacher's name")


def cross_fit_copy(teacher: str, fold: int) -> str:
    """The model name of a cross-fitted teacher's copy that holds out ``fold``; copy 0 is the teacher itself."""
    return f"{teacher}__fold{fold}" if fold else teacher


def check_cross_fit_names(config: Config, errors: Errors) -> None:
    """The copies ``distill.cross_fit`` adds must not take the name of another model."""
    from distrec.eval.peers import PEERS

    names = [t.name for t in config.teachers]
    copies = {cross_fit_copy(name, k) for name in names for k in range(1, config.distill.cross_fit)}
    if clashes := sorted(copies & {*names, config.student.name, *RESERVED_NAMES, *PEERS}):
        errors.add(f"distill.cross_fit={config.distill.cross_fit} names teacher copies {clashes}, as other models are")


def check_model(key: str, model: ModelConfig, errors: Errors) -> None:
    from distrec.models.architectures import ARCHITECTURES

    if not _plain_name(model.name):
        errors.add(f"{key}.name must be a plain directory name (no '/', not '..'), got {model.name!r}")
    errors.choice(f"{key}.arch", model.arch, list(ARCHITECTURES))
    errors.at_least(f"{key}.dim", model.dim, 1)
    for j, width in enumerate(model.hidden):
        errors.at_least(f"{key}.hidden[{j}]", width, 1)
    for feature, rows in model.table_rows.items():
        errors.at_least(f"{key}.table_rows.{feature}", rows, 1)
    if not 0.0 <= model.mediator_dropout < 1.0:  # also rejects NaN
        errors.add(f"{key}.mediator_dropout must be in [0, 1), got {model.mediator_dropout}")


SPARSE_OPTIMIZERS = {
    "cpu": ("rowwise_adagrad", "adagrad", "sgd"),
    "cuda": ("rowwise_adagrad", "adagrad", "sgd", "adam"),
}


# Ray placement-group strategies (ray.util.placement_group)
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
VALID_SPLITS = ("valid", "valid_random", "valid_do")  # never a test split


def check_train(train: TrainConfig, errors: Errors) -> None:
    """The ``train`` section; sharding types are TorchRec's own ``ShardingType`` values."""
    from distrec.train.schedule import LR_SCHEDULES

    errors.choice("train.device", train.device, list(SPARSE_OPTIMIZERS))
    if train.device in SPARSE_OPTIMIZERS:
        where = f" on {train.device} (fbgemm's kernels)"
        errors.choice("train.sparse_optimizer", train.sparse_optimizer, SPARSE_OPTIMIZERS[train.device], where)
    errors.choice("train.lr_schedule", train.lr_schedule, LR_SCHEDULES)
    if train.sharding_types:  # which of them a device supports is checked where the device is known
        from torchrec.distributed.types import ShardingType

        for name in train.sharding_types:
            errors.choice("train.sharding_types[]", name, [t.value for t in ShardingType], " (torchrec's ShardingType)")
    for key in ("num_workers", "epochs", "batch_size"):
        errors.at_least(f"train.{key}", getattr(train, key), 1)
    for key in ("warmup_steps", "patience", "checkpoint_every", "max_failures", "gpus_per_worker"):
        errors.at_least(f"train.{key}", getattr(train, key), 0)
    errors.at_least("train.replicate_below_mib", train.replicate_below_mib, 0)
    if train.replicate_below_mib > 0 and train.sharding_types:
        errors.add(
            "train.replicate_below_mib and train.sharding_types are exclusive: set the types, or let small "
            "tables be replicated and the rest sharded"
        )
    for key in ("dense_lr", "sparse_lr", "cpus_per_worker"):
        errors.at_least(f"train.{key}", getattr(train, key), 0, strict=True)
    errors.within("train.min_lr_ratio", train.min_lr_ratio, 0.0, 1.0)
    errors.choice("train.placement_strategy", train.placement_strategy, PLACEMENT_STRATEGIES)
    errors.choice("train.valid_split", train.valid_split, VALID_SPLITS)
    errors.at_least("train.collective_timeout_s", train.collective_timeout_s, 0, strict=True)
    errors.at_least("train.controller_poll_s", train.controller_poll_s, 0, strict=True)


DISTILL_LOSSES = ("bce", "kl")
DISTILL_TARGETS = ("front_door", "conditional")
DISTILL_SCHEDULES = ("constant", "linear_warmup")
SOFT_LABEL_MODES = ("precompute", "stream", "inline")
MI_ESTIMATORS = ("nce_club", "club")
CRL_REPRESENTATIONS = ("penultimate", "score")


def check_causal(distill: DistillConfig, crl: CRLConfig, errors: Errors) -> None:
    """The ``distill`` and ``crl`` sections."""
    errors.choice("distill.loss", distill.loss, DISTILL_LOSSES)
    errors.choice("distill.target", distill.target, DISTILL_TARGETS)
    errors.choice("distill.schedule", distill.schedule, DISTILL_SCHEDULES)
    errors.choice("distill.soft_labels", distill.soft_labels, SOFT_LABEL_MODES)
    errors.at_least("distill.weight", distill.weight, 0)
    errors.at_least("distill.temperature", distill.temperature, 0, strict=True)
    errors.at_least("distill.bank_size", distill.bank_size, 1)
    errors.at_least("distill.bank_groups", distill.bank_groups, 1)
    if distill.bank_groups > 1 and distill.bank_size % distill.bank_groups:
        errors.add(f"distill.bank_groups={distill.bank_groups} must divide distill.bank_size={distill.bank_size}")
    errors.at_least("distill.score_batch_size", distill.score_batch_size, 1)
    errors.at_least("distill.warmup_steps", distill.warmup_steps, 0)
    errors.at_least("distill.mediator_samples", distill.mediator_samples, 1)
    errors.at_least("distill.scorers_per_teacher", distill.scorers_per_teacher, 1)
    errors.at_least("distill.scorer_cpus", distill.scorer_cpus, 0, strict=True)
    if distill.cross_fit < 0 or distill.cross_fit == 1:  # one fold would hold out every row
        errors.add(f"distill.cross_fit must be 0 (off) or a number of folds >= 2, got {distill.cross_fit}")
    if distill.loss == "bce" and distill.temperature != 1.0:
        errors.add(f"distill.temperature={distill.temperature} needs distill.loss=kl: the bce loss has no temperature")
    if distill.schedule == "linear_warmup" and distill.warmup_steps < 1:
        errors.add("distill.schedule=linear_warmup needs distill.warmup_steps >= 1")
    if distill.schedule == "constant" and distill.warmup_steps != 0:
        errors.add(f"distill.warmup_steps={distill.warmup_steps} needs distill.schedule=linear_warmup")
    errors.choice("crl.estimator", crl.estimator, MI_ESTIMATORS)
    errors.choice("crl.representation", crl.representation, CRL_REPRESENTATIONS)
    errors.at_least("crl.beta", crl.beta, 0)
    errors.at_least("crl.critic_hidden", crl.critic_hidden, 1)
    errors.at_least("crl.critic_lr", crl.critic_lr, 0, strict=True)
    errors.at_least("crl.critic_steps", crl.critic_steps, 1)
    errors.at_least("crl.warmup_steps", crl.warmup_steps, 0)


def check_data(data: DataConfig, errors: Errors) -> None:
    """The ``data`` section; the dataset's files are checked later, before Ray starts (``open_run``)."""
    if data.path is not None and not data.path:
        errors.add("data.path must be a dataset directory or null (the synthetic default)")
    synth = data.synth
    for key in ("rows", "users", "items", "days"):
        errors.at_least(f"data.synth.{key}", getattr(synth, key), 1)
    errors.at_least("data.synth.history_len", synth.history_len, 0)
    errors.at_least("data.synth.confounding", synth.confounding, 0)
    errors.at_least("data.synth.activity", synth.activity, 0)
    errors.within("data.synth.random_fraction", synth.random_fraction, 0.0, 1.0)


def check_eval(evaluation: EvalConfig, tune: TuneConfig, ray: RayConfig, errors: Errors) -> None:
    """The ``eval``, ``tune`` and ``ray`` sections (``tune.target`` and ``tune.space`` are ``distrec tune``'s)."""
    from distrec.eval.peers import PEERS

    errors.at_least("eval.k", evaluation.k, 1)
    errors.at_least("eval.batch_size", evaluation.batch_size, 1)
    errors.at_least("eval.bootstrap", evaluation.bootstrap, 0)
    for peer in evaluation.peers:
        errors.choice("eval.peers[]", peer, PEERS)
    errors.at_least("tune.num_samples", tune.num_samples, 1)
    errors.at_least("tune.max_concurrent_trials", tune.max_concurrent_trials, 1)
    errors.at_least("ray.num_cpus", ray.num_cpus, 1)
    errors.at_least("ray.object_store_mib", ray.object_store_mib, 100)
    errors.at_least("ray.data_block_mib", ray.data_block_mib, 1)


FIRST_NIGHT = ("cold_start", "refuse")


def check_nightly(nightly: NightlyConfig, errors: Errors) -> None:
    errors.at_least("nightly.window_days", nightly.window_days, 1)
    errors.at_least("nightly.warm_epochs", nightly.warm_epochs, 0)
    errors.at_least("nightly.median_days", nightly.median_days, 1)
    errors.choice("nightly.first_night", nightly.first_night, FIRST_NIGHT)
    errors.at_least("nightly.min_rows_ratio", nightly.min_rows_ratio, 0.0)
    if not nightly.max_rows_ratio >= nightly.min_rows_ratio:
        errors.add(f"nightly.max_rows_ratio={nightly.max_rows_ratio} must be >= min_rows_ratio")
    errors.within("nightly.min_label_rate", nightly.min_label_rate, 0.0, 1.0)
    errors.within("nightly.max_label_rate", nightly.max_label_rate, nightly.min_label_rate, 1.0)
    errors.at_least("nightly.gate_resamples", nightly.gate_resamples, 0)
    if not 0.0 < nightly.gate_level < 1.0:  # also rejects NaN
        errors.add(f"nightly.gate_level must be in (0, 1), got {nightly.gate_level}")
    for i, gate in enumerate(nightly.gates):
        errors.at_least(f"nightly.gates[{i}].tolerance", gate.tolerance, 0.0)
        if gate.metric.split(".")[0] not in ("test_id", "test_ood"):
            errors.add(f"nightly.gates[{i}].metric must start with test_id. or test_ood., got {gate.metric!r}")


def to_dict(config: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(config))  # type: ignore[return-value]


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))
