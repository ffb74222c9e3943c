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


@dataclass
class DistillConfig:
    """CausalD: distil the teachers' front-door estimate into the student."""

    weight: float = 1.0  # lambda
    loss: str = "bce"  # bce | kl
    temperature: float = 1.0
    target: str = "front_door"  # front_door | conditional (plain multi-teacher KD, the ablation)
    bank_size: int = 64  # N histories x' for the front-door marginalisation
    score_batch_size: int = 1024


@dataclass
class CRLConfig:
    """CRL: penalise the mutual information between the student's representation and C."""

    beta: float = 0.1
    estimator: str = "nce_club"  # nce_club | club
    conditional: bool = False  # I(Z; C | Y) instead of I(Z; C)
    critic_hidden: int = 32
    critic_lr: float = 3e-3


@dataclass
class EvalConfig:
    k: int = 10
    batch_size: int = 8192


@dataclass
class RayConfig:
    address: str | None = None  # None: start an embedded local Ray
    num_cpus: int = 8  # logical CPUs of the embedded Ray (may exceed physical cores)


@dataclass
class Config:
    seed: int = 0
    runs_dir: str = "runs"
    run_id: str | None = None
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
    return config


def to_dict(config: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(config))  # type: ignore[return-value]


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))
