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

from distrec.data.importer import import_interactions, per_user_sizes
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
    # 1970-01-01 00:00:00, 1970-01-31, 1970-02-01 00:00:00, 1970-03-15, 2000-02-29 (times before 1970: test_bad_inputs)
    times = [0, 30 * DAY, 31 * DAY, 73 * DAY, 951_782_400]
    rows = [f"u{n % 2},{n % 3},{n % 2},{ts}" for n, ts in enumerate(times)]
    source = write_csv(tmp_path / "log.csv", "user_id,item_id,label,timestamp", rows)
    manifest = import_interactions(
        source, tmp_path / "out", partition="month", valid_fraction=0.2, test_fraction=0.2, history_len=0
    )
    assert manifest.splits == {
        "train": ["ds=1970-01-01", "ds=1970-02-01"],
        "valid": ["ds=1970-03-01"],
        "test_id": ["ds=2000-02-01"],
    }
    assert manifest.source["partition"] == "month"
    files = manifest.files(tmp_path / "out", "train")
    assert [pq.read_table(f)["ts"].to_pylist() for f in files] == [[0, 30 * DAY], [31 * DAY]]
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


def test_valid_random_takes_the_earliest_random_exposures(tmp_path: Path) -> None:
    # 10 logged rows, then 5 random exposures at t = 100..104 (flagged in the log itself)
    rows = [f"{u % 2},{u % 3},{u % 2},{u},0" for u in range(10)] + [f"{u % 2},{u % 3},1,{100 + u},1" for u in range(5)]
    main = write_csv(tmp_path / "log.csv", "u,i,y,t,rnd", rows)
    common = dict(user_col="u", item_col="i", label_col="y", time_col="t", random_col="rnd", test_fraction=0.2)
    manifest = import_interactions(main, tmp_path / "out", valid_random_fraction=0.4, **common)
    assert manifest.rows == {"train": 7, "valid": 1, "test_id": 2, "test_ood": 3, "valid_random": 2}
    assert manifest.source["valid_random_fraction"] == 0.4
    out = tmp_path / "out"
    ts = {s: pq.read_table(manifest.files(out, s), columns=["ts"])["ts"].to_pylist() for s in manifest.rows}
    assert sorted(ts["valid_random"]) == [100, 101] and sorted(ts["test_ood"]) == [102, 103, 104]
    with pytest.raises(ConfigError, match="valid_random_fraction"):
        import_interactions(main, tmp_path / "bad", valid_random_fraction=1.0, **common)


# row number: user, item, label, timestamp, is_random; a: 10 logged rows (two in the same second) and one
# random row, b: 5, c: 2 (the latest rows of the log, all of them)
PER_USER_LOG = {
    1: ("a", 1, 1, 10, 0),
    2: ("a", 2, 0, 20, 0),
    3: ("a", 3, 1, 30, 0),
    4: ("a", 4, 1, 30, 0),
    5: ("a", 5, 0, 50, 0),
    6: ("a", 1, 1, 55, 1),
    7: ("a", 2, 1, 60, 0),
    8: ("a", 3, 0, 70, 0),
    9: ("a", 4, 1, 80, 0),
    10: ("a", 5, 1, 90, 0),
    11: ("a", 1, 0, 100, 0),
    12: ("b", 1, 1, 15, 0),
    13: ("b", 2, 1, 35, 0),
    14: ("b", 3, 0, 65, 0),
    15: ("b", 4, 1, 85, 0),
    16: ("b", 5, 1, 105, 0),
    17: ("c", 1, 1, 200, 0),
    18: ("c", 2, 0, 210, 0),
}
PER_USER_FILE_ORDER = [18, 4, 11, 6, 13, 1, 16, 9, 2, 17, 7, 14, 3, 10, 5, 15, 8, 12]
# valid 0.1, test 0.2 of each user's logged rows: a (10) 7/1/2, b (5) 3/1/1 (at least one each), c (2) all train
PER_USER_SPLITS = {
    "train": [1, 2, 3, 4, 5, 7, 8, 12, 13, 14, 17, 18],
    "valid": [9, 15],
    "test_id": [10, 11, 16],
    "test_ood": [6],
}


