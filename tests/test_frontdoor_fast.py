"""The front-door fast path (a head split against a fixed bank, ``bank_head``) equals the generic
broadcast path to float tolerance, for every architecture, through ``front_door_prob`` and the
real ``TeacherScorer`` on an exported teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from distrec.causal.frontdoor import front_door_prob, sampled_front_door_prob, split_bank
from distrec.config import ModelConfig, load_config
from distrec.data.batch import BatchBuilder
from distrec.data.schema import Manifest
from distrec.data.synth import synthesize
from distrec.errors import ConfigError
from distrec.models.architectures import ARCHITECTURES, model_from_config
from distrec.orchestrate.stream import (
    ScoringOptions,
    SoftLabeler,
    TeacherScorer,
    conditional_column,
    front_door_column,
    write_history_bank,
)
from distrec.train.export import export_spec, write_export

torch.set_num_threads(1)

DIM, HIDDEN = 8, [16, 12]  # two hidden layers: the layers after the split one run per pair


def randomised(arch: str, manifest: Manifest, seed: int) -> torch.nn.Module:
    """A model whose every dense weight is random (the zero-initialised tower read-outs included)."""
    torch.manual_seed(seed)
    model = model_from_config(
        ModelConfig(name=arch, arch=arch, dim=DIM, hidden=list(HIDDEN)), manifest, torch.device("cpu")
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.startswith("encoder"):
                param.normal_(0.0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    root = tmp_path_factory.mktemp("fast") / "synth"
    return root, synthesize(root, 1_200, users=50, items=30, days=3, history_len=5, seed=2)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_bank_head_equals_the_broadcast_head(arch: str, dataset: tuple[Path, Manifest]) -> None:
    model = randomised(arch, dataset[1], seed=4)
    gen = torch.Generator().manual_seed(7)
    bank, mediator, item = (torch.randn(n, DIM, generator=gen) for n in (9, 13, 13))
    with torch.no_grad():
        bank_head = model.bank_head(bank)
        assert bank_head is not None, f"{arch} has no split head"
        pairs = model.head(bank.unsqueeze(0), mediator.unsqueeze(1), item.unsqueeze(1))
        torch.testing.assert_close(bank_head(mediator, item), pairs, rtol=1e-5, atol=1e-5)
        generic = front_door_prob(model.head, bank, mediator, item, chunk_rows=4)
        fast = front_door_prob(model.head, bank, mediator, item, chunk_rows=4, bank_head=bank_head)
    torch.testing.assert_close(fast, generic, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(generic, torch.full_like(generic, float(generic.mean())))  # rows differ


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_teacher_scorer_fast_path_equals_the_generic_path(
    arch: str, dataset: tuple[Path, Manifest], tmp_path: Path
) -> None:
    """The scorer a stream uses, on real logs and a real bank: the same front-door column either way."""
    root, manifest = dataset
    model = randomised(arch, manifest, seed=5)
    spec = ModelConfig(name=arch, arch=arch, dim=DIM, hidden=list(HIDDEN))
    write_export(tmp_path / "teacher", export_spec(spec), manifest, model.state_dict())
    bank = write_history_bank(manifest, str(root), 16, seed=1, out=tmp_path / "bank.parquet")
    rows = pq.read_table(manifest.files(root, "train")[0], columns=BatchBuilder(manifest).columns).slice(0, 300)

    scorer = TeacherScorer(str(tmp_path / "teacher"), ScoringOptions(str(bank)))
    fast = scorer(rows).column(front_door_column(arch)).to_numpy()
    scorer.bank = [(direct, None) for direct, _ in scorer.bank]  # the generic broadcast path
    generic = scorer(rows).column(front_door_column(arch)).to_numpy()
    np.testing.assert_allclose(fast, generic, rtol=1e-5, atol=1e-6)
    assert np.isfinite(fast).all() and fast.std() > 0


def test_an_empty_table_gets_empty_soft_label_columns(dataset: tuple[Path, Manifest], tmp_path: Path) -> None:
    """Ray Data never hands the stage an empty batch, but a direct caller may: TorchRec cannot split an
    empty KJT, so the scorer answers it without the model."""
    root, manifest = dataset
    spec = ModelConfig(name="deepfm", arch="deepfm", dim=DIM, hidden=list(HIDDEN))
    write_export(tmp_path / "teacher", export_spec(spec), manifest, randomised("deepfm", manifest, 0).state_dict())
    bank = write_history_bank(manifest, str(root), 16, seed=1, out=tmp_path / "bank.parquet")
    empty = pq.read_table(manifest.files(root, "train")[0], columns=BatchBuilder(manifest).columns).slice(0, 0)
    scored = SoftLabeler({"deepfm": str(tmp_path / "teacher")}, ScoringOptions(str(bank)))(empty)
    assert scored.num_rows == 0
    assert scored.column_names == [*empty.column_names, front_door_column("deepfm"), conditional_column("deepfm")]


def test_soft_labels_depend_on_the_batch_and_seed_not_on_what_the_scorer_scored_before(
    dataset: tuple[Path, Manifest], tmp_path: Path
) -> None:
    """The stage's actors draw the bank group of each chunk from the batch's rows and the seed: a batch
    scored after another, by a fresh actor (another of the pool, or one restarted after a crash) gets the
    same soft labels from every teacher; another seed draws other groups."""
    root, manifest = dataset
    teachers = {}
    for seed, arch in enumerate(("deepfm", "dcn")):
        spec = ModelConfig(name=arch, arch=arch, dim=DIM, hidden=list(HIDDEN))
        write_export(tmp_path / arch, export_spec(spec), manifest, randomised(arch, manifest, seed).state_dict())
        teachers[arch] = str(tmp_path / arch)
    bank = write_history_bank(manifest, str(root), 16, seed=1, out=tmp_path / "bank.parquet")
    rows = pq.read_table(manifest.files(root, "train")[0], columns=BatchBuilder(manifest).columns)
    first, second = rows.slice(0, 300), rows.slice(300, 300)

    busy = SoftLabeler(teachers, ScoringOptions(str(bank), bank_groups=4))
    busy(first)
    after_first = busy(second)
    fresh = SoftLabeler(teachers, ScoringOptions(str(bank), bank_groups=4))(second)
    reseeded = SoftLabeler(teachers, ScoringOptions(str(bank), seed=1, bank_groups=4))(second)
    for arch in teachers:
        for column in (front_door_column(arch), conditional_column(arch)):
            np.testing.assert_array_equal(after_first.column(column).to_numpy(), fresh.column(column).to_numpy())
        fd = front_door_column(arch)
        assert np.abs(reseeded.column(fd).to_numpy() - fresh.column(fd).to_numpy()).max() > 1e-4


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_bank_groups_are_an_unbiased_cheaper_front_door(arch: str, dataset: tuple[Path, Manifest]) -> None:
    """Known answer: a row scored against each of the G equal groups in turn averages to the whole bank's
    estimate exactly; drawn at random per chunk, the mean over draws converges to it; G = 1 is the bank."""
    model = randomised(arch, dataset[1], seed=6)
    gen = torch.Generator().manual_seed(8)
    bank, mediator, item = (torch.randn(n, DIM, generator=gen) for n in (12, 40, 40))
    with torch.no_grad():
        whole = front_door_prob(model.head, bank, mediator, item, bank_head=model.bank_head(bank))
        groups = split_bank(bank, 4, seed=3, split=model.bank_head)
        assert [len(direct) for direct, _ in groups] == [3] * 4
        assert sorted(torch.cat([direct for direct, _ in groups]).sum(1).tolist()) == sorted(bank.sum(1).tolist())
        each = [front_door_prob(model.head, direct, mediator, item, bank_head=head) for direct, head in groups]
        torch.testing.assert_close(torch.stack(each).mean(0), whole, rtol=1e-5, atol=1e-6)
        assert max(float((e - whole).abs().max()) for e in each) > 1e-3  # one group alone is not the bank
        draws = torch.Generator().manual_seed(0)
        sampled = torch.stack(
            [sampled_front_door_prob(model.head, groups, mediator, item, draws, chunk_rows=8) for _ in range(800)]
        )
        spread = torch.stack(each).std(0) / 800**0.5  # the standard error of the mean of 800 draws
        assert bool(((sampled.mean(0) - whole).abs() <= 5 * spread + 1e-6).all())
        one = split_bank(bank, 1, seed=3, split=model.bank_head)
        torch.testing.assert_close(sampled_front_door_prob(model.head, one, mediator, item, draws), whole)
    with pytest.raises(ValueError, match="into 5 equal groups"):
        split_bank(bank, 5, seed=0, split=model.bank_head)


def test_scorer_pool_keys_are_validated_together() -> None:
    config = load_config(None, ["distill.scorers_per_teacher=3", "distill.scorer_cpus=0.5"])
    assert (config.distill.scorers_per_teacher, config.distill.scorer_cpus) == (3, 0.5)
    with pytest.raises(ConfigError) as error:
        load_config(None, ["distill.scorers_per_teacher=0", "distill.scorer_cpus=0"])
    assert "distill.scorers_per_teacher must be >= 1, got 0" in str(error.value)
    assert "distill.scorer_cpus must be > 0, got 0" in str(error.value)


def test_a_stream_scores_only_the_targets_its_students_read(dataset: tuple[Path, Manifest], tmp_path: Path) -> None:
    """The demo's student reads the front-door columns alone: scored without the conditional target, they are
    the same values, and no other column is added; a target that is not a soft label is refused."""
    root, manifest = dataset
    spec = ModelConfig(name="dcn", arch="dcn", dim=DIM, hidden=list(HIDDEN))
    write_export(tmp_path / "teacher", export_spec(spec), manifest, randomised("dcn", manifest, 2).state_dict())
    bank = write_history_bank(manifest, str(root), 16, seed=1, out=tmp_path / "bank.parquet")
    rows = pq.read_table(manifest.files(root, "train")[0], columns=BatchBuilder(manifest).columns).slice(0, 300)
    teachers = {"dcn": str(tmp_path / "teacher")}

    both = SoftLabeler(teachers, ScoringOptions(str(bank), bank_groups=4))(rows)
    front_door = SoftLabeler(teachers, ScoringOptions(str(bank), bank_groups=4, targets=("front_door",)))(rows)
    conditional = SoftLabeler(teachers, ScoringOptions(str(bank), bank_groups=4, targets=("conditional",)))(rows)
    assert front_door.column_names == [*rows.column_names, front_door_column("dcn")]
    assert conditional.column_names == [*rows.column_names, conditional_column("dcn")]
    for scored, column in ((front_door, front_door_column("dcn")), (conditional, conditional_column("dcn"))):
        np.testing.assert_array_equal(scored.column(column).to_numpy(), both.column(column).to_numpy())
    for targets in ((), ("front_door", "label")):
        with pytest.raises(ValueError, match="soft-label targets must be a non-empty subset"):
            ScoringOptions(str(bank), targets=targets)
