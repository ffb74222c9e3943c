"""The evaluation report of a run: ``report.json`` (a contract other tools read), ``report.md`` and plots.

``report.json``::

    {"run": {"config": ..., "dataset": ..., "rows": ..., "seconds": ...},
     "models": {NAME: {"test_id": {"auc", "gauc", "logloss", "ndcg@10", "recall@10", ..., "groups": {...}},
                       "test_ood": {...},
                       "groups": {GROUP: {"auc", ...}}}},          # the per-group metrics of test_id
     "heterogeneity": {NAME: {"head_tail_gap": {METRIC: x}, "spread": {METRIC: x}}}}

Key names are part of the contract: add keys, never rename them. NaN is written as ``null``.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from distrec.data.schema import SPLITS
from distrec.io import atomic_write_bytes, atomic_write_text

ID_OOD = ("test_id", "test_ood")
# synthetic data only: errors against P(Y | u, do(i)) (causal_*) and against P(Y | do(x), i) (fd_*)
CAUSAL = ("causal_rmse", "causal_logloss", "fd_rmse", "fd_logloss")


HEADLINE = (
    ("test_id", ("test_id",)),
    ("test_ood", ("test_ood",)),
    ("test_do", ("test_do",)),
    ("q1 (test_id)", ("test_id", "groups", "q1")),
    ("q1 (test_ood)", ("test_ood", "groups", "q1")),
)
"""The headline rows: where a causal student should beat ``base`` (splits, and the tail users q1)."""
COMPARED = ("student", "base")
"""The headline's pair: the configured student against the label-only model of the same architecture."""


class HeadlineRow(NamedTuple):
    label: str
    model: float  # AUC
    reference: float
    interval: tuple[float, float] | None  # paired bootstrap interval of model - reference, where computed


def headline(report: Mapping[str, Any]) -> list[HeadlineRow]:
    """The HEADLINE rows both COMPARED models of ``report`` have, with the evaluation's intervals."""
    models, (model, reference) = report.get("models", {}), COMPARED
    intervals = (report.get("intervals") or {}).get(f"{model}_vs_{reference}", {})

    def auc(metrics: Mapping[str, Any], path: tuple[str, ...]) -> float | None:
        for key in path:
            metrics = metrics.get(key) or {}
        value = metrics.get("auc")
        return float(value) if value is not None else None

    rows = []
    for label, path in HEADLINE:
        a, b = auc(models.get(model, {}), path), auc(models.get(reference, {}), path)
        if a is not None and b is not None:
            interval = intervals.get(label)
            rows.append(HeadlineRow(label, a, b, tuple(interval) if interval and None not in interval else None))
    return rows


def metric_names(k: int) -> tuple[str, ...]:
    """The report's metric columns, named after ``eval.k``."""
    return ("auc", "gauc", "logloss", f"ndcg@{k}", f"recall@{k}")


def heterogeneity(model_metrics: Mapping[str, Any], k: int = 10) -> dict[str, dict[str, float]]:
    """Head-tail gap (most minus least active group) and spread (std over groups) of each metric.

    ``model_metrics`` is one model's entry of the report (its ``"groups"`` are used) or a groups dict
    itself, ordered from the least to the most active group. The spread is the population std over
    the groups where the metric is defined (NaN with fewer than two); the gap is NaN when either end is.
    """
    groups = model_metrics.get("groups", model_metrics)
    names = list(groups)
    out: dict[str, dict[str, float]] = {"head_tail_gap": {}, "spread": {}}
    if not names:
        return out
    for metric in metric_names(k):
        values = np.array([_number(groups[g].get(metric)) for g in names], dtype=np.float64)
        defined = values[np.isfinite(values)]
        out["head_tail_gap"][metric] = float(values[-1] - values[0])
        out["spread"][metric] = float(defined.std()) if defined.size >= 2 else math.nan
    return out