def test_per_user_time_split(tmp_path: Path) -> None:
    rows = [",".join(map(str, PER_USER_LOG[r])) for r in PER_USER_FILE_ORDER]
    source = write_csv(tmp_path / "log.csv", "user,item,label,time,rnd", rows)
    options = {"user_col": "user", "item_col": "item", "time_col": "time", "random_col": "rnd", "history_len": 20}
    out = tmp_path / "out"
    manifest = import_interactions(source, out, valid_fraction=0.1, test_fraction=0.2, split="per-user-time", **options)
    assert manifest.rows == {s: len(r) for s, r in PER_USER_SPLITS.items()}
    # rows are partitioned by their own time: here every split has the same (only) day
    assert manifest.splits == {s: ["ds=1970-01-01"] for s in PER_USER_SPLITS}
    assert manifest.source["split"] == "per-user-time"
    assert (manifest.source["valid_fraction"], manifest.source["test_fraction"]) == (0.1, 0.2)
    assert manifest.source["split_train_only_users"] == 1  # c

    users = {"a": 0, "b": 1, "c": 2}  # raw ids in sorted order; items 1..5 are 0..4
    key = {(users[u], i - 1, ts): r for r, (u, i, _, ts, _) in PER_USER_LOG.items()}
    t = {
        s: pa.concat_tables([read_parquet_checked(f, manifest) for f in manifest.files(out, s)])
        for s in manifest.splits
    }
    got = {s: sorted(key[(r["user_id"], r["item_id"], r["ts"])] for r in t[s].to_pylist()) for s in t}
    assert got == PER_USER_SPLITS
    assert t["test_ood"]["is_random"].to_pylist() == [True]

    # every user with 3+ logged rows is in train and test_id, and its rows are cut in time order
    by_user = {s: t[s].group_by("user_id").aggregate([("ts", "min"), ("ts", "max")]).to_pydict() for s in t}
    assert set(by_user["train"]["user_id"]) == {0, 1, 2} and set(by_user["test_id"]["user_id"]) == {0, 1}
    ts = {
        s: dict(zip(g["user_id"], zip(g["ts_min"], g["ts_max"], strict=True), strict=True)) for s, g in by_user.items()
    }
    for u in (0, 1):
        assert ts["train"][u][1] <= ts["valid"][u][0] <= ts["valid"][u][1] <= ts["test_id"][u][0], u

    # histories: the user's positives strictly before the row's time (the random row's click included),
    # in time then file order; never the row itself, a same-second row or a later one
    position = {r: n for n, r in enumerate(PER_USER_FILE_ORDER)}
    for split, table in t.items():
        for row in table.to_pylist():
            me = key[(row["user_id"], row["item_id"], row["ts"])]
            before = sorted(
                (ts_, position[r], i - 1)
                for r, (u, i, y, ts_, _) in PER_USER_LOG.items()
                if users[u] == row["user_id"] and y == 1 and ts_ < row["ts"]
            )
            assert row["hist_item_ids"] == [i for *_, i in before], (split, me)
    history = {key[(r["user_id"], r["item_id"], r["ts"])]: r["hist_item_ids"] for r in t["train"].to_pylist()}
    assert history[3] == history[4] == [0]  # rows 3 and 4 share a second: neither sees the other

    # the global cut of the same log puts c (the latest rows) in test_id only: a cold-start test user
    glob = import_interactions(source, tmp_path / "global", valid_fraction=0.1, test_fraction=0.2, **options)
    assert glob.source["split"] == "global-time" and "split_train_only_users" not in glob.source
    assert glob.rows == {"train": 12, "valid": 2, "test_id": 3, "test_ood": 1}
    test_users = pq.read_table(tmp_path / "global" / "test_id", columns=["user_id"])["user_id"].to_pylist()
    assert sorted(test_users) == [1, 2, 2]


def test_per_user_sizes_and_bad_split_options(tmp_path: Path) -> None:
    counts = [0, 1, 2, 3, 4, 14, 15, 25, 100]
    valid, test = per_user_sizes(np.array(counts), 0.1, 0.1)
    assert valid.tolist() == test.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 10]  # round half to even, at least 1
    valid, test = per_user_sizes(np.array([2, 3, 4, 5]), 0.45, 0.45)  # capped: one train row is left
    assert test.tolist() == [0, 1, 2, 2] and valid.tolist() == [0, 1, 1, 2]
    valid, test = per_user_sizes(np.array([1, 2, 10]), 0.0, 0.1)  # no valid split: 2 rows are enough
    assert valid.tolist() == [0, 0, 0] and test.tolist() == [0, 1, 1]

    source = write_csv(tmp_path / "log.csv", GOOD_HEADER, ["1,2,1,5", "1,3,0,6", "2,2,1,7", "2,3,1,8"])
    with pytest.raises(ConfigError, match=r"split 'per-user': expected one of \['global-time', 'per-user-time'\]"):
        import_interactions(source, tmp_path / "out", split="per-user")
    with pytest.raises(
        DataError, match=r"no user has the 3 non-random rows needed to fill split\(s\) \['valid', 'test_id'\]"
    ):
        import_interactions(source, tmp_path / "out", split="per-user-time")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]
    manifest = import_interactions(source, tmp_path / "out", split="per-user-time", valid_fraction=0)
    assert manifest.rows == {"train": 2, "test_id": 2}


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


