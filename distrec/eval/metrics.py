"""Offline metrics on logged exposures: AUC, GAUC, log loss, NDCG@k and Recall@k, overall and per group,
and paired bootstrap intervals for the AUC and log-loss differences of two models on the same rows.

Everything is vectorised numpy (a sort, then segment sums with ``bincount`` / ``reduceat``), so a
metric over tens of millions of rows costs a sort or two. The rank metrics treat a
label as positive when it is above 0.5; log loss uses the labels as given. Tied scores are averaged:
AUC gives tied pairs half credit, and NDCG/Recall are their expectations over a random order of
tied candidates, so a constant scorer gets no credit from the order the rows were logged in.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from distrec.eval.groups import GROUP_NAMES


class RankingMetrics(NamedTuple):
    """Means over users with at least one positive, and the per-user values behind them."""

    ndcg: float
    recall: float
    users: np.ndarray
    user_ndcg: np.ndarray
    user_recall: np.ndarray


def _columns(*arrays: npt.ArrayLike) -> list[np.ndarray]:
    out = [np.asarray(a) for a in arrays]
    for a in out:
        if a.ndim != 1 or a.size != out[0].size:
            raise ValueError(f"expected 1-D arrays of equal length, got shapes {[x.shape for x in out]}")
    bad = int((~np.isfinite(out[-1])).sum())
    if bad:
        raise ValueError(f"{bad} of {out[-1].size} scores are not finite")
    return out


def _ties(seg: np.ndarray, scores: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of equal (segment, score) in rows sorted by them: start row, length and positives of each run."""
    n = scores.size
    new = np.ones(n, dtype=bool)
    new[1:] = (seg[1:] != seg[:-1]) | (scores[1:] != scores[:-1])
    start = np.flatnonzero(new)
    size = np.diff(np.append(start, n))
    positives = np.add.reduceat(pos.astype(np.int64), start) if n else np.zeros(0, np.int64)
    return start, size, positives


