"""The soft-label stream: training logs -> one scoring stage holding every teacher -> the student trainer.

The stage is a Ray Data actor pool whose actors each load every teacher's export and encode the
history bank once, and append a column per teacher and target to every Arrow batch that flows through it:

    fd__<teacher>   front-door estimate  1/N sum_n sigmoid(h(e(x'_n), g(x), v(i)))   (CausalD)
    kd__<teacher>   plain conditional    sigmoid(h(e(x), g(x), v(i)))                 (the KD ablation)

A stream scores only the targets its students read (``ScoringOptions.targets``): the demo's student
reads the front-door columns alone, and the conditional one would add about 15% to its scoring.

Ray Data's streaming executor runs the stage concurrently with the student's consumption and
applies backpressure, so the soft labels are never materialised as a whole. One stage for all
teachers, not one per teacher: a batch crosses the object store once whatever the number of
teachers (with two, the stream consumed alone over 700,000 rows cost 9.6 µs of CPU a row as two
stages and 7.6 as one, the scoring itself about 8). Each scorer splits its teacher's head against the
bank once (``bank_head``), so a row pays only for the layers after the first per bank entry. The stage
runs ``distill.scorers_per_teacher`` actors per teacher (the CPUs of one stage per teacher) of
``distill.scorer_cpus`` CPUs each. A cross-fitted teacher (``distill.cross_fit``) holds all its copies
and scores each row with the copy that did not train on it (``CrossFittedScorer``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from distrec.causal.frontdoor import conditional_prob, sample_bank_indices, sampled_front_door_prob, split_bank
from distrec.config import DISTILL_TARGETS
from distrec.data.batch import Batch, BatchBuilder
from distrec.data.datasource import ParquetFiles, read_tasks
from distrec.data.schema import ITEM, USER, Manifest
from distrec.io import atomic_write_bytes
from distrec.slots import cpu_slots
from distrec.train.feed import lowest_cpu_priority, pair_folds, row_folds

# A scoring actor that dies (its node lost, OOM, a crash) is restarted with its teacher loaded again,
# and the tasks it held are retried; a retried task's outputs take the places of those of the attempt
# that died, so every row still gets exactly one soft label (tests/test_cluster.py kills a scorer
# mid-stream and checks). Bounded, unlike Ray Data's default of forever: a scorer that dies on every
# batch fails the run instead of looping.
SCORER_MAX_RESTARTS = 3
BANK_READ_ROWS = 16_384  # rows decoded at a time while the history bank's rows are picked out of the log
Rows: TypeAlias = pa.Table | pa.RecordBatch  # what a scorer scores: a stream's batches, or a reader's chunks (inline)


def front_door_column(teacher: str) -> str:
    return f"fd__{teacher}"


def conditional_column(teacher: str) -> str:
    return f"kd__{teacher}"


SOFT_LABEL_COLUMN = {"front_door": front_door_column, "conditional": conditional_column}  # target -> its column


@dataclass(frozen=True)
class ScoringOptions:
    """How every scorer of a stream scores: the history bank, the draws and the threads.

    ``mediator_samples`` draws of each teacher's stochastic mediator are averaged per row;
    ``bank_groups`` > 1 scores each chunk of rows against one random group of the bank
    (``sampled_front_door_prob``); ``seed`` seeds the groups and the draws. ``targets`` are the soft
    labels scored (``distill.target``'s values, each a column per teacher): those the students read.
    """

    bank_path: str
    mediator_samples: int = 1
    seed: int = 0
    threads: int = 1
    bank_groups: int = 1
    targets: tuple[str, ...] = DISTILL_TARGETS

    def __post_init__(self) -> None:
        unknown = sorted(set(self.targets) - set(DISTILL_TARGETS))
        if not self.targets or unknown:
            raise ValueError(f"soft-label targets must be a non-empty subset of {DISTILL_TARGETS}, got {self.targets}")


class TeacherScorer:
    """One teacher's soft-label columns for a batch (a part of ``SoftLabeler``, the stage).

    Its random draws (the bank group of each chunk of rows, the mediator samples) are seeded by the seed
    and the batch's rows (``batch_seed``), not by what the scorer scored before: a batch gets the same
    soft labels on whichever actor of the pool scores it, on a retry after a scorer died, and in another
    run where the stream is read in order (``preserve_order``, as ``distrec run`` scores it once).
    """

    def __init__(self, export_dir: str, options: ScoringOptions) -> None:
        from distrec.train.export import load_export

        torch.set_num_threads(options.threads)
        self.model, spec, manifest = load_export(export_dir)
        self.name = spec["name"]
        self.builder = BatchBuilder(manifest)
        self.mediator_samples = options.mediator_samples
        self.seed = options.seed
        self.targets = options.targets
        bank = pq.read_table(options.bank_path, columns=self.builder.columns)
        with torch.inference_mode():
            # the bank's share of the head, once (per group of the bank with distill.bank_groups)
            direct = self.model.encode(self.builder(bank)).direct
            self.bank = split_bank(direct, options.bank_groups, options.seed, self.model.bank_head)

    @property
    def columns(self) -> list[str]:
        """The log columns it reads."""
        return self.builder.columns

    def __call__(self, table: Rows) -> Rows:
        return with_soft_labels(table, self.name, self.score(table))

    def score(self, table: Rows) -> dict[str, np.ndarray]:
        """Each target's probability for every row of ``table`` (the front-door estimate, the plain
        conditional probability), as float32. A target's values do not depend on the others being scored."""
        if table.num_rows == 0:  # TorchRec cannot split an empty KJT; Ray Data never sends one, a caller may
            return {target: np.empty(0, np.float32) for target in self.targets}
        batch = self.builder(table)
        generator = torch.Generator().manual_seed(batch_seed(batch, self.seed))
        probs = {}
        with torch.inference_mode():  # no autograd bookkeeping at all: 7% more rows/s than no_grad
            direct, mediator, item = self.model.encode(batch)
            # sum_m P(m | x): the mean over mediator draws (one, the deterministic g(x), by default)
            draws = [mediator]
            if self.mediator_samples > 1:
                draws = [self.model.sample_mediator(mediator, generator) for _ in range(self.mediator_samples)]
            if "front_door" in self.targets:
                fd = [sampled_front_door_prob(self.model.head, self.bank, m, item, generator) for m in draws]
                probs["front_door"] = torch.stack(fd).mean(0)
            if "conditional" in self.targets:
                kd = [conditional_prob(self.model.head, direct, m, item) for m in draws]
                probs["conditional"] = torch.stack(kd).mean(0)
        return {target: p.numpy().astype(np.float32) for target, p in probs.items()}


