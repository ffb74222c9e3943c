"""import_interactions: exact round trip of a small log, real MovieLens, and clean rejection of bad files."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from distrec.data.importer import import_interactions
from distrec.data.schema import Manifest
from distrec.data.validate import read_parquet_checked
from distrec.errors import ConfigError, DataError

DAY = 86_400
SHARED = Path(os.environ.get("DISTREC_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
MOVIELENS = SHARED / "ml-latest-small" / "ratings.csv"

# row number: user, item, label, timestamp, policy, genre (a function of the item), mood (context)
LOG = {
    1: ("alice", 10, 1, 100, "ts", "x", "happy"),
    2: ("bob", 20, 0, 200, "ts", "y", "sad"),
    3: ("alice", 20, 1, 300, "ts", "y", "happy"),
    4: ("alice", 30, 0, 300, "ts", "x", "sad"),
    5: ("bob", 10, 1, DAY + 10, "random", "x", "happy"),
    6: ("alice", 30, 1, DAY + 20, "ts", "x", "sad"),
    7: ("bob", 30, 1, DAY + 30, "ts", "x", "happy"),
    8: ("carol", 10, 0, 2 * DAY + 5, "ts", "x", "happy"),
    9: ("alice", 10, 1, 2 * DAY + 6, "ts", "x", "sad"),
    10: ("bob", 20, 1, 2 * DAY + 7, "ts", "y", "happy"),
    11: ("alice", 20, 0, 2 * DAY + 8, "ts", "y", "sad"),
}
FILE_ORDER = [9, 2, 5, 1, 11, 4, 7, 3, 10, 6, 8]  # not time-sorted on purpose
# alice=0 bob=1 carol=2; items 10=0 20=1 30=2; genre x=0 y=1; mood happy=0 sad=1; history_len=2, oldest first
EXPECTED = {
    1: (0, 0, 1.0, 100, "ts", False, [], 0, 0),
    2: (1, 1, 0.0, 200, "ts", False, [], 1, 1),
    3: (0, 1, 1.0, 300, "ts", False, [0], 1, 0),
    4: (0, 2, 0.0, 300, "ts", False, [0], 0, 1),  # item 20 was clicked at the same time: not history
    5: (1, 0, 1.0, DAY + 10, "random", True, [], 0, 0),
    6: (0, 2, 1.0, DAY + 20, "ts", False, [0, 1], 0, 1),
    7: (1, 2, 1.0, DAY + 30, "ts", False, [0], 0, 0),  # the random row's click counts as history
    8: (2, 0, 0.0, 2 * DAY + 5, "ts", False, [], 0, 0),
    9: (0, 0, 1.0, 2 * DAY + 6, "ts", False, [1, 2], 0, 1),
    10: (1, 1, 1.0, 2 * DAY + 7, "ts", False, [0, 2], 1, 0),
    11: (0, 1, 0.0, 2 * DAY + 8, "ts", False, [2, 0], 1, 1),
}
COLUMNS = ["user_id", "item_id", "label", "ts", "policy", "is_random", "hist_item_ids", "genre", "mood"]


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def small_log(path: Path) -> Path:
    rows = [",".join(map(str, LOG[r])) for r in FILE_ORDER]
    return write_csv(path, "user,item,click,time,policy,genre,mood", rows)


def read_rows(root: Path, manifest: Manifest, split: str) -> list[tuple[object, ...]]:
    table = pa.concat_tables([read_parquet_checked(f, manifest) for f in manifest.files(root, split)])
    return sorted(tuple(row[c] for c in COLUMNS) for row in table.to_pylist())


def test_small_log_round_trip(tmp_path: Path) -> None:
    source, out = small_log(tmp_path / "log.csv"), tmp_path / "out"
    manifest = import_interactions(
        source,
        out,
        user_col="user",
        item_col="item",
        label_col="click",
        time_col="time",
        policy_col="policy",
        sparse_cols=["genre"],
        confounder_cols=["mood"],
        valid_fraction=0.2,
        test_fraction=0.2,
        history_len=2,
    )
    assert Manifest.read(out).to_json() == manifest.to_json()
    assert manifest.name == "log"
    assert manifest.cardinality == {"user_id": 3, "item_id": 3, "genre": 2}
    assert manifest.sparse_on("item") == ["item_id", "genre"]
    assert manifest.confounders == {"mood": 2}
    assert manifest.history_max_len == 2
    assert manifest.splits == {
        "train": ["ds=1970-01-01", "ds=1970-01-02"],
        "valid": ["ds=1970-01-03"],
        "test_id": ["ds=1970-01-03"],
        "test_ood": ["ds=1970-01-02"],
    }
    assert manifest.rows == {"train": 6, "valid": 2, "test_id": 2, "test_ood": 1}
    members = {"train": [1, 2, 3, 4, 6, 7], "valid": [8, 9], "test_id": [10, 11], "test_ood": [5]}
    for split, rows in members.items():
        assert read_rows(out, manifest, split) == sorted(EXPECTED[r] for r in rows), split
    # propensities are unknown without a propensity column
    assert pq.read_table(manifest.files(out, "train")[0])["propensity"].null_count == 4

    vocab = {f: pq.read_table(out / "vocab" / f"{f}.parquet").to_pydict() for f in ("user_id", "item_id", "mood")}
    assert vocab["user_id"] == {"raw": ["alice", "bob", "carol"], "index": [0, 1, 2]}
    assert vocab["item_id"] == {"raw": [10, 20, 30], "index": [0, 1, 2]}
    assert vocab["mood"] == {"raw": ["happy", "sad"], "index": [0, 1]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv", "out"]


def test_month_partitions(tmp_path: Path) -> None:
    # 1969-12-31 23:59:59, 1970-01-31, 1970-02-01 00:00:00, 1970-03-15, 2000-02-29
    times = [-1, 30 * DAY, 31 * DAY, 73 * DAY, 951_782_400]
    rows = [f"u{n % 2},{n % 3},{n % 2},{ts}" for n, ts in enumerate(times)]
    source = write_csv(tmp_path / "log.csv", "user_id,item_id,label,timestamp", rows)
    manifest = import_interactions(
        source, tmp_path / "out", partition="month", valid_fraction=0.2, test_fraction=0.2, history_len=0
    )
    assert manifest.splits == {
        "train": ["ds=1969-12-01", "ds=1970-01-01", "ds=1970-02-01"],
        "valid": ["ds=1970-03-01"],
        "test_id": ["ds=2000-02-01"],
    }
    assert manifest.source["partition"] == "month"
    files = manifest.files(tmp_path / "out", "train")
    assert [pq.read_table(f)["ts"].to_pylist() for f in files] == [[-1], [30 * DAY], [31 * DAY]]
    with pytest.raises(ConfigError, match="partition 'week'"):
        import_interactions(source, tmp_path / "week", partition="week")
    assert not (tmp_path / "week").exists()


def test_prepare_derives_columns_and_notes(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "log.csv", "a,b,item_id,label,timestamp", ["1,x,5,1,1", "1,y,5,0,2", "2,x,6,1,3"])

    def prepare(main: pa.Table, ood: pa.Table | None) -> tuple[pa.Table, pa.Table | None, dict[str, object]]:
        user = pc.binary_join_element_wise(main["a"].cast(pa.string()), main["b"], "/")
        return main.append_column("user", user), ood, {"user": "a/b"}

    manifest = import_interactions(
        source,
        tmp_path / "out",
        user_col="user",
        prepare=prepare,
        notes={"preset": "test"},
        valid_fraction=0,
        test_fraction=0,
    )
    assert manifest.source["prepared"] == {"user": "a/b"} and manifest.source["preset"] == "test"
    assert pq.read_table(tmp_path / "out" / "vocab" / "user_id.parquet")["raw"].to_pylist() == ["1/x", "1/y", "2/x"]


def test_ood_file_random_flags_and_propensities(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    main = write_csv(
        tmp_path / "main.csv",
        "u,i,y,t,rnd,p",
        ["7,100,1,10,0,0.5", "8,200,0,20,1,0.25", "7,200,1,30,0,1", "8,100,1,40,0,", "7,100,0,50,0,0.1"],
    )
    ood = tmp_path / "shifted.parquet"
    columns = ["u", "i", "y", "t", "rnd", "p"]
    rows = [(7, 200, 1, 25, 1, 0.5), (9, 100, 1, 26, 1, 0.5), (8, 300, 0, 27, 1, 0.5), (8, 200, 0, 45, 1, 0.5)]
    pq.write_table(pa.table(dict(zip(columns, zip(*rows, strict=True), strict=True))), ood)
    with caplog.at_level(logging.WARNING):
        manifest = import_interactions(
            main,
            tmp_path / "out",
            user_col="u",
            item_col="i",
            label_col="y",
            time_col="t",
            random_col="rnd",
            propensity_col="p",
            ood=ood,
            valid_fraction=0.25,
            test_fraction=0.25,
            history_len=5,
        )
    assert f"{ood}: dropped 2 of 4 rows" in caplog.text
    assert manifest.source["ood_dropped_rows"] == 2
    assert manifest.cardinality == {"user_id": 2, "item_id": 2}
    assert manifest.rows == {"train": 2, "valid": 1, "test_id": 1, "test_ood": 3}
    table = pa.concat_tables([read_parquet_checked(f, manifest) for f in manifest.files(tmp_path / "out", "test_ood")])
    got = [
        (r["user_id"], r["item_id"], r["ts"], r["policy"], r["is_random"], r["hist_item_ids"])
        for r in table.to_pylist()
    ]
    assert got == [(1, 1, 20, "random", True, []), (0, 1, 25, "random", True, [0]), (1, 1, 45, "random", True, [0])]
    assert table["propensity"].to_pylist() == [0.25, 0.5, 0.5]
    train = read_parquet_checked(manifest.files(tmp_path / "out", "train")[0], manifest).to_pylist()
    assert [(r["ts"], r["propensity"], r["policy"], r["hist_item_ids"]) for r in train] == [
        (10, 0.5, "logging", []),
        (30, 1.0, "logging", [0, 1]),  # includes the OOD file's click at t=25
    ]
    test_id = read_parquet_checked(manifest.files(tmp_path / "out", "test_id")[0], manifest).to_pylist()
    assert test_id[0]["ts"] == 50 and test_id[0]["hist_item_ids"] == [0, 1, 1]


@pytest.mark.skipif(not MOVIELENS.is_file(), reason="MovieLens ml-latest-small is not available")
def test_movielens(tmp_path: Path) -> None:
    out = tmp_path / "ml"
    manifest = import_interactions(
        MOVIELENS, out, user_col="userId", item_col="movieId", label_col="rating", label_threshold=4.0, name="ml"
    )
    raw = pcsv.read_csv(MOVIELENS)
    assert manifest.cardinality == {"user_id": 610, "item_id": 9724}
    assert sum(manifest.rows.values()) == raw.num_rows == 100_836
    assert manifest.rows == {"train": 80_668, "valid": 10_084, "test_id": 10_084}
    tables = {s: pq.read_table(out / s) for s in manifest.splits}
    assert tables["train"]["ts"].to_numpy().max() <= tables["valid"]["ts"].to_numpy().min()
    assert tables["valid"]["ts"].to_numpy().max() <= tables["test_id"]["ts"].to_numpy().min()
    positives = sum(pc.sum(t["label"]).as_py() for t in tables.values())
    assert positives == pc.sum(pc.greater_equal(raw["rating"], 4.0)).as_py()
    vocab = pq.read_table(out / "vocab" / "item_id.parquet")
    assert vocab["raw"].to_pylist() == sorted(set(raw["movieId"].to_pylist()))

    # brute-force histories of a sample of test rows; same-second clicks keep the file's order
    columns = (raw[c].to_pylist() for c in ("userId", "movieId", "rating", "timestamp"))
    events: dict[int, list[tuple[int, int, int]]] = {}
    for position, (user, item, rating, ts) in enumerate(zip(*columns, strict=True)):
        if rating >= 4.0:
            events.setdefault(user, []).append((ts, position, item))
    user_raw = pq.read_table(out / "vocab" / "user_id.parquet")["raw"].to_pylist()
    item_raw = vocab["raw"].to_pylist()
    test = tables["test_id"].to_pylist()
    lengths = []
    for row in [test[i] for i in np.random.default_rng(0).choice(len(test), 300, replace=False)]:
        before = sorted(event for event in events.get(user_raw[row["user_id"]], []) if event[0] < row["ts"])
        assert [item_raw[i] for i in row["hist_item_ids"]] == [item for *_, item in before[-20:]]
        lengths.append(len(row["hist_item_ids"]))
    assert max(lengths) == 20 and min(lengths) < 20


GOOD_HEADER = "user_id,item_id,label,timestamp"
BAD_FILES = [
    ("missing column", "user_id,item_id,label\n1,2,1\n", r"missing column\(s\) \['timestamp'\]"),
    ("nan label", GOOD_HEADER + "\n1,2,1,5\n1,3,,6\n2,2,NaN,7\n", r"'label': 2 null, NaN or infinite"),
    ("label values", GOOD_HEADER + "\n1,2,1,5\n1,3,2,6\n2,2,5,7\n2,3,0,8\n", r"'label': 2 values not in"),
    ("text label", GOOD_HEADER + "\n1,2,yes,5\n1,3,no,6\n", r"'label': type string is not numeric"),
    ("null id", GOOD_HEADER + "\n1,2,1,5\n,3,0,6\n", r"'user_id': 1 null ids"),
    ("null time", GOOD_HEADER + "\n1,2,1,5\n1,3,0,\n2,3,0,\n", r"'timestamp': 2 null values"),
    ("text time", GOOD_HEADER + "\n1,2,1,noon\n", r"'timestamp': type string is neither"),
    ("header only", GOOD_HEADER + "\n", r"empty file \(0 rows\)"),
    ("zero bytes", "", r"empty file$"),
]


@pytest.mark.parametrize(("case", "text", "message"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_csv_is_rejected_without_output(tmp_path: Path, case: str, text: str, message: str) -> None:
    source = tmp_path / "bad.csv"
    source.write_text(text)
    with pytest.raises(DataError, match=rf"^{re.escape(str(source))}: .*{message}") as info:
        import_interactions(source, tmp_path / "out")
    assert info.value.exit_code == 2
    assert [p.name for p in tmp_path.iterdir()] == ["bad.csv"]


def test_corrupt_parquet_and_bad_ood_are_rejected_without_output(tmp_path: Path) -> None:
    corrupt = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": [1, 2], "label": [0, 1], "timestamp": [1, 2]}), corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:40])
    with pytest.raises(DataError, match=rf"^{re.escape(str(corrupt))}: unreadable Parquet file"):
        import_interactions(corrupt, tmp_path / "out")

    good = write_csv(tmp_path / "good.csv", GOOD_HEADER + ",p", ["1,2,1,5,0.5", "1,3,0,6,0.5", "2,2,1,7,0.5"])
    bad_ood = write_csv(tmp_path / "ood.csv", "user_id,item_id,label", ["1,2,1"])
    with pytest.raises(DataError, match=rf"^{re.escape(str(bad_ood))}: missing column\(s\) \['timestamp'\]"):
        import_interactions(good, tmp_path / "out", ood=bad_ood, valid_fraction=0, test_fraction=0)
    unseen = write_csv(tmp_path / "unseen.csv", GOOD_HEADER + ",p", ["9,9,1,5,0.5"])
    with pytest.raises(DataError, match=rf"^{re.escape(str(unseen))}: none of its 1 rows"):
        import_interactions(good, tmp_path / "out", ood=unseen, valid_fraction=0, test_fraction=0)
    bad_p = write_csv(tmp_path / "p.csv", GOOD_HEADER + ",p", ["1,2,1,5,0", "1,3,0,6,1.5", "2,2,1,7,"])
    with pytest.raises(DataError, match=rf"^{re.escape(str(bad_p))}: column 'p': 2 values NaN or outside \(0, 1\]"):
        import_interactions(bad_p, tmp_path / "out", propensity_col="p", valid_fraction=0, test_fraction=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.csv", "log.parquet", "ood.csv", "p.csv", "unseen.csv"]

    import_interactions(good, tmp_path / "out", valid_fraction=0, test_fraction=0)
    with pytest.raises(ConfigError):
        import_interactions(good, tmp_path / "out", valid_fraction=0, test_fraction=0)
    import_interactions(good, tmp_path / "out", valid_fraction=0, test_fraction=0, overwrite=True)
    assert Manifest.read(tmp_path / "out").splits == {"train": ["ds=1970-01-01"]}