def _segment_auc(seg: np.ndarray, scores: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """AUC of each segment; rows sorted by (segment id 0..S-1, ascending score).

    Mann-Whitney: AUC = (sum of positives' ranks - P(P+1)/2) / (P N), ranks 1-based within the
    segment and averaged over ties. NaN for a segment without both classes.
    """
    start, size, positives = _ties(seg, scores, pos)
    tie_seg = seg[start]
    num_seg = int(seg[-1]) + 1 if seg.size else 0
    seg_start = np.searchsorted(seg, np.arange(num_seg))
    mean_rank = start + (size + 1) / 2.0 - seg_start[tie_seg]
    rank_sum = np.bincount(tie_seg, weights=positives * mean_rank, minlength=num_seg)
    n_pos = np.bincount(tie_seg, weights=positives, minlength=num_seg)
    n_neg = np.bincount(tie_seg, weights=size, minlength=num_seg) - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    out[(n_pos == 0) | (n_neg == 0)] = np.nan
    return out


def _sorted_auc(scores: np.ndarray, pos: np.ndarray) -> float:
    """AUC of rows sorted by ascending score."""
    return float(_segment_auc(np.zeros(scores.size, np.int64), scores, pos)[0]) if scores.size else float("nan")


class _ByUser(NamedTuple):
    """Rows sorted by (user, ascending score), cut into one segment per user."""

    order: np.ndarray  # row of the original arrays at each sorted position
    scores: np.ndarray
    pos: np.ndarray
    seg: np.ndarray  # segment (user) index 0..U-1 of each sorted row
    seg_start: np.ndarray
    ids: np.ndarray  # user id of each segment, ascending
    rows: np.ndarray  # rows of each segment


def _by_user(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> _ByUser:
    order = np.lexsort((scores, users))
    sorted_users = users[order]
    seg = np.zeros(users.size, dtype=np.int64)
    if users.size:
        np.cumsum(sorted_users[1:] != sorted_users[:-1], out=seg[1:])
    num_seg = int(seg[-1]) + 1 if seg.size else 0
    seg_start = np.searchsorted(seg, np.arange(num_seg))
    rows = np.diff(np.append(seg_start, users.size))
    return _ByUser(order, scores[order], labels[order] > 0.5, seg, seg_start, sorted_users[seg_start], rows)


def _user_ranking(s: _ByUser, k: int) -> tuple[np.ndarray, np.ndarray]:
    """NDCG@k and Recall@k of each user, NaN for users without a positive."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    _, size, positives = _ties(s.seg, s.scores, s.pos)
    # Expected gain of a row in a tie: the share of positives in that tie, wherever the row falls in it.
    gain = np.repeat(positives / size, size)
    # Scores ascend within a user, so the 0-based position from the top counts back from the user's last row.
    rank = (s.seg_start + s.rows - 1)[s.seg] - np.arange(s.seg.size)
    top = rank < k
    discount = 1.0 / np.log2(np.arange(k) + 2.0)
    dcg = np.bincount(s.seg[top], weights=gain[top] * discount[rank[top]], minlength=s.ids.size)
    hits = np.bincount(s.seg[top], weights=gain[top], minlength=s.ids.size)
    n_pos = np.bincount(s.seg, weights=s.pos, minlength=s.ids.size)
    ideal = np.concatenate(([0.0], np.cumsum(discount)))[np.minimum(n_pos, k).astype(np.int64)]
    with np.errstate(divide="ignore", invalid="ignore"):
        return dcg / ideal, hits / n_pos


def _nanmean(values: np.ndarray, weights: np.ndarray | None = None) -> float:
    """(Weighted) mean over the non-NaN values; NaN when there are none."""
    ok = ~np.isnan(values)
    if not ok.any():
        return float("nan")
    return float(np.average(values[ok], weights=None if weights is None else weights[ok]))


def auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve, ties averaged; NaN when only one class is present.

    Exactly the mean over positives of (negatives scored below it + half those tied with it) / negatives:
    each positive's two counts by binary search in the negatives' sorted scores. No sort of every row
    and no tie runs, so it holds about 20 bytes a row where the sort held about 50 (a training rank
    validates millions of rows with it)."""
    labels, scores = _columns(labels, scores)
    pos = labels > 0.5
    negatives = np.sort(scores[~pos])
    positives = scores[pos]
    if not positives.size or not negatives.size:
        return float("nan")
    below = np.searchsorted(negatives, positives, side="left").sum(dtype=np.int64)
    up_to = np.searchsorted(negatives, positives, side="right").sum(dtype=np.int64)
    return float((below + up_to) / (2.0 * positives.size * negatives.size))


def gauc(users: npt.ArrayLike, labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Impression-weighted mean of per-user AUC over the users that have both classes (NaN if none)."""
    s = _by_user(*_columns(users, labels, scores))
    return _nanmean(_segment_auc(s.seg, s.scores, s.pos), s.rows)


def logloss(labels: npt.ArrayLike, probs: npt.ArrayLike, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy with probabilities clipped to ``[eps, 1 - eps]``; NaN when empty."""
    labels, probs = _columns(labels, probs)
    if not probs.size:
        return float("nan")
    y = labels.astype(np.float64)
    p = np.clip(probs.astype(np.float64), eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def score_confounder_mi(scores: npt.ArrayLike, confounder: npt.ArrayLike, bins: int = 20) -> float:
    """I(score; C) in nats: how much the exposure confounder C can be read off a model's score.

    The plug-in estimate over ``bins`` equal-count bins of the score (so any monotone transform of the
    score gives the same value) and the codes of C, less the Miller-Madow bias (B - 1)(K - 1) / 2N of
    the plug-in, floored at 0. CRL trains the critic's estimate of I(Z; C) down; this is a held-out
    reading of the same quantity on a test split, with no critic. NaN when empty.
    """
    scores, codes = _columns(scores, confounder)
    if not scores.size:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.int64)
    ranks[order] = np.searchsorted(scores[order], scores[order], side="left")  # tied scores share a rank
    score_bin = ranks * bins // len(scores)
    _, code = np.unique(codes, return_inverse=True)
    counts = np.bincount(score_bin * (code.max() + 1) + code, minlength=bins * (code.max() + 1))
    joint = counts.reshape(bins, code.max() + 1) / len(scores)
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    nonzero = joint > 0
    plug_in = float(np.sum(joint[nonzero] * np.log(joint[nonzero] / outer[nonzero])))
    occupied = (np.count_nonzero(joint.sum(1)) - 1) * (np.count_nonzero(joint.sum(0)) - 1)
    return max(plug_in - float(occupied) / (2 * len(scores)), 0.0)


def ranking_metrics(users: npt.ArrayLike, labels: npt.ArrayLike, scores: npt.ArrayLike, k: int = 10) -> RankingMetrics:
    """NDCG@k and Recall@k of each user's logged candidates ranked by score.

    This ranks only the rows logged for the user (their exposures), not the full item catalogue,
    so values are not comparable with full-ranking benchmarks. Relevance is binary; Recall@k is the
    user's positives in the top k over all their logged positives. Users without a positive are
    left out. Ties count as their expectation over a random order of the tied rows.
    """
    s = _by_user(*_columns(users, labels, scores))
    ndcg, recall = _user_ranking(s, k)
    ok = ~np.isnan(ndcg)
    return RankingMetrics(_nanmean(ndcg), _nanmean(recall), s.ids[ok], ndcg[ok], recall[ok])


def evaluate(
    users: npt.ArrayLike,
    labels: npt.ArrayLike,
    scores_prob: npt.ArrayLike,
    groups: Mapping[str, npt.ArrayLike] | npt.ArrayLike | None = None,
    k: int = 10,
    group_names: Sequence[str] = GROUP_NAMES,
) -> dict[str, Any]:
    """All metrics of one split, plus ``"groups": {name: metrics}`` over each user group.

    ``groups`` is either ``{name: user ids}`` (groups may overlap) or an array mapping every user id
    to a group index, named by ``group_names`` (e.g. from :func:`distrec.eval.groups.activity_groups`).
    The split is sorted twice (by score; by user and score). A group is a subset of users, so its
    metrics come from the same sorted rows and per-user values, without sorting again.
    """
    users, labels, scores = _columns(users, labels, scores_prob)
    s = _by_user(users, labels, scores)
    user_auc = _segment_auc(s.seg, s.scores, s.pos)
    user_ndcg, user_recall = _user_ranking(s, k)
    score_order = np.argsort(scores)
    by_score, pos_by_score = scores[score_order], labels[score_order] > 0.5
    row_user = np.empty(users.size, dtype=np.int64)
    row_user[s.order] = s.seg

    def summary(members: np.ndarray) -> dict[str, Any]:
        """Metrics of the rows of the users (segments) where ``members`` is True."""
        rows = members[row_user]
        sorted_rows = rows[score_order]
        n = int(rows.sum())
        return {
            "auc": _sorted_auc(by_score[sorted_rows], pos_by_score[sorted_rows]),
            "gauc": _nanmean(user_auc[members], s.rows[members]),
            "logloss": logloss(labels[rows], scores[rows]),
            f"ndcg@{k}": _nanmean(user_ndcg[members]),
            f"recall@{k}": _nanmean(user_recall[members]),
            "rows": n,
            "ctr": float(labels[rows].mean(dtype=np.float64)) if n else float("nan"),
            "mean_pred": float(scores[rows].mean(dtype=np.float64)) if n else float("nan"),
        }

    out = summary(np.ones(s.ids.size, dtype=bool))
    if groups is None:
        return out
    if isinstance(groups, Mapping):
        members = {name: np.isin(s.ids, np.asarray(ids)) for name, ids in groups.items()}
    else:
        user_group = np.asarray(groups)
        if users.size and (users.min() < 0 or users.max() >= user_group.size):
            raise ValueError(f"user ids reach {users.max()}, but the group map covers {user_group.size} users")
        if user_group.size and (user_group.min() < 0 or user_group.max() >= len(group_names)):
            raise ValueError(f"group indices must be in [0, {len(group_names)}) to be named by {group_names}")
        members = {name: user_group[s.ids] == g for g, name in enumerate(group_names)}
    out["groups"] = {name: summary(m) for name, m in members.items()}
    return out


def _weighted_sorted_auc(tie: np.ndarray, pos: np.ndarray, weights: np.ndarray) -> float:
    """AUC of rows sorted by ascending score, each row counted ``weights`` times; ``tie`` numbers the
    runs of equal scores 0, 1, ... (tied pairs get half credit, as in :func:`auc`)."""
    num_ties = int(tie[-1]) + 1 if tie.size else 0
    neg = np.bincount(tie, weights=weights * ~pos, minlength=num_ties)
    positive = np.bincount(tie, weights=weights * pos, minlength=num_ties)
    pairs = positive.sum() * neg.sum()
    if pairs == 0:
        return float("nan")
    below = np.cumsum(neg) - neg
    return float((positive * (below + 0.5 * neg)).sum() / pairs)


def _user_bootstrap(users: np.ndarray, resamples: int, level: float, seed: int) -> Iterator[np.ndarray]:
    """Row weights of ``resamples`` bootstraps of whole users (each user drawn with all its rows)."""
    if resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"need resamples >= 1 and 0 < level < 1, got {resamples} and {level}")
    ids, row_user = np.unique(users, return_inverse=True)
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield np.bincount(rng.integers(0, ids.size, ids.size), minlength=ids.size)[row_user].astype(np.float64)


def _percentiles(diffs: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    if np.isnan(diffs).all():
        return float("nan"), float("nan")
    lo, hi = np.nanquantile(diffs, [tail, 1.0 - tail])
    return float(lo), float(hi)


def paired_auc_interval(
    users: npt.ArrayLike,
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    reference: npt.ArrayLike,
    resamples: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of ``AUC(scores) - AUC(reference)`` over a bootstrap of users.

    Both models are scored on the same resampled rows (paired, so what they share cancels), and users
    are drawn whole with their rows: a user's rows are correlated, and resampling rows alone would
    make the interval too narrow. It measures the test set's sampling noise, not the seed's.
    """
    users, labels, scores = _columns(users, labels, scores)
    reference = _columns(users, reference)[1]
    sides = []
    for side in (scores, reference):
        order = np.argsort(side, kind="stable")
        ordered = side[order]
        tie = np.zeros(ordered.size, dtype=np.int64)
        if ordered.size:
            np.cumsum(ordered[1:] != ordered[:-1], out=tie[1:])
        sides.append((order, tie, labels[order] > 0.5))
    (oa, ta, pa), (ob, tb, pb) = sides
    diffs = [
        _weighted_sorted_auc(ta, pa, weights[oa]) - _weighted_sorted_auc(tb, pb, weights[ob])
        for weights in _user_bootstrap(users, resamples, level, seed)
    ]
    return _percentiles(np.array(diffs), level)


def paired_logloss_interval(
    users: npt.ArrayLike,
    labels: npt.ArrayLike,
    probs: npt.ArrayLike,
    reference: npt.ArrayLike,
    resamples: int = 200,
    level: float = 0.95,
    seed: int = 0,
    eps: float = 1e-7,
) -> tuple[float, float]:
    """Percentile interval of ``logloss(probs) - logloss(reference)`` over a bootstrap of users, as
    :func:`paired_auc_interval` (the same draws for the same users and seed)."""
    users, labels, probs = _columns(users, labels, probs)
    reference = _columns(users, reference)[1]
    y = labels.astype(np.float64)

    def row_loss(p: np.ndarray) -> np.ndarray:
        p = np.clip(p.astype(np.float64), eps, 1.0 - eps)
        return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))

    gap = row_loss(probs) - row_loss(reference)
    diffs = [
        (weights * gap).sum() / weights.sum() if weights.sum() else np.nan
        for weights in _user_bootstrap(users, resamples, level, seed)
    ]
    return _percentiles(np.array(diffs, dtype=np.float64), level)