def build_report(
    run: Mapping[str, Any],
    models: Mapping[str, Mapping[str, Any]],
    k: int = 10,
    ceilings: Mapping[str, Mapping[str, Any]] | None = None,
    intervals: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The report dict from ``models[NAME][split]`` = :func:`distrec.eval.metrics.evaluate` output.

    Adds each model's top-level ``"groups"`` (those of test_id), the heterogeneity section, on
    synthetic data the ``"ceilings"`` (``{split: {truth: metrics}}`` of the stored truths), and the
    headline's ``"intervals"`` (``{"student_vs_base": {row: [lo, hi]}}``) where they were computed.
    """
    entries: dict[str, dict[str, Any]] = {}
    for name, splits in models.items():
        entries[name] = dict(splits)
        entries[name]["groups"] = dict(splits.get("test_id", {}).get("groups", {}))
    return {
        "run": dict(run),
        "models": entries,
        "heterogeneity": {name: heterogeneity(entry, k) for name, entry in entries.items()},
        "ceilings": dict(ceilings or {}),
        "intervals": dict(intervals or {}),
        "k": k,
    }


def write_report(run_dir: Path, report: Mapping[str, Any]) -> None:
    """Write ``report.json``, ``report.md`` and the PNG plots into ``run_dir``, each atomically."""
    for key in ("run", "models", "heterogeneity"):
        if key not in report:
            raise ValueError(f"report has no {key!r} section; build it with build_report()")
    run_dir = Path(run_dir)
    data = _jsonable(report)
    atomic_write_text(run_dir / "report.json", json.dumps(data, indent=2, allow_nan=False) + "\n")

    models: dict[str, dict[str, Any]] = data["models"]
    plots: list[tuple[str, str]] = []
    for split in _splits(models):
        if _group_names(models, split):
            plots.append((f"groups_{split}.png", f"AUC per activity group, {split}"))
            atomic_write_bytes(run_dir / plots[-1][0], _groups_plot(models, split))
    if any(s in models[m] for m in models for s in ID_OOD):
        plots.append(("id_vs_ood.png", "AUC, in-distribution vs out-of-distribution test"))
        atomic_write_bytes(run_dir / plots[-1][0], _id_vs_ood_plot(models))
    curves = {name: t["curve"] for name, t in data["run"].get("training", {}).items() if t.get("curve")}
    if curves:
        plots.append(("training_curves.png", "Training loss terms, valid AUC and train_mi per epoch"))
        atomic_write_bytes(run_dir / plots[-1][0], _curves_plot(curves))
    atomic_write_text(run_dir / "report.md", _markdown(data, plots))


def _number(x: Any) -> float:
    return math.nan if x is None else float(x)


def _jsonable(obj: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays unwrapped, non-finite floats to None, paths to str."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _splits(models: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Split names found in any model, canonical ones first."""
    found = {s for entry in models.values() for s, v in entry.items() if s != "groups" and isinstance(v, Mapping)}
    return [s for s in SPLITS if s in found] + sorted(found - set(SPLITS))


def _group_names(models: Mapping[str, Mapping[str, Any]], split: str) -> list[str]:
    names: dict[str, None] = {}
    for entry in models.values():
        names.update(dict.fromkeys(entry.get(split, {}).get("groups", {})))
    return list(names)


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.4f}"
    return str(x)


def _seconds(x: Any) -> str:
    return f"{x:.1f} s" if isinstance(x, int | float) and math.isfinite(x) else "n/a"