# derived exposure confounders. Row: user, item, click, time, policy, propensity, slot, an explicit column
# named like a derived one. The main file's non-random rows have propensities 0.1, 0.2, 0.4, 0.6, 0.8 and
# one null: quintile edges (linear np.quantile of those five) 0.18, 0.32, 0.48, 0.64, so each known value
# has a bucket of its own and the null gets bucket 5. The random row (0.5) does not move the edges.
EXPOSURE_HEADER = "user,item,click,time,policy,p,slot,conf_policy"
EXPOSURE_LOG = [
    "a,x,1,10,ts,0.1,1,p1",
    "a,y,0,20,eps,0.2,2,p2",
    "b,x,1,30,ts,0.4,1,p1",
    "b,y,0,40,eps,0.6,3,p2",
    "a,x,1,50,ts,0.8,2,p1",
    "b,y,1,60,eps,,1,p2",
    "a,y,0,70,random,0.5,3,p1",
]
EXPOSURE_OOD = ["a,x,1,15,uniform,0.05,4,p1"]  # a policy and a slot seen only in the OOD file
EXPOSURE_OPTIONS = {
    "user_col": "user",
    "item_col": "item",
    "label_col": "click",
    "time_col": "time",
    "policy_col": "policy",
    "propensity_col": "p",
    "position_col": "slot",
    "valid_fraction": 0,
    "test_fraction": 0,
}
# time -> (conf_policy, conf_position, conf_propensity); policies eps=0 random=1 ts=2 uniform=3, slots 1..4 = 0..3
EXPOSURE_CODES = {
    10: (2, 0, 0),
    20: (0, 1, 1),
    30: (2, 0, 2),
    40: (0, 2, 3),
    50: (2, 1, 4),
    60: (0, 0, 5),  # null propensity: its own bucket
    70: (1, 2, 3),  # the random row: 0.48 <= 0.5 < 0.64
    15: (3, 3, 0),  # the OOD row: 0.05 < 0.18
}
DERIVED = ("conf_policy", "conf_position", "conf_propensity")


def exposure_rows(root: Path, manifest: Manifest, names: tuple[str, ...] = DERIVED) -> dict[int, tuple[int, ...]]:
    table = pa.concat_tables(
        [read_parquet_checked(f, manifest) for s in manifest.splits for f in manifest.files(root, s)]
    )
    return {row["ts"]: tuple(row[c] for c in names) for row in table.to_pylist()}


def test_derived_exposure_confounders(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = write_csv(tmp_path / "log.csv", EXPOSURE_HEADER, EXPOSURE_LOG)
    ood = write_csv(tmp_path / "ood.csv", EXPOSURE_HEADER, EXPOSURE_OOD)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="distrec.data.importer"):
        manifest = import_interactions(source, out, ood=ood, **EXPOSURE_OPTIONS)
    assert manifest.rows == {"train": 6, "test_ood": 2}
    assert manifest.confounders == {"conf_policy": 4, "conf_position": 4, "conf_propensity": 6}
    assert exposure_rows(out, manifest) == EXPOSURE_CODES
    assert manifest.source["derived_confounders"] == {
        "conf_policy": "from policy: dictionary code of the logging policy (4 values, vocab/conf_policy.parquet)",
        "conf_position": "from slot: dictionary code of the exposure's position (4 values, "
        "vocab/conf_position.parquet)",
        "conf_propensity": "from p: quantile bucket 0-4 of the propensity, edges [0.18, 0.32, 0.48, 0.64] from "
        "the main file's non-random rows; null propensity: bucket 5",
    }
    assert manifest.source["propensity_edges"] == pytest.approx([0.18, 0.32, 0.48, 0.64])
    assert "derived_confounders_skipped" not in manifest.source
    assert manifest.source["derive_confounders"] is True and manifest.source["columns"]["position"] == "slot"
    vocab = {c: pq.read_table(out / "vocab" / f"{c}.parquet")["raw"].to_pylist() for c in DERIVED[:2]}
    assert vocab == {"conf_policy": ["eps", "random", "ts", "uniform"], "conf_position": [1, 2, 3, 4]}
    assert not (out / "vocab" / "conf_propensity.parquet").exists()  # bucket indices, not dictionary codes
    assert manifest.source["vocab"]["conf_policy"] == "vocab/conf_policy.parquet"
    derived_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("derived confounder ")]
    assert derived_lines == [f"derived confounder {c} {manifest.source['derived_confounders'][c]}" for c in DERIVED]
    assert Manifest.read(out).to_json() == manifest.to_json()

    # without nulls the propensity has 5 buckets; a propensity only (no policy, no position) is enough
    no_null = [row.replace(",,", ",0.9,") for row in EXPOSURE_LOG]
    source = write_csv(tmp_path / "no-null.csv", EXPOSURE_HEADER, no_null)
    options = {**EXPOSURE_OPTIONS, "policy_col": None, "position_col": None}
    manifest = import_interactions(source, tmp_path / "no-null", **options)
    assert manifest.confounders == {"conf_propensity": 5}
    assert set(manifest.source["derived_confounders"]) == {"conf_propensity"}


