"""``distrec data import --append``: a new day's log added to an imported dataset, through the real CLI
on real CSV and Parquet files: known ids keep their indices, new ids get new ones (within the tables'
headroom) or are hashed, the manifest lists the days, and a bad append changes nothing."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from distrec.cli import main
from distrec.config import Config
from distrec.data.importer import _extending
from distrec.data.schema import HISTORY, ITEM, TS, USER, Manifest
from distrec.data.validate import check_dataset
from distrec.nightly.job import check_day

DAY0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
COLUMNS = ("--user-col", "user", "--item-col", "item", "--policy-col", "policy")


def day_log(days: range, users: int, items: int, rows: int, seed: int) -> pa.Table:
    """A raw log: string user ids ``u<k>``, integer item ids from 100, 10% random exposures, 0/1 labels."""
    rng = np.random.default_rng(seed)
    parts = []
    for day in days:
        start = int((DAY0 + dt.timedelta(days=day)).timestamp())
        parts.append(
            {
                "user": [f"u{k}" for k in rng.integers(0, users, rows)],
                "item": (100 + rng.integers(0, items, rows)).tolist(),
                "label": rng.integers(0, 2, rows).tolist(),
                "timestamp": np.sort(start + rng.integers(0, 86_400, rows)).tolist(),
                "policy": np.where(rng.random(rows) < 0.1, "random", "logging").tolist(),
            }
        )
    return pa.table({k: [v for p in parts for v in p[k]] for k in parts[0]})


def write(table: pa.Table, path: Path) -> Path:
    (pcsv.write_csv if path.suffix == ".csv" else pq.write_table)(table, path)
    return path


def imported(tmp_path: Path, *extra: str) -> Path:
    """Days 0 and 1 imported from a CSV file."""
    out = tmp_path / "ds"
    log = write(day_log(range(2), 30, 40, 200, seed=1), tmp_path / "days01.csv")
    assert main(["data", "import", "--interactions", str(log), "--out", str(out), *COLUMNS, *extra]) == 0
    return out


def vocab(dataset: Path, feature: str) -> list[object]:
    return pq.read_table(dataset / "vocab" / f"{feature}.parquet").column("raw").to_pylist()


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def append(dataset: Path, log: Path, *extra: str) -> int:
    return main(["data", "import", "--append", "--interactions", str(log), "--out", str(dataset), *extra])


def test_append_keeps_ids_and_adds_new_ones(tmp_path: Path) -> None:
    dataset = imported(tmp_path, "--headroom", "2")
    before = Manifest.read(dataset)
    users0, items0 = vocab(dataset, USER), vocab(dataset, ITEM)
    assert before.table_rows == {USER: 2 * len(users0), ITEM: 2 * len(items0)}
    assert list(before.source["days"]) == ["2026-03-01", "2026-03-02"]

    raw = day_log(range(2, 3), 36, 46, 200, seed=2)  # 6 more users and items may show up
    assert append(dataset, write(raw, tmp_path / "day2.parquet")) == 0
    after = Manifest.read(dataset)
    users, items = vocab(dataset, USER), vocab(dataset, ITEM)
    assert users[: len(users0)] == users0 and items[: len(items0)] == items0  # known ids keep their indices
    new_users = sorted(set(raw.column("user").to_pylist()) - set(users0))
    new_items = sorted(set(raw.column("item").to_pylist()) - set(items0))
    assert new_users and new_items and users[len(users0) :] == new_users and items[len(items0) :] == new_items
    assert after.cardinality[USER] == len(users) and after.table_rows == before.table_rows  # the tables keep shape

    # every appended row maps back to its raw ids; the manifest lists the new day and its rows
    stored = pa.concat_tables(
        pq.read_table(f) for s in after.splits for f in after.files(dataset, s) if "03-03" in str(f)
    )
    stored = stored.sort_by([(TS, "ascending"), (USER, "ascending"), (ITEM, "ascending")])
    back = pa.table(
        {
            "user": pa.array(users).take(stored.column(USER)),
            "item": pa.array(items).take(stored.column(ITEM)),
            "timestamp": stored.column(TS),
        }
    ).sort_by([("timestamp", "ascending"), ("user", "ascending"), ("item", "ascending")])
    expect = raw.select(["user", "item", "timestamp"]).sort_by(
        [("timestamp", "ascending"), ("user", "ascending"), ("item", "ascending")]
    )
    assert back.equals(expect)
    day = after.source["days"]["2026-03-03"]
    assert set(day) == {"train", "valid", "test_ood"} and sum(day.values()) == 200
    assert day["test_ood"] == raw.column("policy").to_pylist().count("random")
    assert after.rows == {s: before.rows.get(s, 0) + day.get(s, 0) for s in after.rows}
    assert after.source["appends"][-1]["unseen_ids"] == {USER: len(new_users), ITEM: len(new_items)}
    check_dataset(dataset, after)  # schema, ranges and row counts of every file

    # histories continue from the imported days: some day-3 row of a known user has a non-empty history
    train = pq.read_table(dataset / "train" / "ds=2026-03-03")
    first = train.sort_by(TS).slice(0, 20)
    assert any(len(h) for h in first.column(HISTORY).to_pylist())

    # the nightly reads the dataset as a day store: the appended day passes its data checks
    config = replace(Config(), nightly=replace(Config().nightly, window_days=2, median_days=2))
    assert check_day(dataset, after, "2026-03-03", config) == ["2026-03-01", "2026-03-02"]


def test_new_ids_beyond_the_tables_refused_or_hashed(tmp_path: Path) -> None:
    dataset = imported(tmp_path)  # no headroom: the tables hold the imported ids only
    raw = day_log(range(2, 3), 36, 40, 200, seed=3)
    log = write(raw, tmp_path / "day2.csv")
    unchanged = snapshot(dataset)
    with pytest.raises(SystemExit):  # --new-ids is an --append option
        main(["data", "import", "--interactions", str(log), "--out", str(tmp_path / "x"), "--new-ids", "hashed"])
    assert append(dataset, log) == 2
    assert snapshot(dataset) == unchanged

    users0, cardinality = vocab(dataset, USER), Manifest.read(dataset).cardinality
    assert append(dataset, log, "--new-ids", "hash") == 0
    after = Manifest.read(dataset)
    assert vocab(dataset, USER) == users0 and after.cardinality == cardinality  # nothing grows
    train = pq.read_table(dataset / "train" / "ds=2026-03-03").to_pydict()
    stored = dict(zip(train[TS], train[USER], strict=True))
    seen = {}
    for user, ts in zip(raw.column("user").to_pylist(), raw.column("timestamp").to_pylist(), strict=True):
        if ts in stored and user not in users0:  # a new user: hashed onto a known index, stably
            digest = hashlib.blake2b(repr(user).encode(), digest_size=8).digest()
            assert stored[ts] == int.from_bytes(digest, "little") % cardinality[USER]
            seen[user] = stored[ts]
        elif ts in stored:
            assert stored[ts] == users0.index(user)
    assert seen and after.source["appends"][-1]["new_ids"] == "hash"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop_columns(["label"]), "missing column(s) ['label']"),
        (lambda t: t.set_column(2, "label", pa.array([2] * t.num_rows)), "column 'label': 200 values not in {0, 1}"),
        (lambda t: t.set_column(4, "policy", pa.array([None] * t.num_rows, pa.string())), "column 'policy': 200 null"),
        (lambda t: t.set_column(3, "timestamp", pa.array([int(DAY0.timestamp())] * t.num_rows)), "200 rows fall in"),
        (lambda t: t.set_column(1, "item", pa.array(["x"] * t.num_rows)), "column 'item': string values do not"),
    ],
    ids=["no-label-column", "labels-not-0-1", "null-policy", "day-already-present", "item-ids-of-another-type"],
)
def test_malformed_append_refused_dataset_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: Callable[[pa.Table], pa.Table], message: str
) -> None:
    dataset = imported(tmp_path, "--headroom", "2")
    unchanged = snapshot(dataset)
    log = write(change(day_log(range(2, 3), 36, 46, 200, seed=4)), tmp_path / "bad.csv")
    capsys.readouterr()
    assert append(dataset, log) == 2
    err = capsys.readouterr().err
    assert str(log) in err and message in err, err
    assert snapshot(dataset) == unchanged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "days01.csv", "ds"]  # no temporary left


def test_append_options_and_failure_inside_leave_the_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = imported(tmp_path, "--headroom", "2")
    unchanged = snapshot(dataset)
    log = write(day_log(range(2, 3), 30, 40, 100, seed=5), tmp_path / "day2.csv")
    capsys.readouterr()
    assert append(dataset, log, "--user-col", "user", "--overwrite") == 3
    assert "drop --user-col, --overwrite" in capsys.readouterr().err
    with pytest.raises(OSError, match="disk full"), _extending(dataset) as tmp:  # a failure mid-build
        (tmp / "train" / "ds=2026-03-03").mkdir()
        pq.write_table(day_log(range(2, 3), 30, 40, 10, seed=6), tmp / "train" / "ds=2026-03-03" / "part-00000.parquet")
        Manifest.read(tmp).write(tmp)  # a new file over the link, as the append writes its manifest
        raise OSError("disk full")
    assert snapshot(dataset) == unchanged and sorted(p.name for p in tmp_path.iterdir()) == [
        "day2.csv",
        "days01.csv",
        "ds",
    ]
