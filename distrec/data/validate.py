"""Checks that a table holds valid rows of a dataset: columns, types and value ranges.

Every check is vectorised with ``pyarrow.compute``; all problems of a table are reported in one
:class:`DataError` whose message names the source file, each bad column and how many values are bad.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeAlias

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from distrec.data.schema import HISTORY, ITEM, LABEL, MANIFEST, PROPENSITY, SPLITS, Manifest
from distrec.errors import DataError

Column: TypeAlias = pa.Array | pa.ChunkedArray


def _count(mask: Column) -> int:
    """Number of True values of a boolean array; nulls are not counted."""
    return int(pc.sum(mask).as_py() or 0)


def _same_type(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Type equality that ignores the name and nullability of list elements (writers differ on both)."""
    if pa.types.is_list(expected):
        return (pa.types.is_list(actual) or pa.types.is_large_list(actual)) and _same_type(
            actual.value_type, expected.value_type
        )
    return actual.equals(expected)


def _out_of_range(values: Column, cardinality: int) -> int:
    return _count(pc.or_(pc.less(values, 0), pc.greater_equal(values, cardinality)))


def _value_problems(field: pa.Field, col: Column, cardinality: dict[str, int], item_cardinality: int) -> list[str]:
    """Problems of one column whose type is already known to be right."""
    name = field.name
    problems: list[str] = []
    if not field.nullable and col.null_count:
        problems.append(f"{col.null_count} null values")
    if pa.types.is_floating(field.type):
        if n := _count(pc.invert(pc.is_finite(col))):
            problems.append(f"{n} NaN or infinite values")
        finite = pc.is_finite(col)
        if name == LABEL and (n := _count(pc.and_(finite, pc.invert(pc.is_in(col, pa.array([0.0, 1.0], col.type)))))):
            problems.append(f"{n} values not in {{0, 1}}")
        if name == PROPENSITY and (n := _count(pc.and_(finite, pc.or_(pc.less_equal(col, 0.0), pc.greater(col, 1.0))))):
            problems.append(f"{n} values outside (0, 1]")
    if name in cardinality and (n := _out_of_range(col, cardinality[name])):
        problems.append(f"{n} values outside [0, {cardinality[name]})")
    if name == HISTORY:
        items = pc.list_flatten(col)
        if items.null_count:
            problems.append(f"{items.null_count} null item ids inside lists")
        if n := _out_of_range(items, item_cardinality):
            problems.append(f"{n} item ids outside [0, {item_cardinality})")
    return [f"column {name!r}: {p}" for p in problems]


def validate_table(table: pa.Table, manifest: Manifest, source: str) -> None:
    """Raise :class:`DataError` unless ``table`` holds valid rows of the dataset ``manifest`` describes.

    Checks the columns of ``manifest.schema()`` only: the ``ds`` partition column and any other extra
    column are ignored. A column of the wrong type is reported as such and its values are not checked.
    """
    cardinality = {**manifest.cardinality, **manifest.confounders}
    problems: list[str] = []
    for field in manifest.schema():
        if field.name not in table.column_names:
            problems.append(f"column {field.name!r}: missing")
            continue
        col = table[field.name]
        if not _same_type(col.type, field.type):
            problems.append(f"column {field.name!r}: type {col.type}, expected {field.type}")
            continue
        problems += _value_problems(field, col, cardinality, manifest.cardinality[ITEM])
    if problems:
        raise DataError(f"{source}: " + "; ".join(problems))


def read_parquet_checked(path: str | Path, manifest: Manifest) -> pa.Table:
    """Read one Parquet file of a dataset and validate it.

    Returns the manifest's columns only, in its order and with its schema; a corrupt or unreadable
    file, an empty one or invalid rows raise :class:`DataError` naming ``path``.
    """
    try:
        table = pq.read_table(path, partitioning=None)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: unreadable Parquet file: {exc}") from exc
    if table.num_rows == 0:
        raise DataError(f"{path}: empty partition (0 rows)")
    validate_table(table, manifest, str(path))
    schema = manifest.schema()
    return table.select(schema.names).cast(schema)


REQUIRED_SPLITS = ("train", "test_id")


def check_dataset(root: Path, manifest: Manifest, values: bool = True) -> None:
    """Check a whole dataset before any work: its layout, then (``values``) every value of every file.

    The manifest's partitions must lie inside ``root`` (a ``../`` entry would make a run read, or an
    overwrite delete, files elsewhere) and each must hold Parquet files; ``train`` and ``test_id``
    must exist. Every problem of every file goes into one :class:`DataError`.
    """
    base, problems = root.resolve(), []
    for split in REQUIRED_SPLITS:
        if not manifest.splits.get(split):
            problems.append(f"{root / MANIFEST}: split {split!r} has no partitions")
    for split, parts in manifest.splits.items():
        if split not in SPLITS:
            problems.append(f"{root / MANIFEST}: unknown split {split!r}; expected some of {list(SPLITS)}")
            continue
        for part in parts:
            directory = root / split / part
            if not directory.resolve().is_relative_to(base):
                problems.append(f"{root / MANIFEST}: split {split!r} names {part!r}, which lies outside {root}")
            elif not any(directory.glob("*.parquet")):
                problems.append(f"{directory}: empty partition (no Parquet files)")
    if not problems and values:
        for split in manifest.splits:
            for path in manifest.files(root, split):
                try:
                    read_parquet_checked(path, manifest)
                except DataError as exc:
                    problems.append(str(exc))
    if problems:
        raise DataError("\n".join(problems) if len(problems) > 1 else problems[0])
