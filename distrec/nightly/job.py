"""``distrec nightly CONFIG --date D``: one night of retraining on a day store (``distrec.data.days``).

1. Data checks that fail closed (DataError, exit 2; the champion is not touched): the date's
   partitions exist, are complete (their row counts are the manifest's) and non-empty, every file
   reads with the manifest's schema and values, the date's rows are within
   ``[min_rows_ratio, max_rows_ratio]`` x the median of the ``median_days`` days before it, its label
   rate is within ``[min_label_rate, max_label_rate]``, and every day of the window exists.
2. The window: a dataset (``<runs_dir>/nightly/data/<run id>/``) of the ``window_days`` days before
   the date as train and valid, and the date itself, held out, as test_id and test_ood.
3. The pipeline's own stages (``distrec.orchestrate.pipeline.run``) under the run id
   ``nightly-<date>-<config hash>``: a retry resumes the partial run. Teachers, base and student
   warm-start from the champion's exports, for ``warm_epochs`` epochs (unless ``warm_start`` is false:
   a retrain from scratch, gated against the champion all the same).
4. Gates (``distrec.nightly.gates``) of the challenger against the champion, both evaluated on the
   held-out date (AUC and log loss as paired bootstrap intervals over its users), written to
   ``gates.json`` and report.md whatever the outcome.
5. The run is logged to MLflow, registered as a version tagged with the date, window, config hash,
   source commit, gates and previous champion, and given the ``challenger`` alias. Then, under the
   registry's lock, and against the champion of that moment: promotion (the ``champion`` alias move,
   the commit point) if the gates pass or ``--force``, else the version is tagged rejected.

A date already decided (promoted or rejected) is a no-op that reports the version it produced.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import statistics
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distrec.config import Config, to_yaml
from distrec.data.days import day_rows, window_view
from distrec.data.schema import LABEL, MANIFEST, Manifest, partition_name
from distrec.data.validate import read_parquet_checked
from distrec.errors import ConfigError, DataError, DistrecError
from distrec.eval.evaluate import PAIRED_METRICS, activity_groups_of, paired_intervals, score_export, split_metrics
from distrec.io import atomic_write_json, atomic_write_text
from distrec.nightly.gates import check_gates, gate_table
from distrec.nightly.registry import CHALLENGER, CHAMPION, Registry

if TYPE_CHECKING:
    from distrec.console import Console

log = logging.getLogger("distrec")
GATES = "gates.json"
GATE_SECTION = "\n## Nightly gates\n"


class NotPromoted(DistrecError):
    """The night ran but its challenger did not become the champion (a failed gate, or a refusal)."""

    exit_code = 1


@dataclass
class Outcome:
    date: str
    version: str | None
    decision: str  # promoted | rejected
    run_dir: Path | None
    noop: bool = False

    def line(self) -> str:
        done = " (already done)" if self.noop else ""
        return f"{self.date}: version {self.version} {self.decision}{done}" + (
            f" {self.run_dir}" if self.run_dir else ""
        )


def config_hash(config: Config) -> str:
    """The identity of a nightly config (run_id aside): with the date, it names the night's run."""
    return hashlib.sha1(to_yaml(replace(config, run_id=None)).encode()).hexdigest()[:10]


