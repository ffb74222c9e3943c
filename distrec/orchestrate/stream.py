"""The soft-label stream: training logs -> one scoring stage per teacher -> the student trainer.

Each stage is a Ray Data actor pool that loads one teacher's export, encodes the history bank
once, and appends two columns to every Arrow batch that flows through it:

    fd__<teacher>   front-door estimate  1/N sum_n sigmoid(h(e(x'_n), g(x), v(i)))   (CausalD)
    kd__<teacher>   plain conditional    sigmoid(h(e(x), g(x), v(i)))                 (the KD ablation)

Ray Data's streaming executor runs the stages concurrently with the student's consumption and
applies backpressure, so the soft labels are never materialised as a whole. Each scorer splits its
teacher's head against the bank once (``bank_head``), so a row pays only for the layers after the
first per bank entry; ``distill.scorers_per_teacher`` actors of ``distill.scorer_cpus`` CPUs each
serve one teacher. A cross-fitted teacher (``distill.cross_fit``) is one stage too: it holds all its
copies and scores each row with the copy that did not train on it (``CrossFittedScorer``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from distrec.causal.frontdoor import conditional_prob, sample_bank_indices, sampled_front_door_prob, split_bank
from distrec.data.batch import BatchBuilder
from distrec.data.schema import Manifest
from distrec.io import atomic_write_bytes
from distrec.slots import cpu_slots
from distrec.train.feed import row_folds

# A scoring actor that dies (its node lost, OOM, a crash) is restarted with its teacher loaded again,
# and the tasks it held are retried; a retried task's outputs take the places of those of the attempt
# that died, so every row still gets exactly one soft label (tests/test_cluster.py kills a scorer
# mid-stream and checks). Bounded, unlike Ray Data's default of forever: a scorer that dies on every
# batch fails the run instead of looping.
SCORER_MAX_RESTARTS = 3


def front_door_column(teacher: str) -> str:
    return f"fd__{teacher}"


def conditional_column(teacher: str) -> str:
    return f"kd__{teacher}"


class TeacherScorer:
    """Ray Data stage: adds one teacher's soft-label columns to each batch."""

    def __init__(
        self,
        export_dir: str,
        bank_path: str,
        mediator_samples: int = 1,
        seed: int = 0,
        threads: int = 1,
        bank_groups: int = 1,
    ) -> None:
        from distrec.train.export import load_export

        torch.set_num_threads(threads)
        self.model, spec, manifest = load_export(export_dir)
        self.name = spec["name"]
        self.builder = BatchBuilder(manifest)
        self.mediator_samples = mediator_samples
        self.generator = torch.Generator().manual_seed(seed)  # the mediator (and bank group) draws, in order
        bank = pq.read_table(bank_path, columns=self.builder.columns)
        with torch.no_grad():
            # the bank's share of the head, once (per group of the bank with distill.bank_groups)
            direct = self.model.encode(self.builder(bank)).direct
            self.bank = split_bank(direct, bank_groups, seed, self.model.bank_head)

    def __call__(self, table: pa.Table) -> pa.Table:
        return with_soft_labels(table, self.name, *self.score(table))

    def score(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """The front-door and the plain conditional probability of each row of ``table``, as float32."""
        batch = self.builder(table)
        with torch.no_grad():
            direct, mediator, item = self.model.encode(batch)
            # sum_m P(m | x): the mean over mediator draws (one, the deterministic g(x), by default)
            draws = [mediator]
            if self.mediator_samples > 1:
                draws = [self.model.sample_mediator(mediator, self.generator) for _ in range(self.mediator_samples)]
            fd = torch.stack(
                [sampled_front_door_prob(self.model.head, self.bank, m, item, self.generator) for m in draws]
            ).mean(0)
            kd = torch.stack([conditional_prob(self.model.head, direct, m, item) for m in draws]).mean(0)
        return fd.numpy().astype(np.float32), kd.numpy().astype(np.float32)


class CrossFittedScorer:
    """Ray Data stage of a cross-fitted teacher: ``export_dirs[k]`` is the copy trained without fold k,
    and each row is scored by the copy of its fold (``distrec.train.feed.row_folds``, as in training), into
    the teacher's columns (named after copy 0, which carries the teacher's name)."""

    def __init__(
        self,
        export_dirs: Sequence[str],
        bank_path: str,
        mediator_samples: int = 1,
        seed: int = 0,
        threads: int = 1,
        bank_groups: int = 1,
    ) -> None:
        self.copies = [TeacherScorer(d, bank_path, mediator_samples, seed, threads, bank_groups) for d in export_dirs]
        self.name = self.copies[0].name

    def __call__(self, table: pa.Table) -> pa.Table:
        folds = row_folds(self.copies[0].builder(table), len(self.copies))
        fd, kd = np.empty(table.num_rows, np.float32), np.empty(table.num_rows, np.float32)
        for fold, copy in enumerate(self.copies):
            rows = np.flatnonzero(folds == fold)
            if rows.size:
                fd[rows], kd[rows] = copy.score(table.take(pa.array(rows)))
        return with_soft_labels(table, self.name, fd, kd)


def with_soft_labels(table: pa.Table, teacher: str, fd: np.ndarray, kd: np.ndarray) -> pa.Table:
    """``table`` with a teacher's front-door and conditional columns appended."""
    table = table.append_column(front_door_column(teacher), pa.array(fd))
    return table.append_column(conditional_column(teacher), pa.array(kd))


def write_history_bank(manifest: Manifest, root: str, size: int, seed: int, out: Path) -> Path:
    """Sample ``size`` training rows (their x = user, context, history) into ``out`` as Parquet.

    Reads only the Parquet footers to count rows, then the chosen rows' row groups.
    """
    files = manifest.files(root, "train")
    counts = np.array([pq.ParquetFile(f).metadata.num_rows for f in files])
    chosen = sample_bank_indices(int(counts.sum()), size, seed)  # sorted
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    file_of = np.searchsorted(starts, chosen, side="right") - 1
    columns = BatchBuilder(manifest).columns
    pieces = []
    for f in np.unique(file_of):
        local = chosen[file_of == f] - starts[f]
        pieces.append(pq.read_table(files[f], columns=columns).take(pa.array(local)))
    sink = pa.BufferOutputStream()
    pq.write_table(pa.concat_tables(pieces), sink)
    atomic_write_bytes(out, sink.getvalue().to_pybytes())
    return out


READ_TASK_BYTES = 32 * 2**20  # of Parquet per read task, at most, where the files are smaller than that
READ_TASKS_PER_SLOT = 16  # at least, so that grouping files never starves the readers of parallel work


def read_tasks(files: Sequence[str], slots: int) -> int:
    """Ray Data read tasks for ``files``: one per file, unless there are many small ones, then fewer, each
    reading several files in turn (about ``READ_TASK_BYTES`` of Parquet, and at least ``READ_TASKS_PER_SLOT``
    per CPU slot). Every read task costs scheduling and blocks of its own: a log of thousands of small files
    streamed at 0.56x the rows/s of the same rows in ten files when each file was a task (benchmark (h))."""
    total = sum(Path(f).stat().st_size for f in files)
    return max(1, min(len(files), max(READ_TASKS_PER_SLOT * slots, -(-total // READ_TASK_BYTES))))


def soft_label_stream(
    train_files: list[str],
    columns: list[str],
    teachers: Mapping[str, str | Sequence[str]],
    bank_path: Path,
    batch_size: int,
    mediator_samples: int = 1,
    seed: int = 0,
    scorers: int = 1,
    scorer_cpus: float = 1.0,
    bank_groups: int = 1,
) -> ray.data.Dataset:
    """The lazily executed dataset the student trains on: logs plus every teacher's columns.

    ``teachers`` maps each teacher's name to its export directory (on storage every node sees), or to
    its cross-fitted copies' in fold order (copy k trained without fold k; one copy: not cross-fitted);
    ``mediator_samples`` draws of each teacher's stochastic mediator are averaged per row; each
    teacher gets ``scorers`` actors of ``scorer_cpus`` CPUs (and as many torch threads, at least one);
    ``bank_groups`` > 1 scores each chunk of rows against one random group of the bank
    (``sampled_front_door_prob``).
    """
    slots = cpu_slots()
    tasks = read_tasks(train_files, slots)
    ds = ray.data.read_parquet(  # Ray Data's own choice unless small files are to share tasks: it also
        # splits each task's output into smaller blocks when it plans more blocks than there are files
        train_files,
        columns=columns,
        concurrency=slots,
        override_num_blocks=tasks if tasks < len(train_files) else None,
    )
    for exports in teachers.values():
        copies = [exports] if isinstance(exports, str) else list(exports)
        scorer: type[TeacherScorer | CrossFittedScorer] = TeacherScorer if len(copies) == 1 else CrossFittedScorer
        source = {"export_dir": copies[0]} if len(copies) == 1 else {"export_dirs": copies}
        ds = ds.map_batches(
            scorer,
            fn_constructor_kwargs={
                **source,
                "bank_path": str(bank_path),
                "mediator_samples": mediator_samples,
                "seed": seed,
                "threads": max(1, int(scorer_cpus)),
                "bank_groups": bank_groups,
            },
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=scorers),
            num_cpus=scorer_cpus,
            max_restarts=SCORER_MAX_RESTARTS,
            max_task_retries=SCORER_MAX_RESTARTS,
        )
    return ds
