"""Known answers for distrec.eval.metrics and distrec.eval.groups."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distrec.errors import DataError
from distrec.eval.groups import GROUP_NAMES, activity_groups, group_counts_from_parquet, groups_from_counts
from distrec.eval.metrics import (
    _sorted_auc,
    _weighted_sorted_auc,
    auc,
    evaluate,
    gauc,
    logloss,
    paired_auc_interval,
    paired_logloss_interval,
    ranking_metrics,
    score_confounder_mi,
)


def brute_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels > 0.5], scores[labels <= 0.5]
    if not pos.size or not neg.size:
        return math.nan
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def brute_ranking(labels: np.ndarray, scores: np.ndarray, k: int) -> tuple[float, float]:
    """NDCG@k and Recall@k of one user whose scores have no ties."""
    ranked = labels[np.argsort(-scores)] > 0.5
    dcg = sum(1 / math.log2(i + 2) for i in range(min(k, ranked.size)) if ranked[i])
    idcg = sum(1 / math.log2(i + 2) for i in range(min(k, int(ranked.sum()))))
    return dcg / idcg, ranked[:k].sum() / ranked.sum()


def test_auc_matches_pair_count_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        labels = (rng.random(400) < 0.3).astype(np.float32)
        scores = np.round(rng.random(400) + 0.3 * labels, 1).astype(np.float32)  # many ties
        assert auc(labels, scores) == pytest.approx(brute_auc(labels, scores), abs=1e-12)


def test_auc_equals_the_tie_runs_of_the_sorted_rows_at_scale() -> None:
    """The binary-search AUC against the tie-run one that evaluation uses (``_sorted_auc``), on 300k rows
    of float32 scores, half of them on a coarse grid (long tie runs across both classes)."""
    rng = np.random.default_rng(1)
    labels = (rng.random(300_000) < 0.25).astype(np.float32)
    scores = (rng.normal(size=300_000) + 0.8 * labels).astype(np.float32)
    scores[::2] = np.round(scores[::2], 1)
    order = np.argsort(scores, kind="stable")
    assert auc(labels, scores) == pytest.approx(_sorted_auc(scores[order], labels[order] > 0.5), abs=1e-12)


def test_auc_perfect_inverted_constant_and_one_class() -> None:
    labels = np.array([0, 0, 1, 1, 0, 1], dtype=np.float32)
    assert auc(labels, labels + 0.1) == 1.0
    assert auc(labels, -labels) == 0.0
    assert auc(labels, np.full(6, 0.3)) == 0.5
    assert math.isnan(auc(np.ones(4), np.arange(4.0)))
    assert math.isnan(auc(np.zeros(0), np.zeros(0)))


def test_auc_rejects_nan_scores() -> None:
    with pytest.raises(ValueError, match="not finite"):
        auc(np.array([0.0, 1.0]), np.array([0.1, np.nan]))


def test_gauc_hand_computed() -> None:
    # user 7: pos 0.9 beats neg 0.5, loses to neg 0.95 -> 0.5 over 3 rows
    # user 3: pos 0.8 beats 0.2 and 0.3; pos 0.3 beats 0.2, ties 0.3 -> 3.5 / 4 over 4 rows
    # user 100 has only negatives and user 5 only a positive: both left out
    users = np.array([7, 3, 7, 100, 3, 7, 3, 5, 3, 100])
    labels = np.array([1, 1, 0, 0, 0, 0, 1, 1, 0, 0], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.5, 0.1, 0.2, 0.95, 0.3, 0.4, 0.3, 0.2], dtype=np.float32)
    assert gauc(users, labels, scores) == pytest.approx((3 * 0.5 + 4 * 0.875) / 7)
    assert math.isnan(gauc(np.array([1, 1]), np.array([1.0, 1.0]), np.array([0.1, 0.2])))


def test_gauc_matches_per_user_brute_force() -> None:
    rng = np.random.default_rng(1)
    users = rng.integers(0, 30, 2000)
    labels = (rng.random(2000) < 0.25).astype(np.float32)
    scores = np.round(rng.random(2000) + 0.2 * labels, 2)
    per_user = [(brute_auc(labels[users == u], scores[users == u]), (users == u).sum()) for u in np.unique(users)]
    valid = [(a, n) for a, n in per_user if not math.isnan(a)]
    expected = sum(a * n for a, n in valid) / sum(n for _, n in valid)
    assert gauc(users, labels, scores) == pytest.approx(expected, abs=1e-12)


def test_logloss_known_values() -> None:
    assert logloss(np.array([1.0, 0.0]), np.array([0.8, 0.3])) == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2)
    assert logloss(np.array([1.0]), np.array([0.0])) == pytest.approx(-math.log(1e-7))
    assert logloss(np.array([0.0]), np.array([1.0], dtype=np.float32)) == pytest.approx(-math.log(1e-7), rel=1e-6)


def test_ranking_hand_computed() -> None:
    # user 0: ranked labels 0,1,0,1 -> @2 one hit at rank 2 of two positives
    # user 1: its positive is ranked 3rd -> 0
    # user 2: no positive -> left out
    # user 4: two tied rows, one positive -> the positive is 1st or 2nd with probability 1/2 each
    users = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 4, 4])
    labels = np.array([0, 1, 0, 1, 1, 0, 0, 0, 0, 1, 0], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.1, 0.5, 0.3, 0.9, 0.1, 0.5, 0.5])
    r = ranking_metrics(users, labels, scores, k=2)
    d = 1 / math.log2(3)
    assert r.users.tolist() == [0, 1, 4]
    np.testing.assert_allclose(r.user_ndcg, [d / (1 + d), 0.0, 0.5 + 0.5 * d])
    np.testing.assert_allclose(r.user_recall, [0.5, 0.0, 1.0])
    assert r.ndcg == pytest.approx((d / (1 + d) + 0.5 + 0.5 * d) / 3)
    assert r.recall == pytest.approx(0.5)
    tied = ranking_metrics(users[9:], labels[9:], scores[9:], k=1)
    assert tied.ndcg == pytest.approx(0.5) and tied.recall == pytest.approx(0.5)


def test_ranking_matches_brute_force() -> None:
    rng = np.random.default_rng(2)
    users = rng.integers(0, 40, 1500)
    labels = (rng.random(1500) < 0.2).astype(np.float32)
    scores = rng.permutation(1500) / 1500.0  # distinct scores
    r = ranking_metrics(users, labels, scores, k=5)
    for u, ndcg, recall in zip(r.users, r.user_ndcg, r.user_recall, strict=True):
        m = users == u
        assert (ndcg, recall) == pytest.approx(brute_ranking(labels[m], scores[m], 5))
    assert len(r.users) == len({u for u in users if labels[users == u].sum() > 0})


def test_evaluate_overall_and_groups() -> None:
    rng = np.random.default_rng(3)
    users = rng.integers(0, 50, 3000)
    labels = (rng.random(3000) < 0.3).astype(np.float32)
    probs = np.clip(0.3 + 0.2 * (labels - 0.3) + 0.1 * rng.standard_normal(3000), 0.01, 0.99)
    user_group = activity_groups(rng.integers(0, 50, 500), 50)
    out = evaluate(users, labels, probs, user_group)
    for key in ("auc", "gauc", "logloss", "ndcg@10", "recall@10", "rows", "ctr", "mean_pred"):
        assert key in out
    assert out["auc"] == pytest.approx(auc(labels, probs))
    assert out["rows"] == 3000 and out["ctr"] == pytest.approx(labels.mean())
    assert list(out["groups"]) == list(GROUP_NAMES)
    for g, name in enumerate(GROUP_NAMES):  # group metrics equal the metrics of the group's rows
        m = user_group[users] == g
        r = ranking_metrics(users[m], labels[m], probs[m])
        expected = [auc(labels[m], probs[m]), gauc(users[m], labels[m], probs[m]), logloss(labels[m], probs[m])]
        got = out["groups"][name]
        assert [got["auc"], got["gauc"], got["logloss"]] == pytest.approx(expected, abs=1e-12)
        assert [got["ndcg@10"], got["recall@10"], got["rows"]] == pytest.approx([r.ndcg, r.recall, m.sum()])
    assert sum(g["rows"] for g in out["groups"].values()) == 3000
    q5 = np.flatnonzero(user_group == 4)
    by_dict = evaluate(users, labels, probs, {"head": q5, "nobody": np.array([999])})
    assert by_dict["groups"]["head"] == out["groups"]["q5"]
    assert by_dict["groups"]["nobody"]["rows"] == 0 and math.isnan(by_dict["groups"]["nobody"]["auc"])
    assert "groups" not in evaluate(users, labels, probs)


def test_weighted_auc_equals_the_auc_of_repeated_rows() -> None:
    """A row counted w times is w copies of it: the bootstrap's weighted AUC against the brute force."""
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, 300).astype(np.float64)  # many ties
    labels = (rng.random(300) < 0.4).astype(np.float32)
    weights = rng.integers(0, 4, 300)
    order = np.argsort(scores, kind="stable")
    tie = np.concatenate(([0], np.cumsum(np.diff(scores[order]) != 0)))
    got = _weighted_sorted_auc(tie, labels[order] > 0.5, weights[order].astype(np.float64))
    assert got == pytest.approx(brute_auc(np.repeat(labels, weights), np.repeat(scores, weights)), abs=1e-12)


