"""The synthetic SCM writes valid, deterministic, chunking-independent and genuinely confounded logs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from distrec.data.schema import SPLITS, Manifest
from distrec.data.synth import synthesize
from distrec.data.validate import read_parquet_checked
from distrec.errors import ConfigError
from distrec.eval.groups import groups_from_counts
from distrec.eval.metrics import auc

ROWS = 60_000
ITEMS = 300


def read_split(root: Path, manifest: Manifest, split: str) -> pa.Table:
    return pa.concat_tables([read_parquet_checked(f, manifest) for f in manifest.files(root, split)])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest, dict[str, pa.Table]]:
    root = tmp_path_factory.mktemp("synth") / "data"
    manifest = synthesize(root, ROWS, users=800, items=ITEMS, seed=3, chunk_rows=7_000)
    return root, manifest, {split: read_split(root, manifest, split) for split in SPLITS}


def test_layout_and_manifest(dataset: tuple[Path, Manifest, dict[str, pa.Table]]) -> None:
    root, manifest, tables = dataset
    assert Manifest.read(root).to_json() == manifest.to_json()
    assert sorted(p.name for p in root.iterdir()) == sorted([*SPLITS, "manifest.json", "scm"])
    assert manifest.splits == {
        "train": [f"ds=2026-01-0{d}" for d in range(1, 6)],
        "valid": ["ds=2026-01-06"],
        "test_id": ["ds=2026-01-07"],
        "test_ood": ["ds=2026-01-07"],
        "test_do": ["ds=2026-01-07"],
        "valid_random": ["ds=2026-01-06"],
        "valid_do": ["ds=2026-01-06"],
    }
    eval_rows = {s: 4_500 for s in ("valid", "test_id", "test_ood", "test_do", "valid_random", "valid_do")}
    assert manifest.rows == {"train": 42_000, **eval_rows}
    assert {s: t.num_rows for s, t in tables.items()} == manifest.rows
    assert manifest.has_true_ctr and manifest.history_max_len == 20
    assert manifest.cardinality == {"user_id": 800, "item_id": ITEMS, "item_tag": 16}
    assert manifest.confounders == {"conf_session": 8}  # exposure only: not the policy (see synth.py)
    assert manifest.source["seed"] == 3 and manifest.source["scm"]["confounding"] == 2.0
    for split in SPLITS:
        for path in manifest.files(root, split):
            assert pq.read_schema(path).remove_metadata().equals(manifest.schema()), path
            ts = pq.read_table(path, columns=["ts"])["ts"].to_numpy()
            day = (dt.date.fromisoformat(path.parent.name.removeprefix("ds=")) - dt.date(1970, 1, 1)).days
            assert np.all(np.diff(ts) >= 0) and np.all(ts // 86_400 == day), path


def test_policies_propensities_and_ctr(dataset: tuple[Path, Manifest, dict[str, pa.Table]]) -> None:
    _, _, tables = dataset
    train = tables["train"]
    is_random = train["is_random"].to_numpy()
    assert 0.04 < is_random.mean() < 0.06
    policy = np.array(train["policy"].to_pylist())
    assert set(policy[is_random]) == {"random"} and set(policy[~is_random]) == {"policy_ts"}
    assert np.allclose(train["propensity"].to_numpy()[is_random], 1 / ITEMS)
    assert set(tables["test_ood"]["policy"].to_pylist()) == {"policy_flipped"}
    assert set(tables["valid_random"]["policy"].to_pylist()) == {"random"}
    assert tables["valid_random"]["is_random"].to_numpy().all()
    assert np.allclose(tables["valid_random"]["propensity"].to_numpy(), 1 / ITEMS)
    for split, table in tables.items():
        label, ctr = table["label"].to_numpy(), table["true_ctr"].to_numpy()
        assert 0.2 < label.mean() < 0.35, split
        assert abs(label.mean() - ctr.mean()) < 0.015, split
        assert auc(label, ctr) > 0.75, split  # the ground truth is informative
        session = np.bincount(table["conf_session"].to_numpy(), minlength=8) / table.num_rows
        assert session.min() > 0.07 and session.max() < 0.18, split


def tag_sign(table: pa.Table) -> np.ndarray:
    return np.where(table["item_tag"].to_numpy() % 2 == 0, 1.0, -1.0)


def test_logs_are_confounded(dataset: tuple[Path, Manifest, dict[str, pa.Table]]) -> None:
    _, _, tables = dataset
    train = tables["train"].filter(pc.invert(tables["train"]["is_random"]))
    # the tag has no causal effect, yet correlates with clicks with a sign set by the logging policy
    corr = {s: np.corrcoef(tag_sign(t), t["label"].to_numpy())[0, 1] for s, t in tables.items()}
    corr["train_policy"] = np.corrcoef(tag_sign(train), train["label"].to_numpy())[0, 1]
    assert corr["train_policy"] > 0.1 and corr["test_id"] > 0.1, corr
    assert corr["test_ood"] < -0.1, corr
    # the observed session proxy reveals the confounder that drives exposure
    assert np.corrcoef(tag_sign(train), train["conf_session"].to_numpy())[0, 1] > 0.4

    # a naive per-item click-rate model learns the spurious association and breaks under the flipped policy
    items, labels = train["item_id"].to_numpy(), train["label"].to_numpy()
    rate = (np.bincount(items, labels, minlength=ITEMS) + 1) / (np.bincount(items, minlength=ITEMS) + 4)
    score = {s: auc(tables[s]["label"].to_numpy(), rate[tables[s]["item_id"].to_numpy()]) for s in SPLITS[1:]}
    assert score["test_id"] > 0.6 and abs(score["valid"] - score["test_id"]) < 0.03, score
    assert score["test_id"] - score["test_ood"] > 0.1, score


def test_activity_is_long_tailed_and_histories_follow_it(
    dataset: tuple[Path, Manifest, dict[str, pa.Table]],
) -> None:
    root, manifest, tables = dataset
    users = pq.read_table(root / "scm" / "users.parquet")
    table = tables["train"]
    counts = np.bincount(table["user_id"].to_numpy(), minlength=manifest.cardinality["user_id"])
    groups = groups_from_counts(counts)
    means = [counts[groups == g].mean() for g in range(5)]
    assert means[4] / means[0] >= 10, means  # the quintiles mean something
    # each row sees a window of its user's history pool: several histories per user, all of one length
    history_of: dict[int, set[tuple[int, ...]]] = {}
    for user, history in zip(table["user_id"].to_pylist(), table["hist_item_ids"].to_pylist(), strict=True):
        history_of.setdefault(user, set()).add(tuple(history))
    assert all(len({len(h) for h in hs}) == 1 for hs in history_of.values())
    busy = [hs for hs in history_of.values() if len(next(iter(hs))) >= 4]
    assert np.mean([len(hs) > 1 for hs in busy]) > 0.9
    lengths = np.array([len(next(iter(hs))) for hs in history_of.values()])
    assert lengths.max() == manifest.history_max_len and lengths.min() < manifest.history_max_len / 2
    activity = users["activity"].to_numpy()[np.array(list(history_of))]
    assert np.corrcoef(np.log(activity), lengths)[0, 1] > 0.5  # tail users have short histories
    # the exposure confounder is independent of the user: the session proxy does not identify users
    assert (
        abs(np.corrcoef(users["a"].to_numpy()[table["user_id"].to_numpy()], table["conf_session"].to_numpy())[0, 1])
        < 0.03
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def test_truths_are_exact(dataset: tuple[Path, Manifest, dict[str, pa.Table]]) -> None:
    """p_obs, p_do and p_fd against Monte Carlo over V (and, for p_fd, over users) from the stored latents."""
    root, manifest, tables = dataset
    scm = manifest.source["scm"]
    users, items = pq.read_table(root / "scm" / "users.parquet"), pq.read_table(root / "scm" / "items.parquet")
    c = np.stack(pq.read_table(root / "scm" / "mediators.parquet")["c"].to_numpy(zero_copy_only=False))
    q = np.stack(items["q"].to_numpy(zero_copy_only=False))
    a, social, b = users["a"].to_numpy(), items["social"].to_numpy(), items["b"].to_numpy()
    rows = tables["test_id"].slice(0, 100)
    u, i = rows["user_id"].to_numpy(), rows["item_id"].to_numpy()
    # P(m | x) from the row's own history, recomputed from the item latents
    mean = np.stack([q[h].mean(0) if h else np.zeros(scm["dim"]) for h in rows["hist_item_ids"].to_pylist()])
    logits = scm["beta_m"] * mean @ c.T / np.sqrt(scm["dim"])
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    base = scm["b0"] + scm["w_m"] * (q[i] @ c.T) / np.sqrt(scm["dim"]) + b[i, None]  # [rows, mediators]
    rng = np.random.default_rng(0)
    v = rng.standard_normal(20_000)
    exposure = _sigmoid(items["sign"].to_numpy()[i][:, None] * scm["confounding"] * v[None, :])  # [rows, draws]

    def expected(trait: np.ndarray, weighted: bool) -> np.ndarray:
        """sum_m P(m|x) E[sigmoid(...)] with the rows' traits ``trait`` ([rows, draws] or [rows, 1])."""
        eta = base[:, :, None] + (scm["w_u"] * social[i])[:, None, None] * trait[:, None, :]
        click = np.einsum("rm,rmd->rd", probs, _sigmoid(eta + scm["w_v"] * v[None, None, :]))
        return (click * exposure).mean(1) / exposure.mean(1) if weighted else click.mean(1)

    np.testing.assert_allclose(rows["p_do"].to_numpy(), expected(a[u][:, None], False), atol=4e-3)
    np.testing.assert_allclose(rows["p_obs"].to_numpy(), expected(a[u][:, None], True), atol=4e-3)
    activity = users["activity"].to_numpy()
    population = a[rng.choice(len(a), size=(len(rows), len(v)), p=activity / activity.sum())]
    np.testing.assert_allclose(rows["p_fd"].to_numpy(), expected(population, True), atol=6e-3)