def _interval(interval: tuple[float, float] | None) -> str:
    return "n/a" if interval is None else f"[{interval[0]:+.4f}, {interval[1]:+.4f}]"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _markdown(report: Mapping[str, Any], plots: list[tuple[str, str]]) -> str:
    run, models = report["run"], report["models"]
    metrics = metric_names(int(report.get("k", 10)))
    causal = [c for c in CAUSAL if any(c in m.get(s, {}) for m in models.values() for s in _splits(models))]
    lines = [f"# Evaluation report{': ' + run['id'] if run.get('id') else ''}", ""]
    top = headline(report)
    if top:
        lines += ["## Student against base", ""]
        lines += _table(
            ["AUC", "student", "base", "change", "95% interval"],
            [[r.label, r.model, r.reference, f"{r.model - r.reference:+.4f}", _interval(r.interval)] for r in top],
        )
        lines += [
            "The interval is a paired bootstrap over the test users (`eval.bootstrap` resamples): the test "
            "set's sampling noise, not the seed's; `scripts/results.py` runs 3 seeds and writes means, "
            "spreads and paired differences against base (docs/results.md).",
            "",
        ]
    lines += _dataset_section(run)
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{caption}]({name})\n" for name, caption in plots]
    lines += [
        "Groups q1..q5 are quintiles of users by training interactions (q1 least active, q5 = head).",
        "NDCG and Recall rank each user's logged candidates, not the full catalogue.",
        "",
    ]
    for split in _splits(models):
        lines += [f"## {split}", ""]
        rows = [[m, *(models[m].get(split, {}).get(k) for k in (*metrics, *causal, "rows"))] for m in models]
        lines += _table(["model", *metrics, *causal, "rows"], rows)
    for split, truths in (report.get("ceilings") or {}).items():
        lines += [f"## Ceilings on {split}: the stored truths as predictors", ""]
        lines += [
            "p_obs: a perfect fit of the logs; p_do: a perfectly deconfounded model, P(Y | u, do(i)); "
            "p_fd: the front-door target P(Y | do(x), i), the Bayes predictor on test_do; "
            "true_ctr: an oracle that also sees the session and the mediator.",
            "",
        ]
        first: Mapping[str, Any] = next(iter(truths.values()), {})
        groups = list(first.get("groups", {}))
        rows = [
            [t, v.get("auc"), *(v.get("groups", {}).get(g, {}).get("auc") for g in groups)] for t, v in truths.items()
        ]
        lines += _table(["truth", "auc", *(f"auc {g}" for g in groups)], rows)
    for split in _splits(models):
        groups = _group_names(models, split)
        if groups:
            lines += [f"## AUC per activity group, {split}", ""]
            rows = [
                [m, *(models[m].get(split, {}).get("groups", {}).get(g, {}).get("auc") for g in groups)] for m in models
            ]
            lines += _table(["model", *groups], rows)
    het = report["heterogeneity"]
    for section, title in (("head_tail_gap", "head - tail gap (q5 - q1)"), ("spread", "spread (std over groups)")):
        lines += [f"## Heterogeneity on test_id: {title}", ""]
        lines += _table(["model", *metrics], [[m, *(het[m].get(section, {}).get(k) for k in metrics)] for m in het])
    training = run.get("training") or {}
    if training:
        lines += ["## Training", "", "The export kept is the epoch with the best valid AUC.", ""]
        rows = [
            [
                m,
                t.get("best_epoch"),
                len(t.get("curve") or []),
                t.get("stopped_early"),
                _best_valid(t),
                _mi_trend(t),
                t.get("seconds"),
            ]
            for m, t in training.items()
        ]
        header = ["model", "best epoch", "epochs run", "stopped early", "valid AUC", "train_mi first -> last"]
        lines += _table([*header, "seconds"], rows)
        lines += ["A CRL model's estimated I(Z; C) (train_mi) should fall as it trains; per epoch in report.json.", ""]
        lines += _offsets_section(training)
    for name, chosen in (run.get("peers") or {}).items():
        settings = ", ".join(f"{k}={_fmt(v)}" for k, v in chosen.items() if k not in ("curve", "valid_auc"))
        lines += [f"Peer `{name}`: plain PyTorch matrix factorisation, chosen on valid ({settings}).", ""]
    lines += [
        f"The configuration of this run is `config.yaml` beside this report; it took {_seconds(run.get('seconds'))}."
    ]
    return "\n".join(lines) + "\n"


def _dataset_section(run: Mapping[str, Any]) -> list[str]:
    """The dataset in two small tables: its size and rows per split, and the activity groups' edges."""
    dataset, rows = run.get("dataset"), run.get("rows")
    dataset = dataset if isinstance(dataset, Mapping) else {"name": dataset}
    rows = rows if isinstance(rows, Mapping) else {}
    lines = ["## Dataset", ""]
    source = dataset.get("source") or {}
    described = ", ".join(f"{k} {v}" for k, v in source.items() if isinstance(v, str | int | float) and k != "path")
    lines += [
        f"`{dataset.get('name', '?')}`" + (f" ({described})" if described else "") + f": {dataset.get('path', '')}",
        "",
    ]
    splits = [s for s, n in rows.items() if n is not None]
    lines += _table(
        ["users", "items", *splits], [[dataset.get("users"), dataset.get("items"), *(rows[s] for s in splits)]]
    )
    activity = run.get("activity") or {}
    if activity:
        total = sum(g["train_rows"] for g in activity.values()) or 1
        table = [
            [name, g["users"], f"{g['min_rows']}-{g['max_rows']}", f"{g['train_rows'] / total:.1%}"]
            for name, g in activity.items()
        ]
        lines += _table(["activity group", "users", "train rows per user", "share of train rows"], table)
    return lines