def test_paired_interval_covers_the_true_auc_difference() -> None:
    """Scores y + N(0, s^2) have AUC Phi(1 / (s sqrt 2)) exactly, so the true difference is known.

    95% intervals must cover the truth in about 95% of 40 independent test sets, and the same model
    against itself gives [0, 0].
    """
    phi = lambda x: 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))  # noqa: E731
    truth = phi(1.0 / (1.0 * math.sqrt(2))) - phi(1.0 / (1.3 * math.sqrt(2)))  # about 0.071
    covered, widths = 0, []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        users = rng.integers(0, 300, 3000)
        labels = (rng.random(3000) < 0.3).astype(np.float32)
        a = labels + rng.normal(0, 1.0, 3000)
        b = labels + rng.normal(0, 1.3, 3000)
        lo, hi = paired_auc_interval(users, labels, a, b, resamples=200, seed=seed)
        covered += lo <= truth <= hi
        widths.append(hi - lo)
    assert covered >= 34, covered  # 95% of 40 is 38; 34 or fewer has probability < 1% under true coverage
    assert 0.02 < np.mean(widths) < 0.12  # the interval says something: it excludes 0 and is not huge
    assert paired_auc_interval(users, labels, a, a, resamples=50) == (0.0, 0.0)
    with pytest.raises(ValueError, match="not finite"):
        paired_auc_interval(users, labels, a, np.full(3000, np.nan))


