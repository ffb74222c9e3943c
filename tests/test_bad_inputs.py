"""The bad-input catalogue: every case drives the real CLI in-process (``distrec.cli.main``).

Each case checks the exit code (2 bad data, 3 bad configuration, 4 bad checkpoint), that the message
names the file, the column and the count where there is one, and that nothing was half-written: no
output directory, no temporary sibling, an empty runs directory. No case may start Ray: every one is
caught before (``open_run``), so each takes a second or two.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from distrec.cli import main
from distrec.config import load_config, to_yaml
from distrec.data.schema import MANIFEST, Manifest

GOOD_HEADER = "user_id,item_id,label,timestamp"
GOOD_ROWS = [
    f"{u},{i},{(u + i) % 2},{100 + 10 * n}" for n, (u, i) in enumerate((u, i) for u in range(4) for i in range(5))
]


def csv(*rows: str, header: str = GOOD_HEADER) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


@dataclass(frozen=True)
class ImportCase:
    """A file given to ``distrec data import``; ``message`` is a regex after ``<file>: ``."""

    name: str
    content: Callable[[Path], bytes]
    message: str
    suffix: str = ".csv"
    flags: tuple[str, ...] = ()


def parquet_bytes(tmp: Path, table: pa.Table, cut: int | None = None) -> bytes:
    path = tmp / "scratch.parquet"
    pq.write_table(table, path)
    data = path.read_bytes()
    path.unlink()
    return data[:cut] if cut is not None else data


GOOD_TABLE = pa.table({"user_id": [1, 2, 3], "item_id": [1, 2, 3], "label": [0, 1, 0], "timestamp": [5, 6, 7]})

IMPORT_CASES = [
    ImportCase("csv empty", lambda _: b"", r"empty file$"),
    ImportCase("csv header only", lambda _: csv(), r"empty file \(0 rows\)"),
    ImportCase(
        "csv duplicated column",
        lambda _: csv("1,2,1,0,5", header="user_id,item_id,label,label,timestamp"),
        r"duplicated column\(s\) \['label'\]",
    ),
    ImportCase(
        "csv missing column",
        lambda _: csv("1,2,1", header="user_id,item_id,label"),
        r"missing column\(s\) \['timestamp'\]",
    ),
    ImportCase(
        "csv ragged rows", lambda _: csv("1,2,1,5", "1,2,1,5,9"), r"unreadable CSV file: .*Expected 4 columns, got 5"
    ),
    ImportCase(
        "csv binary garbage",
        lambda _: bytes(range(256)) * 8,
        r"not a UTF-8 text CSV file \(binary content at byte 128\)",
    ),
    ImportCase("csv NUL bytes", lambda _: csv("1,2,1,5").replace(b"2", b"\0"), r"not a text CSV file \(a NUL byte"),
    ImportCase(
        "csv mixed-type label", lambda _: csv("1,2,1,5", "1,3,yes,6"), r"column 'label': type string is not numeric"
    ),
    ImportCase(
        "csv NaN labels", lambda _: csv("1,2,1,5", "1,3,,6", "2,2,NaN,7"), r"column 'label': 2 null, NaN or infinite"
    ),
    ImportCase(
        "csv infinite time", lambda _: csv("1,2,1,5.5", "1,3,0,inf"), r"column 'timestamp': 1 null, NaN or infinite"
    ),
    ImportCase(
        "csv negative timestamps",
        lambda _: csv("1,2,1,-5", "1,3,0,-6", "2,3,1,7"),
        r"column 'timestamp': 2 negative times",
    ),
    ImportCase(
        "csv unparsable timestamps",
        lambda _: csv("1,2,1,5", "1,3,0,noon"),
        r"column 'timestamp': type string is neither a number nor a timestamp",
    ),
    ImportCase("csv null ids", lambda _: csv("1,2,1,5", ",3,0,6", ",4,1,7"), r"column 'user_id': 2 null ids"),
    ImportCase(
        "csv propensities outside (0, 1]",
        lambda _: csv("1,2,1,5,0", "1,3,0,6,1.5", "2,2,1,7,0.5", header=GOOD_HEADER + ",p"),
        r"column 'p': 2 values NaN or outside \(0, 1\]",
        flags=("--propensity-col", "p"),
    ),
    ImportCase(
        "parquet truncated", lambda tmp: parquet_bytes(tmp, GOOD_TABLE, cut=60), r"unreadable Parquet file", ".parquet"
    ),
    ImportCase(
        "parquet wrong dtype",
        lambda tmp: parquet_bytes(tmp, GOOD_TABLE.set_column(2, "label", pa.array(["a", "b", "c"]))),
        r"column 'label': type string is not numeric",
        ".parquet",
    ),
]


@pytest.mark.parametrize("case", IMPORT_CASES, ids=[c.name for c in IMPORT_CASES])
def test_bad_import_file(case: ImportCase, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / f"log{case.suffix}"
    source.write_bytes(case.content(tmp_path))
    out = tmp_path / "out"
    code = main(["data", "import", "--interactions", str(source), "--out", str(out), *case.flags])
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.search(rf"^distrec: error: {re.escape(str(source))}: {case.message}", err), err
    assert all(c.isprintable() or c == "\n" for c in err), repr(err)  # no raw bytes echoed to the terminal
    assert sorted(p.name for p in tmp_path.iterdir()) == [source.name], "output was half-written"


# ----------------------------------------------------------------------------- datasets given to `run`


@pytest.fixture
def dataset(tiny_dataset: tuple[Path, Manifest], tmp_path: Path) -> tuple[Path, Manifest]:
    """A private copy of the tiny synthetic dataset, for one case to break."""
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset[0], root)
    return root, tiny_dataset[1]


def first_file(root: Path, manifest: Manifest, split: str = "train") -> Path:
    return manifest.files(root, split)[0]


def rewrite(path: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    pq.write_table(change(pq.read_table(path, partitioning=None)), path)


def truncate(root: Path, manifest: Manifest) -> tuple[Path, str, str]:
    path = first_file(root, manifest, "valid")
    path.write_bytes(path.read_bytes()[:-200])
    return path, "", "unreadable Parquet file"


def drop_column(root: Path, manifest: Manifest) -> tuple[Path, str, str]:
    path = first_file(root, manifest)
    rewrite(path, lambda t: t.drop_columns(["ts"]))
    return path, "ts", "missing"


def narrow_ids(root: Path, manifest: Manifest) -> tuple[Path, str, str]:
    path = first_file(root, manifest)
    rewrite(path, lambda t: t.set_column(t.schema.get_field_index("user_id"), "user_id", t["user_id"].cast(pa.int32())))
    return path, "user_id", "type int32, expected int64"


def ids_out_of_range(root: Path, manifest: Manifest) -> tuple[Path, str, str]:
    path = first_file(root, manifest, "test_id")
    n = manifest.cardinality["item_id"]

    def change(t: pa.Table) -> pa.Table:
        items = t["item_id"].to_pylist()
        items[:3] = [n, n + 5, -1]
        return t.set_column(t.schema.get_field_index("item_id"), "item_id", pa.array(items, pa.int64()))

    rewrite(path, change)
    return path, "item_id", rf"3 values outside \[0, {n}\)"


def nan_labels(root: Path, manifest: Manifest) -> tuple[Path, str, str]:
    path = first_file(root, manifest)

    def change(t: pa.Table) -> pa.Table:
        labels = t["label"].to_pylist()
        labels[:2] = [float("nan"), float("inf")]
        return t.set_column(t.schema.get_field_index("label"), "label", pa.array(labels, pa.float32()))

    rewrite(path, change)
    return path, "label", "2 NaN or infinite values"


def escaping_manifest(root: Path, manifest: Manifest) -> tuple[Path, str, str]:
    outside = root.parent / "elsewhere"
    outside.mkdir()
    shutil.copy(first_file(root, manifest), outside / "part-00000.parquet")
    raw = json.loads((root / MANIFEST).read_text())
    raw["splits"]["train"].append("../../elsewhere")
    (root / MANIFEST).write_text(json.dumps(raw))
    return root / MANIFEST, "", r"split 'train' names '\.\./\.\./elsewhere', which lies outside"


def empty_partition_dir(root: Path, manifest: Manifest) -> tuple[Path, str, str]:
    path = first_file(root, manifest, "valid")
    path.unlink()
    others = list(path.parent.glob("*.parquet"))
    for other in others:
        other.unlink()
    return path.parent, "", r"empty partition \(no Parquet files\)"


def zero_row_file(root: Path, manifest: Manifest) -> tuple[Path, str, str]:
    path = first_file(root, manifest)
    rewrite(path, lambda t: t.slice(0, 0))
    return path, "", r"empty partition \(0 rows\)"


def unreadable_manifest(root: Path, manifest: Manifest) -> tuple[Path, str, str]:
    (root / MANIFEST).write_text('{"name": "x", "sparse": [')
    return root / MANIFEST, "", "unreadable manifest"


DATASET_CASES = [
    truncate,
    drop_column,
    narrow_ids,
    ids_out_of_range,
    nan_labels,
    escaping_manifest,
    empty_partition_dir,
    zero_row_file,
    unreadable_manifest,
]


def run_args(root: Path, runs: Path, *overrides: str) -> list[str]:
    return ["run", "jobs/local.yaml", f"data.path={root}", f"runs_dir={runs}", "train.epochs=1", *overrides]


def assert_nothing_written(runs: Path) -> None:
    assert not runs.exists() or not any(runs.iterdir()), f"half-written: {sorted(runs.iterdir())}"


@pytest.mark.parametrize("breaks", DATASET_CASES, ids=[b.__name__ for b in DATASET_CASES])
def test_bad_dataset_is_refused_before_ray_starts(
    breaks: Callable[[Path, Manifest], tuple[Path, str, str]],
    dataset: tuple[Path, Manifest],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, manifest = dataset
    path, column, what = breaks(root, manifest)
    runs = tmp_path / "runs"
    assert main(run_args(root, runs)) == 2
    err = capsys.readouterr().err
    assert re.search(rf"{re.escape(str(path))}: .*{f'column {column!r}: ' if column else ''}{what}", err), err
    assert_nothing_written(runs)


# ----------------------------------------------------------------------------- model files


def export_of(tmp_path: Path, weights: Callable[[Path], None] | None) -> Path:
    """A model export directory whose weights.pt is written by ``weights`` (None: left out)."""
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.json").write_text(json.dumps({"name": "student", "arch": "mlp", "dim": 16, "hidden": [64, 32]}))
    if weights is not None:
        weights(export / "weights.pt")
    return export


class Payload:
    """An object a pickle would rebuild by calling ``print``: what weights_only=True must refuse."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return print, ("unpickled!",)