def test_ceilings_read_as_the_scm_promises(dataset: tuple[Path, Manifest, dict[str, pa.Table]]) -> None:
    _, _, tables = dataset
    for split in ("test_id", "test_do", "valid_do"):  # the logs' and the intervention's Bayes predictors are calibrated
        y = tables[split]["label"].to_numpy()
        truth = "p_obs" if split == "test_id" else "p_fd"
        assert abs(y.mean() - tables[split][truth].to_numpy().mean()) < 0.015, split
    score = {
        (s, t): auc(tables[s]["label"].to_numpy(), tables[s][t].to_numpy())
        for s in ("test_id", "test_ood", "test_do", "valid_do")
        for t in ("p_obs", "p_do", "p_fd")
    }
    assert score["test_id", "p_obs"] > score["test_id", "p_do"]  # in distribution the spurious tag helps
    assert score["test_ood", "p_do"] - score["test_ood", "p_obs"] > 0.03  # under the flip it costs
    assert abs(score["test_ood", "p_do"] - score["test_id", "p_do"]) < 0.02  # the interventional truth is robust
    for split in ("test_do", "valid_do"):  # with X set, the user's U misleads; valid_do is test_do's twin
        assert score[split, "p_fd"] - score[split, "p_obs"] > 0.01, split

    def logloss(split: str, truth: str) -> float:
        y, p = tables[split]["label"].to_numpy(), np.clip(tables[split][truth].to_numpy(), 1e-6, 1 - 1e-6)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))

    for split in ("test_do", "valid_do"):  # p_fd is the Bayes predictor there
        assert logloss(split, "p_fd") < logloss(split, "p_obs") - 0.01, split


