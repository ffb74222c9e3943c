"""Shared fixtures: one embedded Ray for the session and one small synthetic dataset."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from distrec.loopback import bind_local_ray_to_loopback

bind_local_ray_to_loopback()
# Ray workers import functions defined in test modules by name: let them find this directory.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))

import pytest  # noqa: E402
import ray  # noqa: E402

from distrec.config import RayConfig  # noqa: E402
from distrec.data.schema import Manifest  # noqa: E402
from distrec.data.synth import synthesize  # noqa: E402
from distrec.orchestrate.pipeline import ray_session  # noqa: E402

TINY_ROWS = 8_000


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A real local Ray (16 logical CPUs on 2 cores, as in local mode), shared by the whole session."""
    with ray_session(RayConfig(num_cpus=16)):
        yield
    assert not ray.is_initialized()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    root = tmp_path_factory.mktemp("tiny") / "synth"
    manifest = synthesize(root, TINY_ROWS, users=300, items=150, days=4, history_len=8, seed=1, rows_per_file=2_000)
    return root, manifest