def truncated_weights(path: Path) -> None:
    torch.save({"w": torch.zeros(4096)}, path)
    path.write_bytes(path.read_bytes()[:1000])


MODEL_CASES = [
    ("missing export", None, lambda e: rf"{re.escape(str(e / 'weights.pt'))}: missing"),
    ("truncated weights", truncated_weights, lambda e: rf"{re.escape(str(e))}: unreadable model export"),
    (
        "pickled object in weights.pt",
        lambda p: torch.save({"w": torch.zeros(2), "x": Payload()}, p),
        lambda e: rf"{re.escape(str(e / 'weights.pt'))}: holds pickled objects, not only tensors; refused",
    ),
    (
        "not a state dict",
        lambda p: torch.save([torch.zeros(2)], p),
        lambda e: rf"{re.escape(str(e / 'weights.pt'))}: not a state dict of tensors",
    ),
]


@pytest.mark.parametrize(("case", "weights", "message"), MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_bad_warm_start_export_exits_4(
    case: str,
    weights: Callable[[Path], None] | None,
    message: Callable[[Path], str],
    dataset: tuple[Path, Manifest],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    export = export_of(tmp_path, weights)
    spec = json.loads((export / "model.json").read_text())
    (export / "model.json").write_text(json.dumps({**spec, "manifest": dataset[1].to_json()}))
    runs = tmp_path / "runs"
    assert main(run_args(dataset[0], runs, f"student.warm_start={export}")) == 4
    err = capsys.readouterr().err
    assert re.search(message(export), err), err
    assert "unpickled!" not in err
    assert_nothing_written(runs)


def test_resumed_run_with_a_truncated_model_exits_4(
    dataset: tuple[Path, Manifest], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A partial run whose finished teacher's weights were cut short is refused before Ray starts."""
    runs = tmp_path / "runs"
    partial = runs / "r1.partial"
    saved = load_config(
        "jobs/local.yaml", [f"data.path={dataset[0]}", f"runs_dir={runs}", "run_id=r1", "train.epochs=1"]
    )
    model = partial / "models" / "deepfm"
    model.mkdir(parents=True)
    (partial / "config.yaml").write_text(to_yaml(saved))
    (model / "model.json").write_text(json.dumps({"name": "deepfm", "arch": "deepfm", "dim": 16, "hidden": [64, 32]}))
    truncated_weights(model / "weights.pt")
    (model / "training.json").write_text("{}")
    before = sorted(p.relative_to(runs) for p in runs.rglob("*"))
    assert main(["run", "--resume", str(partial)]) == 4
    assert re.search(rf"{re.escape(str(model))}: unreadable model export", capsys.readouterr().err)
    assert sorted(p.relative_to(runs) for p in runs.rglob("*")) == before


# ----------------------------------------------------------------------------- configuration


def test_unwritable_runs_dir_exits_3(
    dataset: tuple[Path, Manifest], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    runs.write_text("a file where the runs directory should be")
    assert main(run_args(dataset[0], runs)) == 3
    err = capsys.readouterr().err
    assert f"runs_dir={runs}: cannot create the run directory" in err, err
    assert runs.read_text().startswith("a file")


YAML_CASES = [
    ("yaml list", "- train\n- data\n", "the config must be a YAML mapping of keys"),
    ("yaml syntax", "train: {epochs: 2\n", r"not a readable YAML file: while parsing a flow mapping"),
    ("yaml binary", "\x00\x01binary", "not a readable YAML file: unacceptable character"),
]


@pytest.mark.parametrize(("case", "text", "message"), YAML_CASES, ids=[c[0] for c in YAML_CASES])
def test_bad_yaml_exits_3(
    case: str, text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(text)
    assert main(["run", str(config), f"runs_dir={tmp_path / 'runs'}"]) == 3
    err = capsys.readouterr().err
    assert re.search(rf"{re.escape(str(config))}: {message}", err), err
    assert_nothing_written(tmp_path / "runs")


OVERRIDE_CASES = [
    ("unknown key", ["train.epoch=2"], [r"Key 'epoch' not in 'TrainConfig'"]),
    ("unknown section", ["trian.epochs=2"], [r"Key 'trian' not in 'Config'"]),
    ("wrong type", ["train.epochs=many"], [r"Value 'many' of type 'str' could not be converted to Integer"]),
    ("not key=value", ["train.epochs"], [r"overrides must be key=value"]),
    (
        "unknown architecture",
        ["student.arch=transformer"],
        [r"student.arch must be one of \[.*'mlp'.*\], got 'transformer'"],
    ),
    (
        "unknown sparse optimizer",
        ["train.sparse_optimizer=adamw"],
        [r"train.sparse_optimizer must be one of .* on cpu"],
    ),
    ("adam on cpu", ["train.sparse_optimizer=adam"], [r"train.sparse_optimizer must be one of .* on cpu"]),
    ("batch size 0", ["train.batch_size=0"], [r"train.batch_size must be >= 1, got 0"]),
    ("negative bootstrap resamples", ["eval.bootstrap=-5"], [r"eval.bootstrap must be >= 0, got -5"]),
    (
        "gate interval out of range",
        ["nightly.gate_resamples=-1", "nightly.gate_level=1.5"],
        [r"nightly.gate_resamples must be >= 0, got -1", r"nightly.gate_level must be in \(0, 1\), got 1.5"],
    ),
    ("unknown sharding type", ["train.sharding_types=[diagonal]"], [r"torchrec's ShardingType.*got 'diagonal'"]),
    ("run_id escapes runs_dir", ["run_id=../elsewhere"], [r"run_id must be a plain directory name"]),
    (
        "every problem at once",
        [
            "student.arch=transformer",
            "train.sparse_optimizer=adamw",
            "train.batch_size=0",
            "eval.k=0",
            "train.lr_schedule=step",
        ],
        [
            r"\(5 problems\)",
            "student.arch",
            "train.sparse_optimizer",
            "train.batch_size",
            "eval.k",
            "train.lr_schedule",
        ],
    ),
]


@pytest.mark.parametrize(("case", "overrides", "messages"), OVERRIDE_CASES, ids=[c[0] for c in OVERRIDE_CASES])
def test_bad_override_exits_3_within_seconds(
    case: str, overrides: list[str], messages: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    started = time.perf_counter()
    assert main(["run", "jobs/local.yaml", f"runs_dir={runs}", *overrides]) == 3
    assert time.perf_counter() - started < 30  # before any data is read or Ray starts (5 s on an idle machine)
    err = capsys.readouterr().err
    for message in messages:
        assert re.search(message, err), err
    assert_nothing_written(runs)


def test_a_validation_split_the_dataset_lacks_exits_3(
    dataset: tuple[Path, Manifest], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = dataset
    manifest = json.loads((root / MANIFEST).read_text())
    del manifest["splits"]["valid_random"], manifest["rows"]["valid_random"]
    (root / MANIFEST).write_text(json.dumps(manifest))
    shutil.rmtree(root / "valid_random")
    runs = tmp_path / "runs"
    assert main(run_args(root, runs, "train.valid_split=valid_random")) == 3
    err = capsys.readouterr().err
    assert f"train.valid_split=valid_random: {root / MANIFEST} has no valid_random split" in err, err
    assert_nothing_written(runs)
