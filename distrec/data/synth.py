"""Synthetic confounded interaction logs from a structural causal model with exact ground truth.

The SCM has both kinds of confounding distrec's students claim to fix, each with its exact target
(constants below, all recorded in ``manifest.source``)::

    user u:      p_u ~ N(0, I_dim)          taste: steers the history, nothing else
                 U_u = a_u ~ N(0, 1)        the unobserved user confounder: a taste for "social" items
                 w_u = exp(activity * xi_u + ACTIVITY_TRAIT * a_u)   rows are drawn with P(u) ~ w_u:
                                            lognormal, so the most active fifth has >10x the rows of the least
    item i:      q_i ~ N(0, I_dim), b_i ~ N(0, POP_SD^2), tag s_i (observed as ``item_tag``)
                 sgn(s_i) = +1 for even tags, -1 for odd ones     (the exposure side)
                 r_i = +1 if (s_i // 2) is even, else -1           (social or not: the user side)
    history X:   a pool of POOL_FACTOR * L_u past items per user, P(h | u) ~ exp(ALPHA p_u.q_h / sqrt(dim)
                 + LAMBDA_U a_u r_h)  (U -> X); each row sees L_u consecutive pool items from a random offset,
                 L_u = min(history_len, ceil(history_len * activity_u / median activity)): tail users, short ones
    mediator M:  P(m | x) = softmax_m(BETA_M c_m.mean_{h in x} q_h / sqrt(dim)), m = 1..MEDIATORS, drawn per
                 row (uniform for an empty history): a function of X only (no U -> M)
    exposure:    V ~ N(0, 1) per row        the session confounder (unobserved), independent of the user
                 logging policy: P(sgn = +1 | V) = sigmoid(confounding * V), then an item of that sign
                 with P(i | sgn) proportional to exp(pop_tilt * b_i); propensity = P(sgn | V) * P(i | sgn)
                 flipped policy: the same with -confounding; random policy: uniform, propensity 1/items
    click:       eta = B0 + W_M c_m.q_i / sqrt(dim) + b_i + W_U a_u r_i
                 true_ctr = sigmoid(eta + W_V V),  label ~ Bernoulli(true_ctr)

X acts on Y only through M, and U confounds X and Y: the front-door setting of CausalD. V confounds
which items are shown and Y: the exposure setting of CRL. The tag has no effect on clicks; under the
logging policy its sign correlates with clicks only through V, and under the flipped policy (split
``test_ood``) that correlation changes sign. The observed confounder describes the exposure, not the
user: ``conf_session``, a noisy proxy of V in 8 quantile buckets. (The policy is in the ``policy`` and
``is_random`` columns but is not a confounder column: the random slice shows unpopular items more often,
so penalising I(Z; policy) would remove item popularity, a real effect, along with nothing spurious.)

Splits: train, valid, test_id under the logging policy (train also has a ``random_fraction`` uniform
slice), test_ood under the flipped policy, ``test_do``: X set by intervention, and ``valid_random``
under the random policy: a validation split on which deconfounding pays, to select CRL's settings on
(``train.valid_split``) without looking at a test split; ``valid_do`` is test_do's validation twin (the
day before, its own rows), on which CausalD's settings are selected the same way. On test_do and
valid_do each row's U is drawn afresh from the population (a random user's a, by activity), independent
of the user id and the history, so P(Y | u, x, i) there is exactly the front-door target ``p_fd``.

Exact truths per row (Gauss-Hermite quadrature over V with ``TRUTH_NODES`` nodes, an exact sum over the
mediators and, for p_fd, over the users)::

    p_obs = sum_m P(m|x) E[sigmoid(eta + W_V V) | sgn(s_i) shown by logging]   the logs' Bayes predictor
    p_do  = sum_m P(m|x) E_V[sigmoid(eta + W_V V)]            P(Y | u, x, do(i)): CRL's target
    p_fd  = sum_m P(m|x) sum_u' P(u') E[sigmoid(eta(a_u') + W_V V) | sgn(s_i) shown]   P(Y | do(x), i):
            CausalD's front-door target; U averaged over the population, the exposure as logged

``p_obs`` and ``p_fd`` use the logging policy on every split (what a perfect fit of the logs predicts),
so AUC(p_obs) and AUC(p_do) on test_ood are the observational and interventional ceilings, and p_fd is
the Bayes predictor on test_do. ``true_ctr`` also knows the row's V and M: an oracle, no model's target.

Every random draw of row k comes from a counter-based generator keyed by (seed, stream, k), so the data
depend on the seed only: ``chunk_rows`` and ``rows_per_file`` change memory use and file layout, not rows.
"""

