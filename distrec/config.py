"""Typed run configuration: a YAML file plus dotted ``key=value`` overrides, echoed into every run.

The dataclasses below are the schema; OmegaConf checks every key and type against them, so a
typo in a YAML file or an override fails before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from distrec.errors import ConfigError


@dataclass
class SynthConfig:
    """Parameters of the embedded synthetic dataset (``distrec.data.synth``)."""

    rows: int = 200_000
    users: int = 2_000
    items: int = 1_000
    days: int = 7
    history_len: int = 20
    confounding: float = 2.0
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


@dataclass
class TrainConfig:
    num_workers: int = 2
    epochs: int = 1
    batch_size: int = 1024
    dense_lr: float = 3e-3
    sparse_lr: float = 0.05
    sparse_optimizer: str = "rowwise_adagrad"  # rowwise_adagrad | adagrad | adam | sgd
    device: str = "cpu"  # cpu (gloo) | cuda (nccl)
    # Allowed TorchRec sharding types; empty: every type the device supports except data_parallel.
    sharding_types: list[str] = field(default_factory=list)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0: at epoch ends only)
    max_failures: int = 1  # worker-group restarts Ray Train allows, each resuming from the last checkpoint


@dataclass
class DistillConfig:
    """CausalD: distil the teachers' front-door estimate into the student."""

    weight: float = 1.0  # lambda
    loss: str = "bce"  # bce | kl (bce takes no temperature: use kl for tau != 1)
    temperature: float = 1.0
    target: str = "front_door"  # front_door | conditional (plain multi-teacher KD, the ablation)
    bank_size: int = 64  # N histories x' for the front-door marginalisation
    score_batch_size: int = 1024
    schedule: str = "constant"  # constant | linear_warmup (lambda ramps from 0 over warmup_steps)
    warmup_steps: int = 0  # training steps of the linear_warmup ramp


@dataclass
class CRLConfig:
    """CRL: penalise the mutual information between the student's representation and C."""

    beta: float = 0.1
    estimator: str = "nce_club"  # nce_club | club
    conditional: bool = False  # I(Z; C | Y) instead of I(Z; C)
    critic_hidden: int = 32
    critic_lr: float = 3e-3
    critic_steps: int = 1  # critic updates (on Z.detach(), own Adam) per training step, before the penalty
    warmup_steps: int = 0  # beta ramps linearly from 0 over this many training steps; 0: no ramp


@dataclass
class EvalConfig:
    k: int = 10
    batch_size: int = 8192


@dataclass
class RayConfig:
    address: str | None = None  # None: start an embedded local Ray
    # Logical CPUs of the embedded Ray: more than the physical cores, so K+1 trainers, the scoring
    # actors and Ray Data's read tasks (which only get CPUs the trainers leave free) all fit.
    num_cpus: int = 16


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
    ray: RayConfig = field(default_factory=RayConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Schema defaults <- YAML file <- ``key=value`` overrides, validated against ``Config``."""
    try:
        merged: DictConfig = OmegaConf.structured(Config)
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"overrides must be key=value, got {bad}")
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(overrides))
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc
    assert isinstance(config, Config)
    check_causal(config.distill, config.crl)
    return config


DISTILL_LOSSES = ("bce", "kl")
DISTILL_TARGETS = ("front_door", "conditional")
DISTILL_SCHEDULES = ("constant", "linear_warmup")
MI_ESTIMATORS = ("nce_club", "club")


def check_causal(distill: DistillConfig, crl: CRLConfig) -> None:
    """Values the types alone do not rule out, in the ``distill`` and ``crl`` sections: ConfigError."""
    errors = []

    def choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
        if value not in allowed:
            errors.append(f"{key} must be one of {list(allowed)}, got {value!r}")

    def at_least(key: str, value: float, low: float, strict: bool = False) -> None:
        if not (value > low if strict else value >= low):  # also rejects NaN
            errors.append(f"{key} must be {'>' if strict else '>='} {low:g}, got {value}")

    choice("distill.loss", distill.loss, DISTILL_LOSSES)
    choice("distill.target", distill.target, DISTILL_TARGETS)
    choice("distill.schedule", distill.schedule, DISTILL_SCHEDULES)
    at_least("distill.weight", distill.weight, 0.0)
    at_least("distill.temperature", distill.temperature, 0.0, strict=True)
    at_least("distill.bank_size", distill.bank_size, 1)
    at_least("distill.score_batch_size", distill.score_batch_size, 1)
    at_least("distill.warmup_steps", distill.warmup_steps, 0)
    if distill.loss == "bce" and distill.temperature != 1.0:
        errors.append(
            f"distill.temperature={distill.temperature} needs distill.loss=kl: the bce loss has no temperature"
        )
    if distill.schedule == "linear_warmup" and distill.warmup_steps < 1:
        errors.append("distill.schedule=linear_warmup needs distill.warmup_steps >= 1")
    if distill.schedule == "constant" and distill.warmup_steps != 0:
        errors.append(f"distill.warmup_steps={distill.warmup_steps} needs distill.schedule=linear_warmup")
    choice("crl.estimator", crl.estimator, MI_ESTIMATORS)
    at_least("crl.beta", crl.beta, 0.0)
    at_least("crl.critic_hidden", crl.critic_hidden, 1)
    at_least("crl.critic_lr", crl.critic_lr, 0.0, strict=True)
    at_least("crl.critic_steps", crl.critic_steps, 1)
    at_least("crl.warmup_steps", crl.warmup_steps, 0)
    if errors:
        raise ConfigError("invalid configuration: " + "; ".join(errors))


def to_dict(config: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(config))  # type: ignore[return-value]


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))
