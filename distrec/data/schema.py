"""The canonical log format: what every distrec dataset directory contains.

A dataset is a directory::

    DIR/manifest.json
    DIR/<split>/ds=YYYY-MM-DD/part-00000.parquet      split in SPLITS

One Parquet row is one exposure (an item shown to a user) with these columns:

    user_id        int64   dense index in [0, cardinality of user_id)
    item_id        int64   dense index in [0, cardinality of item_id)
    label          float32 1.0 = positive feedback (click, rating >= threshold), else 0.0
    ts             int64   event time, seconds since the epoch
    policy         string  name of the logging policy that chose the exposure
    propensity     float32 nullable; probability the policy gave this exposure
    is_random      bool    True when the exposure was chosen uniformly at random
    hist_item_ids  list<int64>  the user's most recent positive items before ts (may be empty)
    <sparse>       int64   extra categorical features, each in [0, its cardinality)
    <dense>        float32 extra numeric features
    <confounder>   int64   observed confounders C, categorical in [0, cardinality)
    true_ctr       float32 optional; the true click probability (synthetic data only)
    p_obs, p_do    float32 optional; the observational and interventional truths (synthetic data only)

Ids are already indices: importers map raw ids to them, so readers never see strings.
The manifest names the feature columns, their cardinalities and roles, and the splits.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import pyarrow as pa

from distrec.errors import DataError
from distrec.io import atomic_write_json

USER = "user_id"
ITEM = "item_id"
LABEL = "label"
TS = "ts"
POLICY = "policy"
PROPENSITY = "propensity"
IS_RANDOM = "is_random"
HISTORY = "hist_item_ids"
TRUE_CTR = "true_ctr"
P_OBS = "p_obs"  # synthetic: the observational Bayes probability P(Y | u, i) under the logging policy
P_DO = "p_do"  # synthetic: the interventional probability P(Y | u, x, do(i)), the exposure confounder averaged out
P_FD = "p_fd"  # synthetic: the front-door target P(Y | do(x), i), the user confounder averaged out
TRUTHS = (TRUE_CTR, P_OBS, P_DO, P_FD)

# test_ood: the exposure policy flipped; test_do (synthetic): the history set by intervention;
# valid_random: a validation split under uniformly random exposure, to select on what a shift rewards;
# valid_do (synthetic): test_do's validation twin, to select on what the front-door target rewards
SPLITS = ("train", "valid", "test_id", "test_ood", "test_do", "valid_random", "valid_do")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1

Side = Literal["user", "item", "context"]

# Arrow types of the fixed columns; extra columns are typed by their role in the manifest.
BASE_SCHEMA = pa.schema(
    [
        pa.field(USER, pa.int64(), nullable=False),
        pa.field(ITEM, pa.int64(), nullable=False),
        pa.field(LABEL, pa.float32(), nullable=False),
        pa.field(TS, pa.int64(), nullable=False),
        pa.field(POLICY, pa.string(), nullable=False),
        pa.field(PROPENSITY, pa.float32(), nullable=True),
        pa.field(IS_RANDOM, pa.bool_(), nullable=False),
        pa.field(HISTORY, pa.list_(pa.int64()), nullable=False),
    ]
)


@dataclass(frozen=True)
class SparseFeature:
    """A categorical feature with its own embedding table (``hist_item_ids`` shares ``item_id``'s).

    ``table_rows`` sizes the feature's embedding table when it differs from the id cardinality:
    fewer rows hash the ids into the table, more rows leave room for ids yet to come.
    """

    name: str
    cardinality: int
    side: Side
    table_rows: int | None = None

    @property
    def rows(self) -> int:
        return self.table_rows or self.cardinality


@dataclass
class Manifest:
    """Describes one dataset directory; written last, so its presence means the data is complete."""

    name: str
    sparse: list[SparseFeature]
    dense: list[str] = field(default_factory=list)
    confounders: dict[str, int] = field(default_factory=dict)
    history_max_len: int = 0
    splits: dict[str, list[str]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    has_true_ctr: bool = False
    source: dict[str, object] = field(default_factory=dict)
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.sparse = [s if isinstance(s, SparseFeature) else SparseFeature(**s) for s in self.sparse]
        names = [s.name for s in self.sparse]
        for required in (USER, ITEM):
            if required not in names:
                raise DataError(f"manifest {self.name!r}: sparse features must include {required!r}")

    @property
    def cardinality(self) -> dict[str, int]:
        """Id cardinality of each sparse feature: valid ids are ``[0, cardinality)``."""
        return {s.name: s.cardinality for s in self.sparse}

    @property
    def table_rows(self) -> dict[str, int]:
        """Embedding table rows of each sparse feature."""
        return {s.name: s.rows for s in self.sparse}

    def with_table_rows(self, rows: dict[str, int]) -> Manifest:
        """A copy whose tables have the given sizes (features not named keep theirs)."""
        unknown = sorted(set(rows) - set(self.cardinality))
        if unknown:
            raise DataError(f"manifest {self.name!r}: table_rows names unknown features {unknown}")
        if any(r <= 0 for r in rows.values()):
            raise DataError(f"manifest {self.name!r}: table_rows must be positive, got {rows}")
        sparse = [replace(s, table_rows=rows.get(s.name, s.table_rows)) for s in self.sparse]
        return replace(self, sparse=sparse)

    def sparse_on(self, side: Side) -> list[str]:
        return [s.name for s in self.sparse if s.side == side]

    def schema(self) -> pa.Schema:
        """Full Arrow schema of this dataset's Parquet files."""
        fields = list(BASE_SCHEMA)
        fields += [pa.field(s.name, pa.int64(), nullable=False) for s in self.sparse if s.name not in (USER, ITEM)]
        fields += [pa.field(d, pa.float32(), nullable=False) for d in self.dense]
        fields += [pa.field(c, pa.int64(), nullable=False) for c in self.confounders]
        if self.has_true_ctr:
            fields += [pa.field(name, pa.float32(), nullable=False) for name in TRUTHS]
        return pa.schema(fields)

    def files(self, root: str | Path, split: str) -> list[Path]:
        """Parquet files of ``split``, in partition order."""
        if split not in self.splits:
            raise DataError(f"{Path(root) / MANIFEST}: no split {split!r}; it has {sorted(self.splits)}")
        out: list[Path] = []
        for part in self.splits[split]:
            out += sorted((Path(root) / split / part).glob("*.parquet"))
        return out

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    def write(self, root: str | Path) -> None:
        atomic_write_json(Path(root) / MANIFEST, self.to_json())

    @classmethod
    def read(cls, root: str | Path) -> Manifest:
        path = Path(root) / MANIFEST
        if not path.is_file():
            raise DataError(f"{path}: no manifest; is {root} a distrec dataset (see `distrec data import`)?")
        try:
            raw = json.loads(path.read_text())
            return cls(**raw)
        except (json.JSONDecodeError, TypeError) as exc:
            raise DataError(f"{path}: unreadable manifest: {exc}") from exc


def partition_name(day: str) -> str:
    """Hive partition directory for a ``YYYY-MM-DD`` day."""
    return f"ds={day}"
