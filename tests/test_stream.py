"""The soft-label stream: every row comes out exactly once, with correct front-door columns, and the
consumer starts before scoring has finished."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch

from distrec.causal.frontdoor import conditional_prob, front_door_prob, sample_bank_indices
from distrec.data.batch import BatchBuilder
from distrec.data.datasource import READ_CHUNK_ROWS, ParquetFiles, read_tasks
from distrec.data.schema import ITEM, LABEL, TS, USER, Manifest
from distrec.data.synth import synthesize
from distrec.models.architectures import build_model
from distrec.orchestrate.stream import (
    ScoringOptions,
    conditional_column,
    front_door_column,
    soft_label_stream,
    write_history_bank,
)
from distrec.train.export import load_export, write_export

IDENTITY = [USER, ITEM, TS, LABEL]


@pytest.fixture(scope="module")
def teachers(tiny_dataset: tuple[Path, Manifest], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two freshly initialised teacher exports of different architectures (training is tested elsewhere)."""
    _, manifest = tiny_dataset
    out = {}
    for seed, arch in enumerate(("deepfm", "dcn")):
        torch.manual_seed(seed)
        model = build_model(arch, arch, manifest, 8, [16], torch.device("cpu"))
        directory = tmp_path_factory.mktemp(arch)
        spec = {"name": arch, "arch": arch, "dim": 8, "hidden": [16]}
        write_export(directory, spec, manifest, model.state_dict())
        out[arch] = directory
    return out


