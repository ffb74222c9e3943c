"""``distill.soft_labels=inline``: the student's ranks score the rows they read with every teacher, and train
on the same soft labels as a student reading them precomputed."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from distrec.config import load_config
from distrec.data.schema import Manifest
from distrec.orchestrate.pipeline import open_run, train_students, train_teachers

REPO = Path(__file__).resolve().parents[1]


def test_a_student_scoring_inline_trains_as_on_the_precomputed_soft_labels(
    ray_local: None, tiny_dataset: tuple[Path, Manifest], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One rank, every row against the whole bank (no random draws): the soft labels do not depend on how the
    rows are chunked, so the student trained on labels its rank scores inline must follow the same path as
    the one trained on the labels scored once into Parquet (to float rounding); its distillation loss shows
    the labels were there (all-zero labels would give another loss). The runs directory is relative, as in
    ``jobs/local.yaml``: the ranks, which run in directories of their own, must still find the bank."""
    root, _ = tiny_dataset
    monkeypatch.chdir(tmp_path)
    overrides = [
        f"data.path={root}",
        "runs_dir=runs",
        "run_id=inline",
        "train.epochs=1",
        "train.num_workers=1",
        "train.batch_size=512",
        "distill.bank_size=16",
        "distill.bank_groups=1",
        "teachers=[{name: fm, arch: deepfm, dim: 8, hidden: [16]}, {name: cross, arch: dcn, dim: 8, hidden: [16]}]",
        "student.dim=8",
        "student.hidden=[16]",
    ]
    ctx = open_run(load_config(REPO / "jobs" / "local.yaml", overrides))
    train_teachers(ctx)
    train_students(ctx)
    precomputed = json.loads((ctx.model_dir("student") / "training.json").read_text())
    assert (ctx.run_dir / "soft_labels").is_dir()

    shutil.rmtree(ctx.model_dir("student"))
    shutil.rmtree(Path(ctx.storage) / "student", ignore_errors=True)  # no checkpoint to resume from
    inline = replace(ctx, config=load_config(REPO / "jobs" / "local.yaml", [*overrides, "distill.soft_labels=inline"]))
    train_students(inline)
    scored = json.loads((ctx.model_dir("student") / "training.json").read_text())

    assert scored["rows"] == precomputed["rows"] > 0
    assert scored["train_kd"] > 0.1  # BCE against soft labels in (0, 1)
    for key in ("train_kd", "train_bce", "train_loss"):
        assert scored[key] == pytest.approx(precomputed[key], rel=1e-3), key
    assert scored["curve"][-1]["valid_auc"] == pytest.approx(precomputed["curve"][-1]["valid_auc"], abs=2e-3)
