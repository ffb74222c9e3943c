"""Cross-fitted soft labels (``distill.cross_fit``): the fold of a row, the copies trained without it,
and the scorer that labels each row with the copy that never saw it."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from distrec.causal.frontdoor import front_door_prob
from distrec.cli import main
from distrec.config import load_config
from distrec.data.batch import BatchBuilder
from distrec.data.reader import ShardReader
from distrec.data.schema import USER, Manifest
from distrec.errors import ConfigError
from distrec.models.architectures import build_model
from distrec.orchestrate.pipeline import open_run, score_soft_labels, train_teachers
from distrec.orchestrate.stream import (
    CrossFittedScorer,
    ScoringOptions,
    TeacherScorer,
    conditional_column,
    front_door_column,
    write_history_bank,
)
from distrec.train.export import load_export, write_export
from distrec.train.feed import hold_out, pair_folds, row_folds, to_batches

REPO = Path(__file__).resolve().parents[1]


def train_rows(root: Path, manifest: Manifest) -> pa.Table:
    return pa.concat_tables(
        pq.read_table(f, columns=BatchBuilder(manifest).columns) for f in manifest.files(root, "train")
    )


def export(manifest: Manifest, directory: Path, seed: int) -> str:
    """A freshly initialised deepfm export named ``directory.name`` (its weights differ per seed)."""
    torch.manual_seed(seed)
    model = build_model("deepfm", directory.name, manifest, 8, [16], torch.device("cpu"))
    write_export(
        directory, {"name": directory.name, "arch": "deepfm", "dim": 8, "hidden": [16]}, manifest, model.state_dict()
    )
    return str(directory)


def test_pair_folds_are_pinned_per_row_and_balanced(tiny_dataset: tuple[Path, Manifest]) -> None:
    # pinned: a changed hash would silently move rows between folds in resumed runs and nightly warm starts
    users, items = np.array([0, 1, 2, 3, 2**40, 7]), np.array([0, 0, 1, 5, 7, 3])
    assert pair_folds(users, items, 2).tolist() == [0, 1, 1, 1, 1, 1]
    assert pair_folds(users, items, 5).tolist() == [0, 0, 4, 4, 1, 1]
    assert pair_folds(users[::-1], items[::-1], 5).tolist() == [1, 1, 4, 4, 0, 0]  # per row, whatever the order
    root, manifest = tiny_dataset
    rows = train_rows(root, manifest)
    u, i = (rows.column(c).to_numpy() for c in ("user_id", "item_id"))
    for folds in (2, 3, 5):
        assigned = pair_folds(u, i, folds)
        shares = np.bincount(assigned, minlength=folds) / len(assigned)
        np.testing.assert_allclose(shares, 1 / folds, atol=0.03)


def test_training_and_scoring_assign_the_same_folds(tiny_dataset: tuple[Path, Manifest], tmp_path: Path) -> None:
    """The weights ``hold_out`` gives (training: a worker's reader and batches of 512 in file order) and the
    copies ``CrossFittedScorer`` routes to (scoring: the export's builder, shuffled batches of another size)
    agree row by row, also with a hashed user table; and a row's soft labels are its copy's own scores."""
    root, manifest = tiny_dataset
    hashed = manifest.with_table_rows({USER: 64})
    rows = train_rows(root, manifest)

    # training side: what a teacher's only worker feeds its pipeline
    trainer = BatchBuilder(hashed)
    reader = ShardReader([str(f) for f in manifest.files(root, "train")], trainer.columns, 0, 1, 512)
    batches = list(to_batches(reader.chunks(), trainer, 512))
    held: deque[int] = deque()
    weights = np.concatenate([b.weights.numpy() for b in hold_out(batches, 1, 3, held)])
    trained_without_fold_1 = weights > 0

    # scoring side: three copies of one teacher, each row scored by the copy of its fold
    exports = [export(hashed, tmp_path / name, seed) for seed, name in enumerate(["t", "t__fold1", "t__fold2"])]
    bank = write_history_bank(manifest, str(root), 16, seed=0, out=tmp_path / "bank.parquet")
    scorer = CrossFittedScorer(exports, ScoringOptions(str(bank)))
    order = np.random.default_rng(0).permutation(rows.num_rows)
    shuffled = rows.take(pa.array(order))
    scored = pa.concat_tables(scorer(shuffled.slice(lo, 700)) for lo in range(0, rows.num_rows, 700))
    folds = row_folds(BatchBuilder(hashed)(shuffled), 3)
    np.testing.assert_array_equal(folds != 1, trained_without_fold_1[order])
    assert list(held) == [int((row_folds(b, 3) == 1).sum()) for b in batches]
    assert 0 < sum(held) < rows.num_rows

    fd, kd = (scored.column(c(scorer.name)).to_numpy() for c in (front_door_column, conditional_column))
    assert scorer.name == "t"
    for fold, directory in enumerate(exports):
        options = ScoringOptions(str(bank))
        own, other = TeacherScorer(directory, options), TeacherScorer(exports[(fold + 1) % 3], options)
        mine = np.flatnonzero(folds == fold)
        expected = own.score(shuffled.take(pa.array(mine)))
        np.testing.assert_allclose(fd[mine], expected["front_door"], rtol=1e-5)
        np.testing.assert_allclose(kd[mine], expected["conditional"], rtol=1e-5)
        assert not np.allclose(fd[mine], other.score(shuffled.take(pa.array(mine)))["front_door"], rtol=1e-3)


def test_cross_fitted_run_scores_each_row_with_the_copy_that_held_it_out(
    ray_local: None, tiny_dataset: tuple[Path, Manifest], tmp_path: Path
) -> None:
    """Real TorchTrainers (2 workers each): copy k of the teacher trains exactly on the rows outside fold k
    (the rows its training record counts), and every soft label is the score of the copy of its fold,
    recomputed here from the two exports."""
    root, manifest = tiny_dataset
    overrides = [
        f"data.path={root}",
        f"runs_dir={tmp_path}",
        "run_id=xfit",
        "distill.cross_fit=2",
        "train.epochs=1",
        "train.batch_size=512",
        "distill.bank_size=16",
        "distill.bank_groups=1",  # every row against the whole bank, as recomputed below
        "teachers=[{name: fm, arch: deepfm, dim: 8, hidden: [16]}]",
        "student.dim=8",
        "student.hidden=[16]",
    ]
    ctx = open_run(load_config(REPO / "jobs" / "local.yaml", overrides))
    train_teachers(ctx)
    soft = pa.concat_tables(pq.read_table(f) for f in score_soft_labels(ctx))

    logged = train_rows(root, manifest)
    builder = BatchBuilder(manifest)
    folds = row_folds(builder(logged), 2)
    records = {
        name: json.loads((ctx.model_dir(name) / "training.json").read_text()) for name in ("fm", "fm__fold1", "base")
    }
    assert records["fm"]["rows"] == int((folds != 0).sum())
    assert records["fm__fold1"]["rows"] == int((folds != 1).sum())
    assert records["base"]["rows"] == logged.num_rows == soft.num_rows
    assert soft.select(["user_id", "item_id", "label"]).equals(logged.select(["user_id", "item_id", "label"]))

    bank = pq.read_table(ctx.run_dir / "history_bank.parquet", columns=builder.columns)
    sample = np.arange(0, soft.num_rows, 17)  # about 330 rows of both folds
    rows = logged.take(pa.array(sample))
    assert "kd__fm" not in soft.column_names  # the student reads the front-door column only: nothing else scored
    fd = soft.column("fd__fm").to_numpy()[sample]
    scores = []
    for name in ("fm", "fm__fold1"):
        model, _, _ = load_export(ctx.model_dir(name))
        with torch.no_grad():
            encoded = model.encode(builder(rows))
            bank_direct = model.encode(builder(bank)).direct
            scores.append(front_door_prob(model.head, bank_direct, encoded.mediator, encoded.item).numpy())
    fold = folds[sample]
    assert 0 < fold.sum() < len(fold)
    np.testing.assert_allclose(fd, np.where(fold == 0, scores[0], scores[1]), rtol=1e-5)
    assert not np.allclose(scores[0], scores[1], rtol=1e-4)  # the copies differ: the routing matters


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["distill.cross_fit=1"], "distill.cross_fit must be 0 (off) or a number of folds >= 2, got 1"),
        (["distill.cross_fit=-2"], "distill.cross_fit must be 0 (off) or a number of folds >= 2, got -2"),
        (
            ["distill.cross_fit=3", "teachers=[{name: a, arch: dcn}, {name: a__fold2, arch: deepfm}]"],
            "names teacher copies ['a__fold2']",
        ),
    ],
)
def test_invalid_cross_fit_is_a_config_error(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(REPO / "jobs" / "local.yaml", overrides)
    assert message in str(error.value)


def test_invalid_cross_fit_exits_3_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "jobs/local.yaml", "distill.cross_fit=1", f"runs_dir={tmp_path}"]) == 3
    assert "distill.cross_fit" in capsys.readouterr().err
    assert main(["run", "jobs/local.yaml", "distill.cross_fit=two", f"runs_dir={tmp_path}"]) == 3
    assert not any(tmp_path.iterdir())