from __future__ import annotations

import datetime as dt
import math
import multiprocessing
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
    P_FD,
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

SCM_VERSION = 6  # bumped whenever the SCM's equations or splits change: cached datasets are keyed by it
B0 = -1.4  # click intercept
W_M = 2.0  # weight of the mediated preference c_m.q_i / sqrt(dim): X -> M -> Y
W_U = 0.8  # weight of the user confounder's taste for social items, a_u * r_i: U -> Y
W_V = 1.0  # weight of the session confounder V: V -> Y
LAMBDA_U = 1.0  # how strongly a_u steers the history towards social items: U -> X
ALPHA = 1.0  # how strongly the taste p_u steers the history
BETA_M = 6  # how sharply the history's mean item picks the mediator
MEDIATORS = 16
ACTIVITY_TRAIT = 0.3  # how much a_u raises a user's activity
POP_SD = 0.5  # standard deviation of the item popularity bias b_i
POOL_FACTOR = 2  # a user's history pool holds this many windows' worth of items
SESSION_BUCKETS = 8
TRUTH_NODES = 48
EVAL_FRACTION = 0.075  # share of rows in each of valid, test_id, test_ood and test_do
START_DAY = dt.date(2026, 1, 1)

TAG = "item_tag"
CONF_SESSION = "conf_session"
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
    POOL = 9
    WINDOW = 10
    MEDIATOR = 11
    FRESH_USER = 12


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
    out = np.negative(x)  # 1 / (1 + exp(-x)), in one buffer: the truths' quadratures are most of the generator's time
    np.exp(out, out=out)
    out += 1.0
    return np.reciprocal(out, out=out)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _draw(cdf: np.ndarray, u: np.ndarray, row: np.ndarray | None = None) -> np.ndarray:
    """Index drawn by each uniform ``u[k]`` from the cumulative distribution ``cdf[row[k]]`` (``cdf`` is
    [rows, n]; ``row`` defaults to k), by one search over the rows' cdfs laid end to end."""
    row = np.arange(len(u)) if row is None else row
    offset = np.arange(len(cdf))[:, None]
    flat = np.searchsorted((cdf + offset).ravel(), u + row, side="right") - row * cdf.shape[1]
    return np.clip(flat, 0, cdf.shape[1] - 1)


@dataclass(frozen=True)
class _World:
    """Latent variables of users, items and mediators, and the policy's per-sign item distributions."""

    pref: np.ndarray  # (users, dim) p_u
    trait: np.ndarray  # (users,) a_u = U
    user_cdf: np.ndarray  # (users,) cumulative P(u), proportional to the activity w_u
    emb: np.ndarray  # (items, dim) q_i
    bias: np.ndarray  # (items,) b_i
    tag: np.ndarray  # (items,) s_i
    positive: np.ndarray  # (items,) sgn(s_i) == +1
    social: np.ndarray  # (items,) r_i in {-1, +1}
    centroids: np.ndarray  # (MEDIATORS, dim) c_m
    groups: tuple[np.ndarray, np.ndarray]  # items of sign -1 and of sign +1
    cdfs: tuple[np.ndarray, np.ndarray]  # cumulative P(i | sgn) over each group
    p_in_group: np.ndarray  # (items,) P(i | sgn(s_i))
    confounding: float

    @property
    def dim(self) -> int:
        return self.pref.shape[1]

    @property
    def activity(self) -> np.ndarray:
        return np.diff(np.concatenate([[0.0], self.user_cdf]))

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

    def mediated(self, items: np.ndarray) -> np.ndarray:
        """B0 + W_M c_m.q_i / sqrt(dim) + b_i for every mediator: [len(items), MEDIATORS]."""
        return B0 + W_M * (self.emb[items] @ self.centroids.T) / math.sqrt(self.dim) + self.bias[items, None]

    def mediator_probs(self, mean_history: np.ndarray, has_history: np.ndarray) -> np.ndarray:
        """P(m | x) from the mean item embedding of each row's history: [rows, MEDIATORS]."""
        logits = BETA_M * (mean_history @ self.centroids.T) / math.sqrt(self.dim)
        return _softmax(np.where(has_history[:, None], logits, 0.0))


