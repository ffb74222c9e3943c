"""Importer presets: MovieLens and Open Bandit on the real files when present, and on small stand-ins always."""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from distrec.cli import main
from distrec.data.importer import SPLIT_MODES
from distrec.data.presets import PRESETS, resolve
from distrec.data.schema import Manifest
from distrec.data.validate import read_parquet_checked
from distrec.errors import ConfigError
from distrec.eval.groups import GROUP_NAMES, group_counts_from_parquet, groups_from_counts

SHARED = Path(os.environ.get("DISTREC_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
MOVIELENS = SHARED / "ml-latest-small" / "ratings.csv"
OBD = SHARED / "open-bandit-dataset-small"
USER_FEATURES = [f"user_feature_{i}" for i in range(4)]


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} is not available (set DISTREC_SHARED_DATA to the shared data directory)")
    return path


def tables(root: Path, manifest: Manifest) -> dict[str, pa.Table]:
    """Every split, each file read and validated on its own."""
    return {
        s: pa.concat_tables([read_parquet_checked(f, manifest) for f in manifest.files(root, s)])
        for s in manifest.splits
    }


def time_ordered(t: dict[str, pa.Table]) -> None:
    order = [s for s in ("train", "valid", "test_id") if s in t]
    for early, late in itertools.pairwise(order):
        assert pc.max(t[early]["ts"]).as_py() <= pc.min(t[late]["ts"]).as_py(), (early, late)


def time_ordered_per_user(t: dict[str, pa.Table]) -> None:
    """Within each user, train rows are no later than valid rows, which are no later than test_id rows."""
    order = [s for s in ("train", "valid", "test_id") if s in t]
    span = {s: t[s].group_by("user_id").aggregate([("ts", "min"), ("ts", "max")]) for s in order}
    for early, late in itertools.pairwise(order):
        both = span[early].join(span[late], "user_id", join_type="inner", left_suffix="_e", right_suffix="_l")
        assert both.num_rows > 0, (early, late)
        assert pc.all(pc.less_equal(both["ts_max_e"], both["ts_min_l"])).as_py(), (early, late)


def test_movielens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ratings, out = need(MOVIELENS), tmp_path / "ml"
    assert main(["data", "import", "--preset", "movielens", "--interactions", str(ratings), "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"{out}: 100836 rows")
    manifest = Manifest.read(out)
    raw = pcsv.read_csv(ratings)
    t = tables(out, manifest)
    assert sum(manifest.rows.values()) == sum(x.num_rows for x in t.values()) == raw.num_rows
    assert manifest.cardinality == {"user_id": 610, "item_id": 9724}
    positives = sum(pc.sum(x["label"]).as_py() for x in t.values())
    assert positives == pc.sum(pc.greater_equal(raw["rating"], 4.0)).as_py()
    assert positives / raw.num_rows == pytest.approx(0.4818, abs=1e-4)  # 48,580 of 100,836
    # per user: each user's last 10% of ratings (at least one) are test_id, the 10% before them valid
    assert manifest.source["split"] == "per-user-time" and manifest.source["split_train_only_users"] == 0
    assert manifest.rows == {"train": 80_650, "valid": 10_093, "test_id": 10_093}
    time_ordered_per_user(t)
    # every user (all have 20+ ratings) is in every split, so the test users' activity groups, computed as the
    # evaluator does (quintiles of train rows per user), are spread evenly: no longer mostly q1 cold start
    counts = group_counts_from_parquet(manifest.files(out, "train"), num_users=610)
    assert counts.min() > 0
    groups = groups_from_counts(counts)
    test_users = np.unique(t["test_id"]["user_id"].to_numpy())
    assert len(test_users) == 610 and len(np.unique(t["valid"]["user_id"].to_numpy())) == 610
    share = np.bincount(groups[test_users], minlength=len(GROUP_NAMES)) / len(test_users)
    assert share[0] < 0.5 and share.tolist() == [0.2] * 5
    # no random exposures and no --ood: test_ood is absent, not empty, and the pipeline accepts that
    assert set(manifest.splits) == set(manifest.rows) == {"train", "valid", "test_id"}
    assert not (out / "test_ood").exists()
    from distrec.orchestrate.pipeline import prepare_dataset

    assert prepare_dataset(SimpleNamespace(data=SimpleNamespace(path=str(out), validate=False))) == out
    # monthly partitions: one file per (split, month), named by the month's first day; per user, the
    # splits share most months (262 train, 245 valid, 238 test_id files)
    files = [f for s in manifest.splits for f in manifest.files(out, s)]
    assert 600 < len(files) < 900
    for path in files:
        ds = path.parent.name
        assert re.fullmatch(r"ds=\d{4}-\d{2}-01", ds), ds
        months = pq.read_table(path, columns=["ts"])["ts"].to_numpy().astype("datetime64[s]").astype("datetime64[M]")
        assert set(months.astype(str)) == {ds[3:10]}, path
    assert manifest.source["partition"] == "month" and manifest.source["preset"] == "movielens"
    assert manifest.confounders == {"conf_popularity": 5}
    counts = np.bincount(t["train"]["conf_popularity"].to_numpy(), minlength=5)
    assert counts.min() > 0.15 * counts.sum()  # quintiles of rows (ties make them uneven)


def test_open_bandit(tmp_path: Path) -> None:
    bts, random = need(OBD / "bts" / "all" / "all.csv"), need(OBD / "random" / "all" / "all.csv")
    out = tmp_path / "obd"
    argv = ["data", "import", "--preset", "open-bandit", "--interactions", str(bts), "--ood", str(random)]
    assert main([*argv, "--out", str(out)]) == 0
    manifest = Manifest.read(out)
    t = tables(out, manifest)
    raw_bts, raw_random = pcsv.read_csv(bts), pcsv.read_csv(random)

    def keys(table: pa.Table) -> pa.Array:
        return pc.binary_join_element_wise(*(table[c] for c in USER_FEATURES), "|")

    unseen_user = int(pc.sum(pc.invert(pc.is_in(keys(raw_random), value_set=pc.unique(keys(raw_bts))))).as_py())
    assert manifest.source["ood_dropped_rows"] == unseen_user == 44  # documented: user combinations unseen in bts
    assert manifest.rows == {"train": 8000, "valid": 1000, "test_id": 1000, "test_ood": raw_random.num_rows - 44}
    assert manifest.source["split"] == "global-time"  # the preset keeps the global time cut
    assert sum(t[s].num_rows for s in ("train", "valid", "test_id")) == raw_bts.num_rows
    time_ordered(t)
    assert manifest.cardinality["user_id"] == len(pc.unique(keys(raw_bts))) == 253
    assert manifest.cardinality["item_id"] == 80
    assert manifest.sparse_on("user") == ["user_id", *USER_FEATURES]
    assert manifest.sparse_on("item") == ["item_id", "item_feature_1", "item_feature_2", "item_feature_3"]
    assert manifest.confounders == {"conf_position": 3, "conf_propensity": 5}
    logged = pa.concat_tables([t[s] for s in ("train", "valid", "test_id")])
    for split, table, raw, policy in (("logged", logged, raw_bts, "bts"), ("test_ood", t["test_ood"], None, "random")):
        p = table["propensity"].to_numpy()
        assert p.min() > 0 and p.max() <= 1, split
        assert set(table["policy"].to_pylist()) == {policy}
        assert set(table["is_random"].to_pylist()) == {policy == "random"}
        for c, k in manifest.confounders.items():
            assert pc.min(table[c]).as_py() >= 0 and pc.max(table[c]).as_py() < k, (split, c)
        if raw is not None:
            assert pc.sum(table["label"]).as_py() == pc.sum(raw["click"]).as_py()
            assert np.isclose(p.sum(), raw["propensity_score"].to_numpy().sum(), rtol=1e-5)
    assert np.allclose(t["test_ood"]["propensity"].to_numpy(), 1 / 80)
    # quintile bins of the Bernoulli-TS propensities; every uniform-random row (1/80) falls in the lowest
    assert np.bincount(logged["conf_propensity"].to_numpy()).min() >= 0.14 * logged.num_rows
    assert set(t["test_ood"]["conf_propensity"].to_pylist()) == {0}
    user_vocab = pq.read_table(out / "vocab" / "user_id.parquet")["raw"].to_pylist()
    assert all(len(key.split("|")) == 4 for key in user_vocab)


# ----------------------------------------------------------------------------- small stand-ins, always run

MONTH = 31 * 86_400


def test_movielens_preset_partitions_and_explicit_overrides(tmp_path: Path) -> None:
    ratings = tmp_path / "ratings.csv"
    rows = [(1, 10, 4.0, 5), (2, 10, 3.5, 10), (1, 20, 5.0, MONTH), (2, 30, 4.5, MONTH + 86_400)]
    rows += [(1, 30, 2.0, 2 * MONTH), (3, 10, 4.0, 2 * MONTH + 1), (2, 20, 1.0, 3 * MONTH), (3, 20, 5.0, 3 * MONTH)]
    ratings.write_text("userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},{ts}\n" for u, i, r, ts in rows))

    fractions = ["--valid-fraction", "0.25", "--test-fraction", "0.25"]
    preset = ["data", "import", "--preset", "movielens", "--interactions", str(ratings), *fractions]
    # the preset's own split: per user, the last 25% (at least one) of each user's ratings are test_id and
    # the 25% before them valid; user 3 has only 2 ratings and keeps both in train
    assert main([*preset, "--out", str(tmp_path / "per-user")]) == 0
    manifest = Manifest.read(tmp_path / "per-user")
    assert manifest.source["split"] == "per-user-time" and manifest.source["split_train_only_users"] == 1
    assert manifest.splits == {
        "train": ["ds=1970-01-01", "ds=1970-03-01", "ds=1970-04-01"],
        "valid": ["ds=1970-02-01"],
        "test_id": ["ds=1970-03-01", "ds=1970-04-01"],
    }
    t = tables(tmp_path / "per-user", manifest)
    assert {s: sorted(zip(x["user_id"].to_pylist(), x["ts"].to_pylist(), strict=True)) for s, x in t.items()} == {
        "train": [(0, 5), (1, 10), (2, 2 * MONTH + 1), (2, 3 * MONTH)],
        "valid": [(0, MONTH), (1, MONTH + 86_400)],
        "test_id": [(0, 2 * MONTH), (1, 3 * MONTH)],
    }
    time_ordered_per_user(t)

    # an explicit --split wins over the preset's: the global time cut
    base = [*preset, "--split", "global-time"]
    assert main([*base, "--out", str(tmp_path / "month")]) == 0
    manifest = Manifest.read(tmp_path / "month")
    assert manifest.splits == {
        "train": ["ds=1970-01-01", "ds=1970-02-01"],
        "valid": ["ds=1970-03-01"],
        "test_id": ["ds=1970-04-01"],
    }
    assert manifest.rows == {"train": 4, "valid": 2, "test_id": 2}
    assert manifest.source["split"] == "global-time" and "split_train_only_users" not in manifest.source
    time_ordered(tables(tmp_path / "month", manifest))
    assert manifest.name == "movielens"
    labels = pa.concat_tables(tables(tmp_path / "month", manifest).values())["label"].to_pylist()
    assert sum(labels) == 5  # rating >= 4
    # item 10: 3 ratings, item 20: 3, item 30: 2 -> two popularity buckets
    assert manifest.confounders == {"conf_popularity": 2}

    # explicit flags win over the preset's values
    argv = [*base, "--out", str(tmp_path / "day"), "--partition", "day", "--label-threshold", "4.5", "--name", "x"]
    assert main(argv) == 0
    manifest = Manifest.read(tmp_path / "day")
    assert manifest.splits["train"] == ["ds=1970-01-01", "ds=1970-02-01", "ds=1970-02-02"]
    assert manifest.name == "x" and manifest.source["label_threshold"] == 4.5
    labels = pa.concat_tables(tables(tmp_path / "day", manifest).values())["label"].to_pylist()
    assert sum(labels) == 3

    options = resolve("movielens", ratings, confounder_cols=[], history_len=3)
    assert options["confounder_cols"] == [] and options["history_len"] == 3 and options["partition"] == "month"
    assert options["split"] == "per-user-time"
    assert resolve("movielens", ratings, split="global-time")["split"] == "global-time"
    assert resolve(None, ratings, partition="day") == {"partition": "day"}
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        resolve("nope", ratings)
    assert main([*base, "--out", str(tmp_path / "bad"), "--preset", "nope"]) == 3
    with pytest.raises(SystemExit) as info:  # argparse rejects an unknown split mode
        main([*preset, "--out", str(tmp_path / "bad"), "--split", "random"])
    assert info.value.code == 2
    assert not (tmp_path / "bad").exists()


def write_obd(path: Path, rows: list[tuple[int, int, int, int, float, str]]) -> Path:
    """An Open Bandit-shaped log: (second, item, position, click, propensity, user features 'a|b|c|d')."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ",timestamp,item_id,position,click,propensity_score," + ",".join(USER_FEATURES) + ",user-item_affinity_0"
    lines = [
        f"{n},2019-11-{24 + s // 86_400:02d} {s % 86_400 // 3600:02d}:00:{s % 60:02d}.5+00:00,{i},{pos},{c},{p},"
        + ",".join(user.split("|"))
        + ",0.0"
        for n, (s, i, pos, c, p, user) in enumerate(rows)
    ]
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def test_open_bandit_preset_on_a_small_log(tmp_path: Path) -> None:
    u1, u2, u3 = "a|b|c|d", "a|b|c|e", "z|b|c|d"
    day_one = [(0, 0, 1, 0, 0.9, u1), (1, 1, 2, 1, 0.1, u2), (2, 2, 3, 0, 0.3, u1), (3, 0, 1, 0, 0.5, u2)]
    day_two = [(86_400, 1, 2, 0, 0.7, u1), (86_401, 2, 1, 1, 0.2, u2), (86_402, 0, 3, 0, 0.05, u1)]
    day_two += [(86_403, 1, 1, 0, 0.6, u2), (86_404, 2, 2, 0, 0.4, u1), (86_405, 0, 3, 1, 0.8, u2)]
    bts = write_obd(tmp_path / "bts" / "all" / "all.csv", [*day_one, *day_two])
    write_obd(
        tmp_path / "random" / "all" / "all.csv",
        [(5, 0, 1, 1, 1 / 3, u2), (6, 1, 2, 0, 1 / 3, u3), (86_406, 2, 3, 0, 1 / 3, u1)],
    )
    (tmp_path / "bts" / "all" / "item_context.csv").write_text(
        ",item_id,item_feature_0,item_feature_1,item_feature_2,item_feature_3\n"
        "0,0,0.5,h1,g1,k1\n1,1,-0.5,h2,g1,k1\n2,2,1.5,h1,g2,k1\n"
    )
    out = tmp_path / "out"
    fractions = ["--valid-fraction", "0.2", "--test-fraction", "0.2"]
    argv = ["data", "import", "--preset", "open-bandit", "--interactions", str(bts), "--out", str(out), *fractions]
    assert main(argv) == 0  # --ood defaults to random/all/all.csv beside bts/
    manifest = Manifest.read(out)
    assert manifest.rows == {"train": 6, "valid": 2, "test_id": 2, "test_ood": 2}  # u3 is unseen in bts: dropped
    assert manifest.source["split"] == "global-time"
    assert manifest.source["ood"] == str((tmp_path / "random" / "all" / "all.csv").resolve())
    assert manifest.name == "open-bandit-all"
    assert manifest.cardinality == {
        "user_id": 2,
        "item_id": 3,
        "user_feature_0": 1,
        "user_feature_1": 1,
        "user_feature_2": 1,
        "user_feature_3": 2,
        "item_feature_1": 2,
        "item_feature_2": 2,
        "item_feature_3": 1,
    }
    assert pq.read_table(out / "vocab" / "user_id.parquet")["raw"].to_pylist() == [u1, u2]
    t = tables(out, manifest)
    ood = t["test_ood"].to_pylist()
    assert [(r["user_id"], r["item_id"], r["policy"], r["is_random"], r["conf_position"]) for r in ood] == [
        (1, 0, "random", True, 0),
        (0, 2, "random", True, 2),
    ]
    # the confounders come from the importer's generic derivation (position_col, propensity_col); the
    # policy is constant (bts) on the logged rows, so there is no conf_policy
    assert manifest.confounders == {"conf_position": 3, "conf_propensity": 5}
    assert set(manifest.source["derived_confounders"]) == {"conf_position", "conf_propensity"}
    assert manifest.source["derived_confounders"]["conf_position"].startswith("from position: dictionary code")
    assert manifest.source["derived_confounders_skipped"] == {
        "conf_policy": "from behavior_policy: not derived: constant on the main file's non-random rows"
    }
    assert "conf_propensity" not in manifest.source["prepared"]
    edges = manifest.source["propensity_edges"]
    propensities = [r[4] for r in [*day_one, *day_two]]
    assert edges == pytest.approx(np.quantile(propensities, [0.2, 0.4, 0.6, 0.8]))
    logged = pa.concat_tables([t[s] for s in ("train", "valid", "test_id")])
    expected = np.searchsorted(edges, logged["propensity"].to_numpy().astype(np.float64), side="right")
    # buckets and edges are computed from the stored (float32) propensities, so they agree exactly
    assert logged["conf_propensity"].to_pylist() == expected.tolist()
    assert [r["conf_propensity"] for r in ood] == [np.searchsorted(edges, 1 / 3, side="right")] * 2
    assert [r["item_feature_1"] for r in ood] == [0, 0] and [r["item_feature_2"] for r in ood] == [0, 1]
    assert [r["ts"] for r in t["train"].to_pylist()][:2] == [1574553600, 1574553601]

    # --no-derived-confounders: the preset's confounders are derived ones, so none are left
    bare_argv = ["data", "import", "--preset", "open-bandit", "--interactions", str(bts), *fractions]
    assert main([*bare_argv, "--out", str(tmp_path / "bare"), "--no-derived-confounders"]) == 0
    bare = Manifest.read(tmp_path / "bare")
    assert bare.confounders == {} and bare.source["derived_confounders"] == {}
    assert "conf_position" not in tables(tmp_path / "bare", bare)["train"].column_names


def test_every_preset_is_named_in_the_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["data", "import", "--help"])
    help_text = capsys.readouterr().out
    assert all(name in help_text for name in PRESETS)
    assert f"--split {{{','.join(SPLIT_MODES)}}}" in help_text  # the CLI's choices are the importer's modes
