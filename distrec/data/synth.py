"""Synthetic confounded interaction logs from a structural causal model with exact ground truth.

The SCM (constants below, all recorded in ``manifest.source``)::

    user u:      p_u ~ N(0, I_dim)          latent preferences
                 a_u ~ N(0, 1)              a stable user trait (unobserved): raises clicks, and activity
                 w_u = exp(activity * xi_u + ACTIVITY_TRAIT * a_u)   activity: rows are drawn with P(u) ~ w_u,
                                            lognormal, so the most active fifth has >10x the rows of the least
    item i:      q_i ~ N(0, I_dim)          causal embedding
                 b_i ~ N(0, POP_SD^2)       popularity bias
                 s_i in {0..T-1}            spurious tag, observed as sparse feature ``item_tag``
                 sgn(s) = +1 for even tags, -1 for odd tags
    exposure:    V ~ N(0, 1) per row        the session confounder (unobserved), independent of the user
                 logging policy: P(sgn = +1 | V) = sigmoid(confounding * V), then an item of that sign
                 with P(i | sgn) proportional to exp(pop_tilt * b_i); propensity = P(sgn | V) * P(i | sgn)
                 flipped policy: the same with -confounding; random policy: uniform, propensity 1/items
    click:       eta = B0 + W_C * p_u.q_i / sqrt(dim) + b_i + W_A * a_u
                 true_ctr = sigmoid(eta + W_V * V),  label ~ Bernoulli(true_ctr)

The tag has no effect on clicks; under the logging policy it correlates with clicks only through V, and
under the flipped policy (split ``test_ood``) that correlation changes sign. The observed confounders
describe the exposure, not the user: ``conf_session`` (a noisy proxy of V in 8 quantile buckets) and
``conf_policy`` (0 logging, 1 random, 2 flipped). Each user's history is a fixed list of past positives
(oldest first) drawn under the logging policy; its length grows with the user's activity.

Exact truths per row, by Gauss-Hermite quadrature over V (``TRUTH_NODES`` nodes):

    p_do   = E_V[sigmoid(eta + W_V V)]                     P(Y | u, do(i)): what a deconfounded model can learn
    p_obs  = E[sigmoid(eta + W_V V) | sgn(s_i) shown by the logging policy]    the logs' Bayes predictor
           = int sigmoid(eta + W_V v) e(v) phi(v) dv / int e(v) phi(v) dv,  e(v) = sigmoid(sgn * confounding * v)

``p_obs`` uses the logging policy on every split (on test_ood too: it is what a perfect fit of the logs
predicts there), so AUC(p_obs) and AUC(p_do) on test_ood are the observational and interventional
ceilings. ``true_ctr`` also knows the row's V: an oracle, no model's target.

Every random draw of row k comes from a counter-based generator keyed by (seed, stream, k), so the data
depend on the seed only: ``chunk_rows`` and ``rows_per_file`` change memory use and file layout, not rows.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distrec.data.importer import gather_lists
from distrec.data.schema import (
    HISTORY,
    IS_RANDOM,
    ITEM,
    LABEL,
    P_DO,
    P_OBS,
    POLICY,
    PROPENSITY,
    TRUE_CTR,
    TS,
    USER,
    Manifest,
    SparseFeature,
    partition_name,
)
from distrec.errors import ConfigError
from distrec.io import atomic_dir

B0 = -1.6  # click intercept
W_C = 1.5  # weight of the causal preference p_u.q_i / sqrt(dim)
W_A = 0.5  # weight of the stable user trait a_u
W_V = 1.0  # weight of the session confounder V
ACTIVITY_TRAIT = 0.3  # how much a_u raises a user's activity
POP_SD = 0.5  # standard deviation of the item popularity bias b_i
HISTORY_DRAWS = 6  # exposures simulated per history slot; users with few clicks get shorter histories
SESSION_BUCKETS = 8
TRUTH_NODES = 48
EVAL_FRACTION = 0.1  # share of rows in each of valid, test_id and test_ood
START_DAY = dt.date(2026, 1, 1)

TAG = "item_tag"
CONF_SESSION = "conf_session"
CONF_POLICY = "conf_policy"
LOGGING, RANDOM, FLIPPED = "policy_ts", "random", "policy_flipped"
POLICY_CODE = {LOGGING: 0, RANDOM: 1, FLIPPED: 2}


class _Stream(IntEnum):
    USER = 0
    EPS_A = 1
    EPS_B = 2
    RANDOM = 3
    SIGN = 4
    ITEM = 5
    CLICK = 6
    PROXY_A = 7
    PROXY_B = 8
    HIST_EPS_A = 9
    HIST_EPS_B = 10
    HIST_SIGN = 11
    HIST_ITEM = 12
    HIST_CLICK = 13


def _splitmix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class _Counter:
    """Counter-based random numbers: draw k of a stream depends only on (seed, stream, k)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def uniform(self, stream: _Stream, k: np.ndarray) -> np.ndarray:
        """Uniform in the open interval (0, 1)."""
        key = _splitmix(np.array([((self.seed << 8) | int(stream)) & 0xFFFF_FFFF_FFFF_FFFF], dtype=np.uint64))
        z = _splitmix(k.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + key)
        return ((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53

    def normal(self, a: _Stream, b: _Stream, k: np.ndarray) -> np.ndarray:
        """Standard normal by Box-Muller from two uniform streams."""
        return np.sqrt(-2.0 * np.log(self.uniform(a, k))) * np.cos(2.0 * np.pi * self.uniform(b, k))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class _World:
    """Latent variables of users and items, and the policy's per-sign item distributions."""

    pref: np.ndarray  # (users, dim) p_u
    trait: np.ndarray  # (users,) a_u
    user_cdf: np.ndarray  # (users,) cumulative P(u), proportional to the activity w_u
    emb: np.ndarray  # (items, dim) q_i
    bias: np.ndarray  # (items,) b_i
    tag: np.ndarray  # (items,) s_i
    positive: np.ndarray  # (items,) sgn(s_i) == +1
    groups: tuple[np.ndarray, np.ndarray]  # items of sign -1 and of sign +1
    cdfs: tuple[np.ndarray, np.ndarray]  # cumulative P(i | sgn) over each group
    p_in_group: np.ndarray  # (items,) P(i | sgn(s_i))
    confounding: float

    def users(self, u: np.ndarray) -> np.ndarray:
        """Users drawn in proportion to their activity, from uniforms ``u``."""
        return np.minimum(np.searchsorted(self.user_cdf, u, side="right"), len(self.trait) - 1)

    def expose(
        self, session: np.ndarray, flip: bool, u_sign: np.ndarray, u_item: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Items the (possibly flipped) logging policy shows in these sessions, with their propensities."""
        p_plus = _sigmoid((-1.0 if flip else 1.0) * self.confounding * session)
        plus = u_sign < p_plus
        items = np.empty(len(session), dtype=np.int64)
        for sign, (group, cdf) in enumerate(zip(self.groups, self.cdfs, strict=True)):
            rows = plus == bool(sign)
            pick = np.minimum(np.searchsorted(cdf, u_item[rows], side="right"), len(group) - 1)
            items[rows] = group[pick]
        propensity = np.where(plus, p_plus, 1.0 - p_plus) * self.p_in_group[items]
        return items, propensity

    def logit(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """eta: the click logit without the session confounder."""
        affinity = np.einsum("nd,nd->n", self.pref[users], self.emb[items]) / math.sqrt(self.pref.shape[1])
        return B0 + W_C * affinity + self.bias[items] + W_A * self.trait[users]

    def ctr(self, users: np.ndarray, items: np.ndarray, session: np.ndarray) -> np.ndarray:
        return _sigmoid(self.logit(users, items) + W_V * session)

    def truths(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p_obs, p_do) of each row (see the module docstring), by Gauss-Hermite quadrature over V."""
        nodes, weights = np.polynomial.hermite_e.hermegauss(TRUTH_NODES)  # for the weight exp(-v^2 / 2)
        weights = weights / weights.sum()
        eta = self.logit(users, items)[:, None]
        click = _sigmoid(eta + W_V * nodes[None, :])  # [rows, nodes]
        sign = np.where(self.positive[items], 1.0, -1.0)[:, None]
        exposure = _sigmoid(sign * self.confounding * nodes[None, :])  # P(sign | v) under logging
        p_do = click @ weights
        p_obs = (click * exposure) @ weights / (exposure @ weights)
        return p_obs, p_do


def _world(
    users: int, items: int, dim: int, num_tags: int, pop_tilt: float, activity: float, confounding: float, seed: int
) -> _World:
    rng = np.random.default_rng(seed)
    pref = rng.standard_normal((users, dim))
    trait = rng.standard_normal(users)
    weight_u = np.exp(activity * rng.standard_normal(users) + ACTIVITY_TRAIT * trait)
    user_cdf = np.cumsum(weight_u) / weight_u.sum()
    emb = rng.standard_normal((items, dim))
    bias = POP_SD * rng.standard_normal(items)
    tag = rng.permutation(np.arange(items) % num_tags)
    positive = tag % 2 == 0
    weight = np.exp(pop_tilt * bias)
    groups = (np.flatnonzero(~positive), np.flatnonzero(positive))
    cdfs = (
        np.cumsum(weight[groups[0]]) / weight[groups[0]].sum(),
        np.cumsum(weight[groups[1]]) / weight[groups[1]].sum(),
    )
    p_in_group = weight / np.where(positive, weight[groups[1]].sum(), weight[groups[0]].sum())
    return _World(pref, trait, user_cdf, emb, bias, tag, positive, groups, cdfs, p_in_group, confounding)


def _histories(world: _World, rng: _Counter, history_len: int, block_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user past positives under the logging policy: (flat item ids, per-user lengths).

    A user's history is capped at ``history_len`` times the user's activity relative to the median user.
    """
    weight = np.diff(np.concatenate([[0.0], world.user_cdf]))
    activity_share = np.clip(weight / np.median(weight), 0.0, 1.0)
    users = len(world.trait)
    draws = HISTORY_DRAWS * history_len
    flat: list[np.ndarray] = []
    lengths = np.zeros(users, dtype=np.int64)
    for lo in range(0, users, block_users):
        hi = min(users, lo + block_users)
        user = np.repeat(np.arange(lo, hi), draws)
        k = np.arange(lo * draws, hi * draws)
        session = rng.normal(_Stream.HIST_EPS_A, _Stream.HIST_EPS_B, k)
        item, _ = world.expose(session, False, rng.uniform(_Stream.HIST_SIGN, k), rng.uniform(_Stream.HIST_ITEM, k))
        click = (rng.uniform(_Stream.HIST_CLICK, k) < world.ctr(user, item, session)).reshape(hi - lo, draws)
        # a user's history holds at most as many positives as the user is active (tail users: short ones)
        cap = np.minimum(history_len, np.ceil(history_len * activity_share[lo:hi])).astype(np.int64)
        keep = click & (np.cumsum(click, axis=1) <= cap[:, None])
        lengths[lo:hi] = keep.sum(axis=1)
        flat.append(item.reshape(hi - lo, draws)[keep])
    return np.concatenate(flat), lengths


@dataclass(frozen=True)
class _Partition:
    split: str
    day: int  # days after START_DAY
    rows: int
    offset: int  # global index of the first row
    flip: bool
    random_fraction: float

    @property
    def ds(self) -> str:
        return partition_name((START_DAY + dt.timedelta(days=self.day)).isoformat())


def _plan(rows: int, days: int, random_fraction: float) -> list[_Partition]:
    n_eval = int(rows * EVAL_FRACTION)
    train_days = days - 2
    n_train = rows - 3 * n_eval
    sizes = [n_train // train_days + (d < n_train % train_days) for d in range(train_days)]
    specs = [("train", d, n, False, random_fraction) for d, n in enumerate(sizes)]
    specs += [("valid", days - 2, n_eval, False, 0.0), ("test_id", days - 1, n_eval, False, 0.0)]
    specs += [("test_ood", days - 1, n_eval, True, 0.0)]
    if min(s[2] for s in specs) == 0:
        raise ConfigError(f"synthesize: rows={rows} is too few for {days} days; every partition needs a row")
    offsets = np.cumsum([0] + [s[2] for s in specs])
    return [_Partition(s, d, n, int(o), f, r) for (s, d, n, f, r), o in zip(specs, offsets[:-1], strict=True)]


def _chunk(
    world: _World,
    rng: _Counter,
    part: _Partition,
    lo: int,
    hi: int,
    history: tuple[np.ndarray, np.ndarray, np.ndarray],
    session_edges: np.ndarray,
    session_noise: float,
    schema: pa.Schema,
) -> pa.Table:
    """Rows ``lo:hi`` of one partition."""
    n_items = len(world.bias)
    local = np.arange(lo, hi)
    k = part.offset + local
    user = world.users(rng.uniform(_Stream.USER, k))
    session = rng.normal(_Stream.EPS_A, _Stream.EPS_B, k)
    u_item = rng.uniform(_Stream.ITEM, k)
    item, propensity = world.expose(session, part.flip, rng.uniform(_Stream.SIGN, k), u_item)
    is_random = rng.uniform(_Stream.RANDOM, k) < part.random_fraction
    item[is_random] = np.minimum((u_item[is_random] * n_items).astype(np.int64), n_items - 1)
    propensity[is_random] = 1.0 / n_items
    ctr = world.ctr(user, item, session)
    p_obs, p_do = world.truths(user, item)
    label = rng.uniform(_Stream.CLICK, k) < ctr
    policy = np.where(is_random, RANDOM, FLIPPED if part.flip else LOGGING)
    proxy = session + session_noise * rng.normal(_Stream.PROXY_A, _Stream.PROXY_B, k)
    day_start = int(dt.datetime.combine(START_DAY, dt.time(), dt.UTC).timestamp()) + part.day * 86_400
    flat, starts, lengths = history
    columns = {
        USER: user,
        ITEM: item,
        LABEL: label.astype(np.float32),
        TS: day_start + local * 86_400 // part.rows,
        POLICY: policy,
        PROPENSITY: propensity.astype(np.float32),
        IS_RANDOM: is_random,
        HISTORY: gather_lists(flat, starts[user], lengths[user]),
        TAG: world.tag[item].astype(np.int64),
        CONF_SESSION: np.searchsorted(session_edges, proxy).astype(np.int64),
        CONF_POLICY: np.where(is_random, POLICY_CODE[RANDOM], POLICY_CODE[FLIPPED if part.flip else LOGGING]),
        TRUE_CTR: ctr.astype(np.float32),
        P_OBS: p_obs.astype(np.float32),
        P_DO: p_do.astype(np.float32),
    }
    return pa.table(columns, schema=schema)


def _write_truth(root: Path, world: _World) -> None:
    """Ground-truth latents beside the data, for evaluating causal estimates against the SCM."""
    (root / "scm").mkdir()
    dim = world.pref.shape[1]
    users = {
        USER: np.arange(len(world.trait)),
        "a": world.trait,
        "activity": np.diff(np.concatenate([[0.0], world.user_cdf])),
        "p": pa.FixedSizeListArray.from_arrays(world.pref.ravel(), dim),
    }
    items = {
        ITEM: np.arange(len(world.bias)),
        TAG: world.tag.astype(np.int64),
        "sign": np.where(world.positive, 1, -1),
        "b": world.bias,
        "q": pa.FixedSizeListArray.from_arrays(world.emb.ravel(), dim),
    }
    pq.write_table(pa.table(users), root / "scm" / "users.parquet")
    pq.write_table(pa.table(items), root / "scm" / "items.parquet")


def synthesize(
    out: Path,
    rows: int,
    *,
    users: int = 2000,
    items: int = 1000,
    dim: int = 8,
    days: int = 7,
    history_len: int = 20,
    random_fraction: float = 0.05,
    confounding: float = 2.0,
    activity: float = 1.0,
    num_tags: int = 16,
    pop_tilt: float = 0.5,
    session_noise: float = 0.5,
    seed: int = 0,
    chunk_rows: int = 200_000,
    rows_per_file: int = 1_000_000,
    name: str = "synth",
    overwrite: bool = False,
) -> Manifest:
    """Write ``rows`` synthetic exposures (all splits together) as a dataset directory at ``out``.

    Splits: train = days 1..days-2 (logging policy plus a ``random_fraction`` uniform slice), valid = day
    days-1, test_id = last day under the logging policy, test_ood = last day under the flipped policy;
    valid, test_id and test_ood hold ~10% of ``rows`` each. Memory is bounded by ``chunk_rows`` (plus
    users x history_len for the histories); a partition's file rolls over after ``rows_per_file`` rows
    rounded up to whole chunks.
    """
    if days < 3 or users < 1 or items < 2 or dim < 1 or num_tags < 2 or history_len < 0 or seed < 0:
        raise ConfigError(
            "synthesize: need days >= 3, users >= 1, items >= 2, dim >= 1, num_tags >= 2, history_len >= 0, seed >= 0"
        )
    if not (0.0 <= random_fraction <= 1.0 and activity >= 0.0 and chunk_rows >= 1 and rows_per_file >= 1):
        raise ConfigError("synthesize: need 0 <= random_fraction <= 1, activity >= 0, chunk_rows, rows_per_file >= 1")
    if chunk_rows * max(history_len, 1) >= 2**31:
        raise ConfigError("synthesize: chunk_rows * history_len must stay below 2**31 (Arrow list offsets)")
    plan = _plan(rows, days, random_fraction)
    world = _world(users, items, dim, num_tags, pop_tilt, activity, confounding, seed)
    rng = _Counter(seed)
    flat, lengths = _histories(world, rng, history_len, max(1, chunk_rows // max(1, HISTORY_DRAWS * history_len)))
    history = (flat, np.cumsum(lengths) - lengths, lengths)
    proxy_sd = math.sqrt(1.0 + session_noise**2)  # V is N(0, 1); the proxy adds independent noise
    edges = np.array([proxy_sd * NormalDist().inv_cdf(q / SESSION_BUCKETS) for q in range(1, SESSION_BUCKETS)])

    manifest = Manifest(
        name=name,
        sparse=[
            SparseFeature(USER, users, "user"),
            SparseFeature(ITEM, items, "item"),
            SparseFeature(TAG, num_tags, "item"),
        ],
        confounders={CONF_SESSION: SESSION_BUCKETS, CONF_POLICY: len(POLICY_CODE)},
        history_max_len=history_len,
        has_true_ctr=True,
        source={
            "generator": "distrec.data.synth",
            "seed": seed,
            "rows": rows,
            "scm": {
                "users": users,
                "items": items,
                "dim": dim,
                "days": days,
                "history_len": history_len,
                "history_draws": HISTORY_DRAWS,
                "random_fraction": random_fraction,
                "confounding": confounding,
                "activity": activity,
                "activity_trait": ACTIVITY_TRAIT,
                "num_tags": num_tags,
                "pop_tilt": pop_tilt,
                "pop_sd": POP_SD,
                "session_noise": session_noise,
                "b0": B0,
                "w_c": W_C,
                "w_a": W_A,
                "w_v": W_V,
                "policies": POLICY_CODE,
                "start_day": START_DAY.isoformat(),
            },
        },
    )
    schema = manifest.schema()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for part in plan:
            directory = tmp / part.split / part.ds
            directory.mkdir(parents=True)
            manifest.splits.setdefault(part.split, []).append(part.ds)
            manifest.rows[part.split] = manifest.rows.get(part.split, 0) + part.rows
            per_file = -(-rows_per_file // chunk_rows) * chunk_rows  # files roll over at chunk boundaries
            for f, start in enumerate(range(0, part.rows, per_file)):
                with pq.ParquetWriter(directory / f"part-{f:05d}.parquet", schema) as writer:
                    for lo in range(start, min(part.rows, start + per_file), chunk_rows):
                        hi = min(part.rows, lo + chunk_rows)
                        writer.write_table(_chunk(world, rng, part, lo, hi, history, edges, session_noise, schema))
        _write_truth(tmp, world)
        manifest.write(tmp)
    return manifest