def _quadrature(confounding: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes v of V ~ N(0, 1), their prior weights, and their posterior weights given the shown sign under
    the logging policy ([2, nodes]: row 0 for sgn -1, row 1 for sgn +1)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(TRUTH_NODES)  # for the weight exp(-v^2 / 2)
    prior = weights / weights.sum()
    exposure = np.stack([_sigmoid(-confounding * nodes), _sigmoid(confounding * nodes)])
    posterior = exposure * prior
    return nodes, prior, posterior / posterior.sum(axis=1, keepdims=True)


def _front_door_table(world: _World, block_items: int = 16) -> np.ndarray:
    """F[i, m] = sum_u' P(u') E[sigmoid(B0 + W_M c_m.q_i + b_i + W_U a_u' r_i + W_V V) | sgn(s_i) shown]:
    P(Y | do(m), i), the inner sums of p_fd, exact over the users and the mediators."""
    nodes, _, posterior = _quadrature(world.confounding)
    items = len(world.bias)
    table = np.empty((items, MEDIATORS))
    weight = world.activity
    for lo in range(0, items, block_items):
        i = np.arange(lo, min(items, lo + block_items))
        base = world.mediated(i)  # [I, M]
        user_term = W_U * world.social[i, None] * world.trait[None, :]  # [I, U]
        z = base[:, :, None, None] + user_term[:, None, :, None] + W_V * nodes[None, None, None, :]
        post = posterior[world.positive[i].astype(np.int64)]  # [I, nodes]
        table[i] = np.einsum("imun,u,in->im", _sigmoid(z), weight, post)
    return table


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
    social = np.where((tag // 2) % 2 == 0, 1.0, -1.0)
    centroids = rng.standard_normal((MEDIATORS, dim))
    weight = np.exp(pop_tilt * bias)
    groups = (np.flatnonzero(~positive), np.flatnonzero(positive))
    cdfs = (
        np.cumsum(weight[groups[0]]) / weight[groups[0]].sum(),
        np.cumsum(weight[groups[1]]) / weight[groups[1]].sum(),
    )
    p_in_group = weight / np.where(positive, weight[groups[1]].sum(), weight[groups[0]].sum())
    return _World(
        pref, trait, user_cdf, emb, bias, tag, positive, social, centroids, groups, cdfs, p_in_group, confounding
    )


@dataclass(frozen=True)
class _Histories:
    """Every user's history pool (U -> X) and the window length each of the user's rows sees."""

    flat: np.ndarray  # the pools, concatenated
    starts: np.ndarray  # (users,) where each user's pool starts in ``flat``
    window: np.ndarray  # (users,) L_u; the pool holds POOL_FACTOR * L_u items
    emb_sums: np.ndarray  # (len(flat) + 1, dim) prefix sums of the pool items' q, for window means


def _histories(world: _World, rng: _Counter, history_len: int, block_users: int) -> _Histories:
    activity = world.activity
    window = np.minimum(history_len, np.ceil(history_len * activity / np.median(activity))).astype(np.int64)
    pool = POOL_FACTOR * window
    starts = np.cumsum(pool) - pool
    flat = np.empty(int(pool.sum()), dtype=np.int64)
    for lo in range(0, len(window), block_users):
        user = np.arange(lo, min(len(window), lo + block_users))
        logits = ALPHA * (world.pref[user] @ world.emb.T) / math.sqrt(world.dim)
        logits += LAMBDA_U * world.trait[user, None] * world.social[None, :]
        cdf = np.cumsum(_softmax(logits), axis=1)
        owner = np.repeat(np.arange(len(user)), pool[user])
        slots = np.arange(starts[user[0]], starts[user[-1]] + pool[user[-1]])
        flat[slots] = _draw(cdf, rng.uniform(_Stream.POOL, slots), owner)
    emb_sums = np.concatenate([np.zeros((1, world.dim)), np.cumsum(world.emb[flat], axis=0)])
    return _Histories(flat, starts, window, emb_sums)


@dataclass(frozen=True)
class _Partition:
    split: str
    day: int  # days after START_DAY
    rows: int
    offset: int  # global index of the first row
    flip: bool
    random_fraction: float
    fresh_confounder: bool = False  # test_do: each row's U is drawn afresh from the population

    @property
    def ds(self) -> str:
        return partition_name((START_DAY + dt.timedelta(days=self.day)).isoformat())


def _plan(rows: int, days: int, random_fraction: float) -> list[_Partition]:
    n_eval = int(rows * EVAL_FRACTION)
    train_days = days - 2
    n_train = rows - 4 * n_eval
    sizes = [n_train // train_days + (d < n_train % train_days) for d in range(train_days)]
    specs = [("train", d, n, False, random_fraction, False) for d, n in enumerate(sizes)]
    specs += [("valid", days - 2, n_eval, False, 0.0, False), ("test_id", days - 1, n_eval, False, 0.0, False)]
    specs += [("test_ood", days - 1, n_eval, True, 0.0, False), ("test_do", days - 1, n_eval, False, 0.0, True)]
    # last, beyond ``rows``: adding them left every row of the other splits as it was
    specs += [("valid_random", days - 2, n_eval, False, 1.0, False), ("valid_do", days - 2, n_eval, False, 0.0, True)]
    if min(s[2] for s in specs) == 0:
        raise ConfigError(f"synthesize: rows={rows} is too few for {days} days; every partition needs a row")
    offsets = np.cumsum([0] + [s[2] for s in specs])
    return [_Partition(s, d, n, int(o), f, r, c) for (s, d, n, f, r, c), o in zip(specs, offsets[:-1], strict=True)]


def session_edges(session_noise: float) -> np.ndarray:
    """Bucket edges of ``conf_session``: the SESSION_BUCKETS quantiles of the proxy V + session_noise * eps."""
    proxy_sd = math.sqrt(1.0 + session_noise**2)  # V is N(0, 1); the proxy adds independent noise
    return np.array([proxy_sd * NormalDist().inv_cdf(q / SESSION_BUCKETS) for q in range(1, SESSION_BUCKETS)])


TRUTH_BLOCK = 8_192  # rows per block of the [rows, mediators, nodes] quadrature


def _truths(
    world: _World, items: np.ndarray, trait: np.ndarray, probs: np.ndarray, front_door: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p_obs, p_do, p_fd) of each row: see the module docstring. ``trait`` is the user's a_u, ``probs``
    the rows' P(m | x), ``front_door`` the table of ``_front_door_table``."""
    nodes, prior, posterior = _quadrature(world.confounding)
    p_obs, p_do = np.empty(len(items)), np.empty(len(items))
    for lo in range(0, len(items), TRUTH_BLOCK):
        hi = min(len(items), lo + TRUTH_BLOCK)
        i = items[lo:hi]
        eta = world.mediated(i) + (W_U * world.social[i] * trait[lo:hi])[:, None]  # [B, M]
        click = np.einsum("bmn,bm->bn", _sigmoid(eta[:, :, None] + W_V * nodes), probs[lo:hi])  # [B, nodes]
        p_do[lo:hi] = click @ prior
        p_obs[lo:hi] = np.einsum("bn,bn->b", click, posterior[world.positive[i].astype(np.int64)])
    p_fd = np.einsum("bm,bm->b", probs, front_door[items])
    return p_obs, p_do, p_fd


def _chunk(
    world: _World,
    rng: _Counter,
    part: _Partition,
    lo: int,
    hi: int,
    history: _Histories,
    front_door: np.ndarray,
    session_edges: np.ndarray,
    session_noise: float,
    schema: pa.Schema,
) -> pa.Table:
    """Rows ``lo:hi`` of one partition."""
    n_items = len(world.bias)
    local = np.arange(lo, hi)
    k = part.offset + local
    user = world.users(rng.uniform(_Stream.USER, k))
    # the row's history: L_u consecutive items of the user's pool, from a random offset
    length = history.window[user]
    start = history.starts[user] + np.floor(rng.uniform(_Stream.WINDOW, k) * (POOL_FACTOR - 1) * length + 0.5)
    start = start.astype(np.int64)
    mean = (history.emb_sums[start + length] - history.emb_sums[start]) / np.maximum(length, 1)[:, None]
    probs = world.mediator_probs(mean, length > 0)
    mediator = _draw(np.cumsum(probs, axis=1), rng.uniform(_Stream.MEDIATOR, k))
    session = rng.normal(_Stream.EPS_A, _Stream.EPS_B, k)
    u_item = rng.uniform(_Stream.ITEM, k)
    item, propensity = world.expose(session, part.flip, rng.uniform(_Stream.SIGN, k), u_item)
    is_random = rng.uniform(_Stream.RANDOM, k) < part.random_fraction
    item[is_random] = np.minimum((u_item[is_random] * n_items).astype(np.int64), n_items - 1)
    propensity[is_random] = 1.0 / n_items
    # test_do: the click follows a U drawn afresh, independent of the user id and of the history
    trait = world.trait[world.users(rng.uniform(_Stream.FRESH_USER, k))] if part.fresh_confounder else None
    eta = world.mediated(item)[np.arange(len(item)), mediator]
    eta = eta + W_U * world.social[item] * (world.trait[user] if trait is None else trait)
    ctr = _sigmoid(eta + W_V * session)
    p_obs, p_do, p_fd = _truths(world, item, world.trait[user], probs, front_door)
    label = rng.uniform(_Stream.CLICK, k) < ctr
    policy = np.where(is_random, RANDOM, FLIPPED if part.flip else LOGGING)
    proxy = session + session_noise * rng.normal(_Stream.PROXY_A, _Stream.PROXY_B, k)
    day_start = int(dt.datetime.combine(START_DAY, dt.time(), dt.UTC).timestamp()) + part.day * 86_400
    columns = {
        USER: user,
        ITEM: item,
        LABEL: label.astype(np.float32),
        TS: day_start + local * 86_400 // part.rows,
        POLICY: policy,
        PROPENSITY: propensity.astype(np.float32),
        IS_RANDOM: is_random,
        HISTORY: gather_lists(history.flat, start, length),
        TAG: world.tag[item].astype(np.int64),
        CONF_SESSION: np.searchsorted(session_edges, proxy).astype(np.int64),
        TRUE_CTR: ctr.astype(np.float32),
        P_OBS: p_obs.astype(np.float32),
        P_DO: p_do.astype(np.float32),
        P_FD: p_fd.astype(np.float32),
    }
    return pa.table(columns, schema=schema)


def _write_truth(root: Path, world: _World) -> None:
    """Ground-truth latents beside the data, for evaluating causal estimates against the SCM."""
    (root / "scm").mkdir()
    dim = world.dim
    users = {
        USER: np.arange(len(world.trait)),
        "a": world.trait,
        "activity": world.activity,
        "p": pa.FixedSizeListArray.from_arrays(world.pref.ravel(), dim),
    }
    items = {
        ITEM: np.arange(len(world.bias)),
        TAG: world.tag.astype(np.int64),
        "sign": np.where(world.positive, 1, -1),
        "social": world.social.astype(np.int64),
        "b": world.bias,
        "q": pa.FixedSizeListArray.from_arrays(world.emb.ravel(), dim),
    }
    mediators = {"c": pa.FixedSizeListArray.from_arrays(world.centroids.ravel(), dim)}
    pq.write_table(pa.table(users), root / "scm" / "users.parquet")
    pq.write_table(pa.table(items), root / "scm" / "items.parquet")
    pq.write_table(pa.table(mediators), root / "scm" / "mediators.parquet")


@dataclass(frozen=True)
class _FileWriter:
    """Everything a data file's rows depend on. Rows are a function of the seed and their position only
    (counter-based draws), so files can be written in any order, by any process."""

    world: _World
    rng: _Counter
    history: _Histories
    front_door: np.ndarray
    edges: np.ndarray
    session_noise: float
    schema: pa.Schema
    chunk_rows: int

    def write(self, part: _Partition, start: int, per_file: int, path: Path) -> None:
        """Rows ``start : start + per_file`` of ``part`` into the Parquet file ``path``, a chunk at a time."""
        with pq.ParquetWriter(path, self.schema) as writer:
            for lo in range(start, min(part.rows, start + per_file), self.chunk_rows):
                hi = min(part.rows, lo + self.chunk_rows)
                table = _chunk(
                    self.world,
                    self.rng,
                    part,
                    lo,
                    hi,
                    self.history,
                    self.front_door,
                    self.edges,
                    self.session_noise,
                    self.schema,
                )
                writer.write_table(table)


_WRITER: _FileWriter | None = None  # a writing process's copy, set once by the pool's initializer


def _set_writer(writer: _FileWriter) -> None:
    global _WRITER
    _WRITER = writer


def _write_file(part: _Partition, start: int, per_file: int, path: Path) -> None:
    assert _WRITER is not None
    _WRITER.write(part, start, per_file, path)


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
    processes: int = 1,
) -> Manifest:
    """Write ``rows`` synthetic exposures (the splits but valid_random and valid_do) as a dataset directory at ``out``.

    Splits: train = days 1..days-2 (logging policy plus a ``random_fraction`` uniform slice), valid = day
    days-1, test_id = last day under the logging policy, test_ood = last day under the flipped policy,
    test_do = last day with X set by intervention (the module docstring); valid and the three test splits
    hold 7.5% of ``rows`` each, and valid_random (day days-1, the random policy) and valid_do (day days-1,
    X set by intervention) 7.5% more each. Memory is bounded by ``chunk_rows`` (plus users x history_len for
    the history pools); a partition's file rolls over after ``rows_per_file`` rows rounded up to whole chunks.
    ``processes`` > 1 writes that many files at a time, each in its own process; the data do not depend on it.
    """
    if days < 3 or users < 1 or items < 2 or dim < 1 or num_tags < 4 or history_len < 0 or seed < 0:
        raise ConfigError(
            "synthesize: need days >= 3, users >= 1, items >= 2, dim >= 1, num_tags >= 4 (both exposure signs and "
            "both social signs), history_len >= 0, seed >= 0"
        )
    if not (0.0 <= random_fraction <= 1.0 and activity >= 0.0 and chunk_rows >= 1 and rows_per_file >= 1):
        raise ConfigError("synthesize: need 0 <= random_fraction <= 1, activity >= 0, chunk_rows, rows_per_file >= 1")
    if chunk_rows * max(history_len, 1) >= 2**31:
        raise ConfigError("synthesize: chunk_rows * history_len must stay below 2**31 (Arrow list offsets)")
    plan = _plan(rows, days, random_fraction)
    world = _world(users, items, dim, num_tags, pop_tilt, activity, confounding, seed)
    rng = _Counter(seed)
    history = _histories(world, rng, history_len, max(1, 1_000_000 // items))
    front_door = _front_door_table(world)
    edges = session_edges(session_noise)

    manifest = Manifest(
        name=name,
        sparse=[
            SparseFeature(USER, users, "user"),
            SparseFeature(ITEM, items, "item"),
            SparseFeature(TAG, num_tags, "item"),
        ],
        confounders={CONF_SESSION: SESSION_BUCKETS},
        history_max_len=history_len,
        has_true_ctr=True,
        source={
            "generator": "distrec.data.synth",
            "scm_version": SCM_VERSION,
            "seed": seed,
            "rows": rows,
            "scm": {
                "users": users,
                "items": items,
                "dim": dim,
                "days": days,
                "history_len": history_len,
                "pool_factor": POOL_FACTOR,
                "mediators": MEDIATORS,
                "beta_m": BETA_M,
                "alpha": ALPHA,
                "lambda_u": LAMBDA_U,
                "random_fraction": random_fraction,
                "confounding": confounding,
                "activity": activity,
                "activity_trait": ACTIVITY_TRAIT,
                "num_tags": num_tags,
                "pop_tilt": pop_tilt,
                "pop_sd": POP_SD,
                "session_noise": session_noise,
                "b0": B0,
                "w_m": W_M,
                "w_u": W_U,
                "w_v": W_V,
                "policies": POLICY_CODE,
                "start_day": START_DAY.isoformat(),
            },
        },
    )
    writer = _FileWriter(world, rng, history, front_door, edges, session_noise, manifest.schema(), chunk_rows)
    per_file = -(-rows_per_file // chunk_rows) * chunk_rows  # files roll over at chunk boundaries
    with atomic_dir(out, overwrite=overwrite) as tmp:
        files: list[tuple[_Partition, int, Path]] = []
        for part in plan:
            directory = tmp / part.split / part.ds
            directory.mkdir(parents=True)
            manifest.splits.setdefault(part.split, []).append(part.ds)
            manifest.rows[part.split] = manifest.rows.get(part.split, 0) + part.rows
            files += [
                (part, start, directory / f"part-{f:05d}.parquet")
                for f, start in enumerate(range(0, part.rows, per_file))
            ]
        if processes > 1 and len(files) > 1:
            context = multiprocessing.get_context("spawn")  # the caller may hold threads (Ray, torch): never fork
            with context.Pool(min(processes, len(files)), initializer=_set_writer, initargs=(writer,)) as pool:
                pool.starmap(_write_file, [(part, start, per_file, path) for part, start, path in files])
        else:
            for part, start, path in files:
                writer.write(part, start, per_file, path)
        _write_truth(tmp, world)
        manifest.write(tmp)
    return manifest