def test_paired_logloss_interval_covers_the_true_difference() -> None:
    """Clicks at rate 0.3: predicting 0.3 against predicting 0.5 changes the expected log loss by exactly
    H(0.3) - ln 2 (about -0.082); 95% intervals cover it in about 95% of 40 test sets."""
    truth = -(0.3 * math.log(0.3) + 0.7 * math.log(0.7)) - math.log(2.0)
    covered = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        users = rng.integers(0, 300, 3000)
        labels = (rng.random(3000) < 0.3).astype(np.float32)
        lo, hi = paired_logloss_interval(users, labels, np.full(3000, 0.3), np.full(3000, 0.5), seed=seed)
        assert lo < hi < 0  # the better model's loss is lower, and the interval says so
        covered += lo <= truth <= hi
    assert covered >= 34, covered
    same = np.full(3000, 0.3)
    assert paired_logloss_interval(users, labels, same, same, resamples=50) == (0.0, 0.0)


def test_activity_groups_hand_made_counts() -> None:
    counts = [5, 0, 3, 3, 3, 1, 9, 2, 0, 7]
    ids = np.repeat(np.arange(10), counts)
    groups = activity_groups(ids, 10)
    # zero-count users 1 and 8 fill q1; the rest ranked by (count, id), two per group
    assert groups.tolist() == [3, 0, 2, 2, 3, 1, 4, 1, 0, 4]
    # more zero-count users than a fifth: q1 is exactly them, the active ones share q2..q5
    assert groups_from_counts([0, 4, 0, 0, 3, 0, 0, 1, 2, 0]).tolist() == [0, 4, 0, 0, 3, 0, 0, 1, 2, 0]
    # users never seen in training (ids beyond the last train id) are in q1
    assert activity_groups(np.array([0, 1, 1]), 5).tolist()[2:] == [0, 0, 0]