def test_explicit_confounders_win_a_name_clash(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = write_csv(tmp_path / "log.csv", EXPOSURE_HEADER, EXPOSURE_LOG)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="distrec.data.importer"):
        manifest = import_interactions(source, out, confounder_cols=["conf_policy"], **EXPOSURE_OPTIONS)
    # the explicit column (p1, p2) is kept as given; the derived conf_policy is skipped, the others are derived
    assert manifest.confounders == {"conf_policy": 2, "conf_position": 3, "conf_propensity": 6}
    assert next(iter(manifest.confounders)) == "conf_policy"  # explicit columns first
    assert set(manifest.source["derived_confounders"]) == {"conf_position", "conf_propensity"}
    note = "from policy: not derived: 'conf_policy' is an explicit column, kept as given"
    assert manifest.source["derived_confounders_skipped"] == {"conf_policy": note}
    assert f"confounder conf_policy {note}" in caplog.text
    explicit = {ts: codes[0] for ts, codes in exposure_rows(out, manifest).items()}
    assert explicit == {10: 0, 20: 1, 30: 0, 40: 1, 50: 0, 60: 1, 70: 0}
    assert pq.read_table(out / "vocab" / "conf_policy.parquet")["raw"].to_pylist() == ["p1", "p2"]


def test_single_policy_log_gets_no_policy_confounder(tmp_path: Path) -> None:
    # one logging policy (ts) and a random row: the policy is constant where CRL trains (the non-random rows)
    rows = [row.replace(",eps,", ",ts,") for row in EXPOSURE_LOG]
    source = write_csv(tmp_path / "log.csv", EXPOSURE_HEADER, rows)
    manifest = import_interactions(source, tmp_path / "out", **EXPOSURE_OPTIONS)
    assert manifest.confounders == {"conf_position": 3, "conf_propensity": 6}
    assert manifest.source["derived_confounders_skipped"] == {
        "conf_policy": "from policy: not derived: constant on the main file's non-random rows"
    }
    assert not (tmp_path / "out" / "vocab" / "conf_policy.parquet").exists()


def test_no_derived_confounders_flag(tmp_path: Path) -> None:
    from distrec.cli import main

    source = write_csv(tmp_path / "log.csv", EXPOSURE_HEADER, EXPOSURE_LOG)
    flags = ["--user-col", "user", "--item-col", "item", "--label-col", "click", "--time-col", "time"]
    flags += ["--policy-col", "policy", "--propensity-col", "p", "--position-col", "slot"]
    flags += ["--valid-fraction", "0", "--test-fraction", "0"]
    argv = ["data", "import", "--interactions", str(source), *flags]
    assert main([*argv, "--out", str(tmp_path / "derived")]) == 0
    assert Manifest.read(tmp_path / "derived").confounders == {
        "conf_policy": 3,
        "conf_position": 3,
        "conf_propensity": 6,
    }
    assert main([*argv, "--out", str(tmp_path / "none"), "--no-derived-confounders"]) == 0
    manifest = Manifest.read(tmp_path / "none")
    assert manifest.confounders == {}
    assert manifest.source["derive_confounders"] is False and manifest.source["derived_confounders"] == {}
    assert "derived_confounders_skipped" not in manifest.source and "propensity_edges" not in manifest.source
    assert not any(c in manifest.schema().names for c in DERIVED)
    # explicit confounders are kept without the derived ones
    manifest = import_interactions(
        source, tmp_path / "explicit", confounder_cols=["conf_policy"], derive_confounders=False, **EXPOSURE_OPTIONS
    )
    assert manifest.confounders == {"conf_policy": 2}