def test_deterministic_given_seed(tmp_path: Path) -> None:
    def generate(name: str, seed: int, **kwargs: int) -> dict[str, pa.Table]:
        manifest = synthesize(tmp_path / name, 4_000, users=100, items=50, seed=seed, **kwargs)
        return {s: read_split(tmp_path / name, manifest, s) for s in SPLITS}

    one_chunk, again, other = generate("a", 7), generate("b", 7), generate("c", 8)
    chunked = generate("chunked", 7, chunk_rows=333)
    many_files = generate("many_files", 7, chunk_rows=100, rows_per_file=200)
    assert len(list((tmp_path / "many_files" / "train" / "ds=2026-01-01").glob("*.parquet"))) == 3
    # the same files written two at a time by spawned processes, in whatever order they finish
    in_processes = generate("in_processes", 7, chunk_rows=100, rows_per_file=200, processes=2)
    for name in ("many_files", "in_processes"):
        files = sorted(p.relative_to(tmp_path / name) for p in (tmp_path / name).rglob("part-*.parquet"))
        assert len(files) > 2, name
    for split in SPLITS:
        assert many_files[split].equals(in_processes[split]), split
        assert one_chunk[split].equals(again[split]), split
        assert not one_chunk[split].equals(other[split]), split
        assert one_chunk[split].equals(chunked[split]), split
        assert one_chunk[split].equals(many_files[split]), split


def test_refuses_to_overwrite_or_to_leave_partitions_empty(tmp_path: Path) -> None:
    synthesize(tmp_path / "d", 1_000, users=10, items=10)
    with pytest.raises(ConfigError):
        synthesize(tmp_path / "d", 1_000, users=10, items=10)
    synthesize(tmp_path / "d", 1_000, users=10, items=10, overwrite=True)
    with pytest.raises(ConfigError, match="too few"):
        synthesize(tmp_path / "small", 9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