def test_activity_groups_equal_sizes_and_ordered() -> None:
    rng = np.random.default_rng(4)
    weights = 1.0 / (np.arange(1000) + 10.0)
    ids = rng.choice(1000, 20000, p=weights / weights.sum())
    groups = activity_groups(ids, 1000)
    counts = np.bincount(ids, minlength=1000)
    assert np.bincount(groups).tolist() == [200] * 5
    for g in range(4):
        assert counts[groups == g].max() <= counts[groups == g + 1].min()
    with pytest.raises(DataError, match="outside"):
        activity_groups(np.array([0, 1000]), 1000)


def test_group_counts_from_parquet(tmp_path) -> None:
    rng = np.random.default_rng(5)
    parts = [rng.integers(0, 20, 333), rng.integers(0, 25, 100)]
    files = []
    for i, ids in enumerate(parts):
        files.append(tmp_path / f"part-{i}.parquet")
        table = pa.table({"user_id": pa.array(ids, pa.int64()), "label": np.zeros(ids.size, np.float32)})
        pq.write_table(table, files[-1])
    expected = np.bincount(np.concatenate(parts), minlength=30)
    np.testing.assert_array_equal(group_counts_from_parquet(files, num_users=30, batch_size=64), expected)
    grown = group_counts_from_parquet(files, batch_size=50)
    np.testing.assert_array_equal(grown, expected[: grown.size])
    with pytest.raises(DataError, match="part-1"):
        group_counts_from_parquet(files, num_users=20)


def test_score_confounder_mi_matches_the_exact_mutual_information() -> None:
    rng = np.random.default_rng(0)
    n = 400_000
    # C = 1[X + N > 0], X, N ~ N(0, 1): I(X; C) = ln 2 - E_X[h(Phi(X))], by quadrature
    grid = np.linspace(-8, 8, 40_001)
    phi = np.clip(0.5 * (1 + np.vectorize(math.erf)(grid / math.sqrt(2))), 1e-300, 1 - 1e-16)
    entropy = -(phi * np.log(phi) + (1 - phi) * np.log1p(-phi))
    exact = math.log(2) - np.sum(np.exp(-(grid**2) / 2) / math.sqrt(2 * math.pi) * entropy) * (grid[1] - grid[0])
    x = rng.normal(size=n)
    c = (x + rng.normal(size=n) > 0).astype(np.int64)
    assert abs(exact - 0.1931) < 1e-3
    assert score_confounder_mi(x, c) == pytest.approx(exact, abs=0.005)
    assert score_confounder_mi(np.exp(3 * x), c) == score_confounder_mi(x, c)  # any monotone transform
    independent = rng.integers(0, 3, n)
    assert score_confounder_mi(x, independent) < 1e-3
    assert score_confounder_mi(np.zeros(n), independent) == 0.0  # a constant score carries nothing
    decided = np.repeat([0, 1], n // 2)  # the score reveals C: I = H(C) = ln 2
    assert score_confounder_mi(decided + 1e-3 * rng.normal(size=n), decided) == pytest.approx(math.log(2), abs=0.003)