def _mi_trend(training: Mapping[str, Any]) -> str:
    """``first -> last`` epoch's train_mi of a CRL model; empty for a model without the penalty."""
    values = [_number(p.get("train_mi")) for p in training.get("curve") or []]
    if not values or not any(v != 0 for v in values if math.isfinite(v)):
        return ""
    return f"{values[0]:.4f} -> {values[-1]:.4f}"


def _offsets_section(training: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Each CRL model's confounder offsets (``crl.confounder_bias``) at its exported (best) epoch."""
    lines = []
    for name, t in training.items():
        curve = t.get("curve") or []
        best = next((p for p in curve if p.get("epoch") == t.get("best_epoch")), None)
        for column, offsets in ((best or {}).get("confounder_offsets") or {}).items():
            values = ", ".join(f"{v:+.3f}" for v in offsets)
            lines.append(f"- `{name}`, `{column}`: {values}")
    if not lines:
        return []
    head = "Confounder offsets (logit, centred; C's own effect on clicks, fitted beside the score and not served):"
    return [head, "", *lines, ""]


def _best_valid(training: Mapping[str, Any]) -> float:
    values = [_number(p.get("valid_auc")) for p in training.get("curve") or []]
    finite = [v for v in values if math.isfinite(v)]
    return max(finite) if finite else math.nan


def _curves_plot(curves: Mapping[str, list[Mapping[str, Any]]]) -> bytes:
    """Four panels per epoch, one line per model: training BCE, valid AUC, and the two causal terms,
    the distillation loss (KD) and the CRL critic's estimate of I(Z; C) (train_mi), for the models
    that have them."""
    fig = Figure(figsize=(10.0, 7.0))
    FigureCanvasAgg(fig)
    panels = (
        ("train_bce", "training BCE"),
        ("valid_auc", "valid AUC"),
        ("train_kd", "distillation loss (KD)"),
        ("train_mi", "train_mi: estimated I(Z; C)"),
    )
    for ax, (key, label) in zip(fig.subplots(2, 2).flat, panels, strict=True):
        for i, (name, curve) in enumerate(curves.items()):
            values = [_number(p.get(key)) for p in curve]
            if key in ("train_kd", "train_mi") and not any(math.isfinite(v) and v != 0 for v in values):
                continue  # a model without this term
            ax.plot(
                [p["epoch"] for p in curve], values, marker="o", label=name, color=f"C{i % 10}"
            )  # one colour a model
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no model has this term", ha="center", va="center", transform=ax.transAxes)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _bars(title: str, categories: list[str], series: Mapping[str, list[float]]) -> bytes:
    """A PNG of grouped bars: one cluster per category, one bar per series, y zoomed on the values."""
    fig = Figure(figsize=(max(6.0, 1.2 * len(categories) * max(1, len(series)) ** 0.5), 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(categories))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    finite = np.array([v for values in series.values() for v in values], dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size:
        ax.set_ylim(max(0.0, finite.min() - 0.02), min(1.0, finite.max() + 0.02))
    ax.set_xticks(x, categories)
    ax.set_ylabel("AUC")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if series:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: no bar hidden
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _auc(entry: Mapping[str, Any] | None) -> float:
    return _number((entry or {}).get("auc"))


def _groups_plot(models: Mapping[str, Mapping[str, Any]], split: str) -> bytes:
    groups = _group_names(models, split)
    series = {m: [_auc(models[m].get(split, {}).get("groups", {}).get(g)) for g in groups] for m in models}
    return _bars(f"AUC per activity group, {split}", groups, series)


def _id_vs_ood_plot(models: Mapping[str, Mapping[str, Any]]) -> bytes:
    series = {s: [_auc(models[m].get(s)) for m in models] for s in ID_OOD}
    return _bars("AUC, test_id vs test_ood", list(models), series)