def source_commit() -> str:
    """The git commit of the code that ran, or ``unknown`` (e.g. an image without .git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def window_days(date: str, days: int) -> list[str]:
    day = dt.date.fromisoformat(date)
    return [(day - dt.timedelta(days=i)).isoformat() for i in range(days, 0, -1)]


def check_day(store: Path, manifest: Manifest, date: str, config: Config) -> list[str]:
    """The fail-closed data checks of one night (module docstring, 1.); the window's days."""
    settings = config.nightly
    days = day_rows(manifest)
    where = store / MANIFEST
    if date not in days:
        last = next(reversed(days), None)
        raise DataError(f"{where}: no complete partition for {date} (the last complete day is {last})")
    window = window_days(date, settings.window_days)
    missing = [d for d in window if d not in days]
    if missing:
        raise DataError(f"{where}: the training window {window[0]}..{window[-1]} lacks the days {missing}")
    rows = labels = 0
    for split, expected in days[date].items():
        directory = store / split / partition_name(date)
        files = sorted(directory.glob("*.parquet"))
        if not files:
            raise DataError(f"{directory}: missing partition: the manifest lists {expected} {split} rows for {date}")
        found = 0
        for path in files:
            table = read_parquet_checked(path, manifest)  # schema and values; a corrupt file raises
            found += table.num_rows
            if split != "test_ood":
                rows += table.num_rows
                labels += int(table.column(LABEL).to_numpy().sum())
        if found != expected:
            raise DataError(f"{directory}: incomplete partition: {found} rows, the manifest lists {expected}")
    if rows == 0:
        raise DataError(f"{store}: the logged partitions of {date} are empty (0 rows)")
    before = [sum(n for s, n in counts.items() if s != "test_ood") for d, counts in days.items() if d < date]
    before = before[-settings.median_days :]
    if before:
        median = statistics.median(before)
        low, high = settings.min_rows_ratio * median, settings.max_rows_ratio * median
        if not low <= rows <= high:
            raise DataError(
                f"{store}: {date} has {rows} logged rows, outside [{low:.0f}, {high:.0f}] "
                f"({settings.min_rows_ratio} to {settings.max_rows_ratio} x the median {median:.0f} "
                f"of the {len(before)} days before)"
            )
    rate = labels / rows
    if not settings.min_label_rate <= rate <= settings.max_label_rate:
        raise DataError(
            f"{store}: {date} column {LABEL!r}: label rate {rate:.4f} over {rows} rows is outside "
            f"[{settings.min_label_rate}, {settings.max_label_rate}]"
        )
    return window


def find_night(registry: Registry, date: str) -> tuple[str, dict[str, str]] | None:
    """The latest version a night of ``date`` registered, with its tags, or None. Keyed by the date
    alone: a date promoted once stays done even after the code or the config changed (its hash with it)."""
    for version in reversed(registry.versions()):
        if version.tags.get("nightly_date") == date:
            return str(version.version), version.tags
    return None


def _warm(config: Config, exports: Path, epochs: int) -> Config:
    """``config`` with every model warm-started from the champion's exports of the same name."""

    def start(model: Any) -> Any:
        source = exports / model.name
        return replace(model, warm_start=str(source)) if (source / "model.json").is_file() else model

    train = replace(config.train, epochs=epochs or config.train.epochs)
    return replace(config, teachers=[start(t) for t in config.teachers], student=start(config.student), train=train)


def _gate(config: Config, run_dir: Path, view: Path, champion: Path | None) -> tuple[bool, list[dict[str, Any]], dict]:
    """The gates of a finished run's model against the champion's same model, on the held-out date."""
    name, nightly = config.nightly.model, config.nightly
    challenger = json.loads((run_dir / "metrics.json").read_text())["models"][name]
    baseline, intervals = None, {}
    if champion is not None:
        groups = activity_groups_of(Manifest.read(view), view)
        theirs = score_export(champion / name, view, config.eval.batch_size)  # scored once: metrics and intervals
        baseline = {split: split_metrics(scored, groups, config.eval.k) for split, scored in theirs.items()}
        paths = [tuple(g.metric.split(".")) for g in nightly.gates if g.metric.rsplit(".", 1)[-1] in PAIRED_METRICS]
        if nightly.gate_resamples and paths:
            splits = tuple(dict.fromkeys(path[0] for path in paths))
            mine = score_export(run_dir / "models" / name, view, config.eval.batch_size, splits)
            found = paired_intervals(
                mine, theirs, groups, paths, nightly.gate_resamples, config.seed, nightly.gate_level
            )
            intervals = {".".join(path): interval for path, interval in found.items()}
    passed, rows = check_gates(nightly.gates, challenger, baseline, intervals)
    return passed, rows, {"challenger": challenger, "champion": baseline}


def _write_gates(run_dir: Path, record: dict[str, Any]) -> None:
    """gates.json, and the gate table as the last section of report.md (replaced on a re-gate)."""
    atomic_write_json(run_dir / GATES, record)
    report = (run_dir / "report.md").read_text().split(GATE_SECTION)[0]
    verdict = "passed" if record["passed"] else "FAILED"
    champion = f"v{record['champion']}" if record["champion"] else "none (first night: floors only)"
    text = (
        f"{GATE_SECTION}\nDate {record['date']} (held out), trained on {record['window'][0]}..{record['window'][-1]}; "
        f"champion {champion}; gates {verdict}{' (forced)' if record['force'] else ''}.\n\n"
        f"{gate_table(record['gates'])}\n"
    )
    atomic_write_text(run_dir / "report.md", report + text)