class CrossFittedScorer:
    """Ray Data stage of a cross-fitted teacher: ``export_dirs[k]`` is the copy trained without fold k,
    and each row is scored by the copy of its fold (``distrec.train.feed.row_folds``, as in training), into
    the teacher's columns (named after copy 0, which carries the teacher's name)."""

    def __init__(self, export_dirs: Sequence[str], options: ScoringOptions) -> None:
        self.copies = [TeacherScorer(d, options) for d in export_dirs]
        self.name = self.copies[0].name
        self.columns = self.copies[0].columns

    def __call__(self, table: Rows) -> Rows:
        folds = row_folds(self.copies[0].builder(table), len(self.copies))
        probs = {target: np.empty(table.num_rows, np.float32) for target in self.copies[0].targets}
        for fold, copy in enumerate(self.copies):
            rows = np.flatnonzero(folds == fold)  # none in a fold: score() answers the empty table
            for target, values in copy.score(table.take(pa.array(rows))).items():
                probs[target][rows] = values
        return with_soft_labels(table, self.name, probs)


class SoftLabeler:
    """Ray Data stage: adds every teacher's soft-label columns to each batch. ``teachers`` maps each
    teacher's name to its export directory, or to its cross-fitted copies' in fold order."""

    def __init__(self, teachers: Mapping[str, str | Sequence[str]], options: ScoringOptions) -> None:
        self.scorers = [
            TeacherScorer(copies[0], options) if len(copies) == 1 else CrossFittedScorer(copies, options)
            for copies in ([e] if isinstance(e, str) else list(e) for e in teachers.values())
        ]

    @property
    def columns(self) -> list[str]:
        """The log columns its teachers read."""
        return list(dict.fromkeys(c for scorer in self.scorers for c in scorer.columns))

    def __call__(self, table: Rows) -> Rows:
        for scorer in self.scorers:
            table = scorer(table)
        return table


class StreamLabeler(SoftLabeler):
    """The scoring actor of a stream that a student trains on as it flows: ``SoftLabeler`` at the lowest
    CPU priority, every thread of its process.

    Where the scorers share cores with the student's ranks (one machine, 2 cores), they then take the
    time the ranks' steps leave idle instead of delaying a step that the other ranks wait for, as the
    ranks' own feed threads do; a rank that waits on the stream sleeps and leaves them its core.
    The quick (c) benchmark, 4 alternating pairs (session 21): 0.638, 0.632, 0.673, 0.635 against 0.614,
    0.603, 0.594, 0.620 at Ray's default priority, +6%. Where scorers have cores of their own it changes nothing.
    A stream consumed alone does not use it: there the scorers would only yield to the stream's own read
    tasks.
    """

    def __init__(self, teachers: Mapping[str, str | Sequence[str]], options: ScoringOptions) -> None:
        lowest_cpu_priority()
        super().__init__(teachers, options)