def identity_rows(table: pa.Table) -> np.ndarray:
    rows = np.stack([table.column(c).to_numpy().astype(np.float64) for c in IDENTITY], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


@ray.remote
class Consumer:
    """A slow consumer of one shard, started before the stream runs: a consumer task's own start-up (a
    fresh worker importing torch on a loaded machine) once outlasted the whole stream of this tiny log."""

    def ready(self) -> bool:
        return True

    def consume(self, shard: object, delay: float) -> tuple[list[pa.Table], list[float]]:
        tables, received = [], []
        for table in shard.iter_batches(batch_size=256, batch_format="pyarrow"):  # type: ignore[attr-defined]
            received.append(time.time())
            tables.append(table)
            time.sleep(delay)
        return tables, received


def stamp(table: pa.Table) -> pa.Table:
    return table.append_column("stamped_at", pa.array(np.full(table.num_rows, time.time())))


def test_every_row_exactly_once_with_both_teachers_columns(
    ray_local: None, tiny_dataset: tuple[Path, Manifest], teachers: dict[str, Path], tmp_path: Path
) -> None:
    root, manifest = tiny_dataset
    files = [str(f) for f in manifest.files(root, "train")]
    builder = BatchBuilder(manifest)
    bank = write_history_bank(manifest, str(root), 32, seed=0, out=tmp_path / "bank.parquet")
    exports = {name: str(d) for name, d in teachers.items()}
    columns = sorted(set(builder.columns) | set(IDENTITY))
    # small blocks, as a large log would have, so that streaming is observable at this size
    context = ray.data.DataContext.get_current()
    block_size, context.target_max_block_size = context.target_max_block_size, 32 * 1024
    try:
        stream = soft_label_stream(files, columns, exports, ScoringOptions(str(bank)), batch_size=300).map_batches(
            stamp, batch_format="pyarrow"
        )
        # ray_session's Ray Data settings reach the stream's executor (configure_ray_data): without them its
        # scorers stalled for minutes behind the consumer's two prefetched batches
        assert stream.context.downstream_capacity_backpressure_ratio is None
        assert not stream.context.use_datasource_v2
        consumers = [Consumer.remote() for _ in range(2)]  # type: ignore[attr-defined]
        ray.get([c.ready.remote() for c in consumers])
        shards = stream.streaming_split(2, equal=False)
        (out_a, got_a), (out_b, got_b) = ray.get(
            [c.consume.remote(s, 0.15) for c, s in zip(consumers, shards, strict=True)]
        )
    finally:
        context.target_max_block_size = block_size
    out = pa.concat_tables(out_a + out_b)  # equal=False: one consumer may get more, or everything

    logs = pa.concat_tables([pq.read_table(f, columns=IDENTITY) for f in files])
    assert out.num_rows == logs.num_rows == manifest.rows["train"]
    np.testing.assert_array_equal(identity_rows(out), identity_rows(logs))

    # streaming: the first batch reached a consumer before the last block had been scored
    assert min(got_a + got_b) < out.column("stamped_at").to_numpy().max()

    # the columns are the teachers' front-door and conditional estimates of exactly these rows
    sample = out.slice(0, 200)
    bank_table = pq.read_table(bank, columns=builder.columns)
    for name, directory in teachers.items():
        model, _, _ = load_export(directory)
        with torch.no_grad():
            encoded = model.encode(builder(sample))
            bank_direct = model.encode(builder(bank_table)).direct
            fd = front_door_prob(model.head, bank_direct, encoded.mediator, encoded.item)
            kd = conditional_prob(model.head, *encoded)
        np.testing.assert_allclose(sample.column(front_door_column(name)).to_numpy(), fd.numpy(), rtol=1e-5)
        np.testing.assert_allclose(sample.column(conditional_column(name)).to_numpy(), kd.numpy(), rtol=1e-5)
        values = out.column(front_door_column(name)).to_numpy()
        assert np.isfinite(values).all() and ((values > 0) & (values < 1)).all()


def test_parquet_files_read_every_row_once_in_order_in_groups_of_about_equal_bytes(tmp_path: Path) -> None:
    sizes = [5, 300, 40, 40, 900, 7, 120_000, 60]  # rows: small files joined, a large one cut into chunks
    files, start = [], 0
    for i, rows in enumerate(sizes):
        files.append(str(tmp_path / f"part-{i}.parquet"))
        ids = np.arange(start, start + rows)
        pq.write_table(pa.table({"id": ids, "other": ids * 2}), files[-1])
        start += rows
    source = ParquetFiles(files, ["id"])
    tasks = source.get_read_tasks(3)
    groups = [task.metadata.input_files for task in tasks]
    # contiguous, each file once; the group that reaches a third of the bytes ends with the large file
    assert groups == [tuple(files[:7]), (files[7],)]
    tables = [table for task in tasks for table in task.read_fn()]
    assert all(t.column_names == ["id"] for t in tables)
    assert max(t.num_rows for t in tables) <= READ_CHUNK_ROWS and tables[0].num_rows == sum(sizes[:6])  # joined
    assert all(t.column("id").num_chunks == 1 for t in tables)  # into one record batch each
    np.testing.assert_array_equal(pa.concat_tables(tables).column("id").to_numpy(), np.arange(sum(sizes)))
    equal = ParquetFiles(files[2:4], ["id"]).get_read_tasks(5)  # files of equal bytes: one a task, at most
    assert [task.metadata.input_files for task in equal] == [(files[2],), (files[3],)]


def test_history_bank_samples_distinct_training_rows(tiny_dataset: tuple[Path, Manifest], tmp_path: Path) -> None:
    root, manifest = tiny_dataset
    bank = pq.read_table(write_history_bank(manifest, str(root), 50, seed=3, out=tmp_path / "bank.parquet"))
    again = pq.read_table(write_history_bank(manifest, str(root), 50, seed=3, out=tmp_path / "again.parquet"))
    assert bank.num_rows == 50 and bank.equals(again)
    assert set(bank.column_names) == set(BatchBuilder(manifest).columns)


def test_history_bank_reads_the_chosen_rows_row_group_by_row_group(tmp_path: Path) -> None:
    """Files of several row groups: the bank holds exactly the training rows its indices name, in order."""
    root = tmp_path / "synth"
    manifest = synthesize(root, 6_000, users=100, items=50, days=3, history_len=6, seed=2, chunk_rows=300)
    files = manifest.files(root, "train")
    assert min(pq.ParquetFile(f).metadata.num_row_groups for f in files) > 1
    columns = BatchBuilder(manifest).columns
    every = pa.concat_tables(pq.read_table(f, columns=columns) for f in files)
    bank = pq.read_table(write_history_bank(manifest, str(root), 40, seed=5, out=tmp_path / "bank.parquet"))
    assert bank.equals(every.take(pa.array(sample_bank_indices(every.num_rows, 40, 5))))


def test_small_files_share_read_tasks_and_large_ones_get_one_each(tmp_path: Path) -> None:
    def files(count: int, size: int) -> list[str]:
        out = []
        for i in range(count):
            f = tmp_path / f"{count}-{size}-{i}.parquet"
            with open(f, "wb") as sparse:  # only the size matters: a sparse file of that size
                sparse.truncate(size)
            out.append(str(f))
        return out

    many_small = files(3000, 1000)  # 3 MB in all: 2 tasks a slot, each reading 750 files in turn
    assert read_tasks(many_small, slots=2) == 4
    assert read_tasks(files(10, 1000), slots=2) == 4  # a few small files are grouped too
    assert read_tasks(files(3, 1000), slots=2) == 3  # never more tasks than files
    mib = 2**20
    assert read_tasks(files(40, 64 * mib), slots=2) == 40  # large files: one task each
    assert read_tasks(files(400, 4 * mib), slots=2) == 50  # 1,600 MiB of small files: about 32 MiB a task