def nightly(config: Config, date: str, force: bool = False, console: Console | None = None) -> Outcome:
    """One night (module docstring); raises DataError on bad data, NotPromoted when not promoted. A
    ``console`` shows the training run's stages, with the libraries' output in its RUN_DIR/logs."""
    if not config.data.path:
        raise ConfigError("distrec nightly needs data.path: a day store (distrec.data.days)")
    store = Path(config.data.path)
    key = config_hash(config)
    run_id = f"nightly-{date}-{key}"
    runs = Path(config.runs_dir)
    registry = Registry(config.registry, runs)
    found = find_night(registry, date)
    if found and found[1].get("decision") and not (force and found[1]["decision"] == "rejected"):
        version, tags = found
        done_dir = runs / tags.get("run_id", run_id)
        outcome = Outcome(date, version, tags["decision"], done_dir, noop=True)
        if tags["decision"] != "promoted":
            raise NotPromoted(f"{outcome.line()}: gates failed, see {done_dir / GATES}; --force promotes it")
        return outcome

    manifest = Manifest.read(store)
    window = check_day(store, manifest, date, config)
    state_path = runs / "nightly" / f"{run_id}.json"
    if state_path.is_file():  # a retry: the same champion as the first attempt, so the same run config
        state = json.loads(state_path.read_text())
    else:
        state = {"date": date, "window": window, "champion": registry.alias(CHAMPION), "config_hash": key}
        atomic_write_json(state_path, state)
    champion: str | None = state["champion"]
    if champion is None and config.nightly.first_night == "refuse" and not force:
        raise NotPromoted(f"{date}: no champion yet and nightly.first_night=refuse; --force cold-starts one")
    view = runs / "nightly" / "data" / run_id
    window_view(store, manifest, window, date, view)
    run_config = replace(config, run_id=run_id, data=replace(config.data, path=str(view)))
    exports = registry.download(champion) if champion else None
    warm_from = None  # the champion this night continues from, if any
    if exports is not None and config.nightly.warm_start:
        warm_from = champion
        run_config = _warm(run_config, exports, config.nightly.warm_epochs)
    run_dir = runs / run_id
    if not run_dir.is_dir():
        from distrec.orchestrate.pipeline import run

        log.info("nightly %s: training on %s..%s, champion %s", date, window[0], window[-1], champion or "none")
        run_dir = run(run_config, console=console)

    passed, rows, values = _gate(config, run_dir, view, exports)
    record = {
        "date": date,
        "window": window,
        "run_id": run_id,
        "config_hash": key,
        "champion": champion,
        "force": force,
        "passed": passed,
        "gates": rows,
        "metrics": values,
    }
    _write_gates(run_dir, record)
    tags = {
        "nightly_date": date,
        "data_window": f"{window[0]}..{window[-1]}",
        "config_hash": key,
        "source_commit": source_commit(),
        "run_id": run_id,
        "warm_start_from": warm_from or "",
        "force": str(force).lower(),
    }
    mlflow_id = registry.log_run(run_dir, tags)
    version = registry.register(mlflow_id, tags)
    registry.tag(version, {"gates": "passed" if passed else "failed"})
    registry.set_alias(CHALLENGER, version)

    with registry.lock():
        current = registry.alias(CHAMPION)
        if current not in (champion, version):  # promoted by another night since: gate against that one
            log.info("nightly %s: the champion moved to v%s meanwhile; gating against it", date, current)
            passed, rows, values = _gate(config, run_dir, view, registry.download(current) if current else None)
            record.update(champion=current, passed=passed, gates=rows, metrics=values)
            _write_gates(run_dir, record)
            registry.client.log_artifact(mlflow_id, str(run_dir / GATES))
            registry.tag(version, {"gates": "passed" if passed else "failed"})
        if passed or force:
            registry.promote(version, "forced" if force and not passed else "nightly gates")
            registry.tag(version, {"decision": "promoted"})
            return Outcome(date, version, "promoted", run_dir)
        registry.tag(version, {"decision": "rejected"})
    failed = "; ".join(f"{r['metric']}: {r['reason']}" for r in rows if r["status"] == "failed")
    kept = f"v{current}" if current else "none"
    raise NotPromoted(f"{date}: version {version} rejected, champion stays {kept}: {failed} (see {run_dir / GATES})")


def default_date() -> str:
    """Yesterday, UTC: the last complete day."""
    return (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()


def parse_date(text: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError as exc:
        raise ConfigError(f"--date {text!r}: expected YYYY-MM-DD") from exc