@dataclass(frozen=True)
class InlineScoring:
    """``distill.soft_labels=inline``: the student's ranks each score the rows they read (``SoftLabeler`` in
    the training process, on the reader's chunks) instead of a stream's scorer actors. ``teachers`` is as
    for ``SoftLabeler``; ``options.threads`` should stay the rank's own (1)."""

    teachers: Mapping[str, str | Sequence[str]]
    options: ScoringOptions


def batch_seed(batch: Batch, seed: int) -> int:
    """The seed of one batch's draws: ``seed`` and its rows' user-item pairs, in order."""
    users, items = (batch.sparse[key].values().numpy() for key in (USER, ITEM))
    pairs = pair_folds(users, items, 2**31)
    weights = np.arange(1, len(pairs) + 1, dtype=np.uint64)  # the order of the rows counts too
    with np.errstate(over="ignore"):
        return int((pairs.astype(np.uint64) * weights).sum() ^ np.uint64(seed)) % 2**63


def with_soft_labels(table: Rows, teacher: str, probs: Mapping[str, np.ndarray]) -> Rows:
    """``table`` with a teacher's column of each target in ``probs`` appended."""
    for target, values in probs.items():
        table = table.append_column(SOFT_LABEL_COLUMN[target](teacher), pa.array(values))
    return table


def write_history_bank(manifest: Manifest, root: str, size: int, seed: int, out: Path) -> Path:
    """Sample ``size`` training rows (their x = user, context, history) into ``out`` as Parquet.

    Reads only the Parquet footers to count rows, then the chosen rows' row groups, ``BANK_READ_ROWS``
    rows at a time, with no file kept open: on the 100M-row synthetic log (1M-row files) the driver's
    memory rose by 46 MiB, against 630 MiB reading whole files and 279 MiB with every file kept open.
    """
    columns = BatchBuilder(manifest).columns
    groups = [  # (file, row group, rows) over the training files; no file stays open (each holds buffers)
        (f, g, meta.row_group(g).num_rows)
        for f, meta in ((f, pq.read_metadata(f)) for f in manifest.files(root, "train"))
        for g in range(meta.num_row_groups)
    ]
    counts = np.array([rows for _, _, rows in groups], dtype=np.int64)
    chosen = sample_bank_indices(int(counts.sum()), size, seed)  # sorted
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    group_of = np.searchsorted(starts, chosen, side="right") - 1
    pieces = []
    for g in np.unique(group_of):
        path, index, _ = groups[g]
        local = chosen[group_of == g] - starts[g]
        offset = 0
        with pq.ParquetFile(path) as pf:
            for batch in pf.iter_batches(BANK_READ_ROWS, row_groups=[index], columns=columns, use_threads=False):
                mine = local[(local >= offset) & (local < offset + batch.num_rows)] - offset
                if mine.size:
                    pieces.append(pa.Table.from_batches([batch.take(pa.array(mine))]))
                offset += batch.num_rows
    sink = pa.BufferOutputStream()
    pq.write_table(pa.concat_tables(pieces), sink)
    atomic_write_bytes(out, sink.getvalue().to_pybytes())
    return out


def soft_label_stream(
    train_files: list[str],
    columns: list[str],
    teachers: Mapping[str, str | Sequence[str]],
    options: ScoringOptions,
    batch_size: int,
    scorers_per_teacher: int = 1,
    scorer_cpus: float = 1.0,
    beside_training: bool = False,
) -> ray.data.Dataset:
    """The lazily executed dataset the student trains on: logs plus every teacher's columns.

    ``teachers`` maps each teacher's name to its export directory (on storage every node sees), or to
    its cross-fitted copies' in fold order (copy k trained without fold k; one copy: not cross-fitted).
    The scoring stage (``SoftLabeler``) runs ``scorers_per_teacher`` actors per teacher, each holding every
    teacher, of ``scorer_cpus`` CPUs (and as many torch threads, at least one: they replace ``options.threads``),
    scoring with ``options``. ``beside_training``: a student trains on the stream as it flows, so the
    scorers run at the lowest CPU priority (``StreamLabeler``); a stream consumed alone (written once as
    precomputed soft labels) keeps Ray's, level with its read tasks.
    """
    options = replace(options, threads=max(1, int(scorer_cpus)))
    slots = cpu_slots()
    tasks = read_tasks(train_files, slots)
    ds = ray.data.read_datasource(ParquetFiles(train_files, columns), concurrency=slots, override_num_blocks=tasks)
    return ds.map_batches(
        StreamLabeler if beside_training else SoftLabeler,
        fn_constructor_kwargs={"teachers": dict(teachers), "options": options},
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=scorers_per_teacher * len(teachers)),
        num_cpus=scorer_cpus,
        max_restarts=SCORER_MAX_RESTARTS,
        max_task_retries=SCORER_MAX_RESTARTS,
    )
