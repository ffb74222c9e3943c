"""Promotion gates: the challenger against an absolute floor and against the champion, per metric.

TFMA-style: each gate has an absolute bound (``floor``: at least it when higher is better, at most
it otherwise) and a tolerance against the champion (no worse than the champion by more than
``tolerance``); both must hold. Without a champion (the first night) only the floors apply. A
metric the challenger lacks (e.g. ``test_ood`` on data without that split) is skipped, and said to be.
Against the champion, AUC and log-loss gates compare a paired bootstrap interval over the held-out
day's users (``nightly.gate_resamples``), not two point values: on a small day a point difference
beyond the tolerance can be noise (a night once failed on test_id AUC 0.5860 against 0.6006 after a
change of nothing but an unrelated parameter's initialisation).
MLflow's ``validate_evaluation_results`` cannot express this (its change thresholds must be > 0 and
fail without a baseline), so the gate is ours and MLflow is its record.
"""

from __future__ import annotations

import math
from typing import Any

from distrec.config import GateConfig


def lookup(metrics: dict[str, Any] | None, path: str) -> float | None:
    """The value at a dotted path (``test_id.groups.q1.auc``), or None where there is none."""
    node: Any = metrics
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) else None


def check_gate(
    gate: GateConfig,
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    interval: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """One gate's outcome: the values compared, ``status`` (passed | failed | skipped) and why.

    With ``interval``, the paired bootstrap interval of challenger - champion on the held-out day, the
    comparison with the champion fails only when the whole interval lies beyond the tolerance: the day
    shows the challenger worse, rather than a difference its sampling noise could make. Without one (no
    champion, or a metric without a paired interval) the point values are compared.
    """
    value, base = lookup(challenger, gate.metric), lookup(champion, gate.metric)
    row: dict[str, Any] = {
        "metric": gate.metric,
        "challenger": value,
        "champion": base,
        "interval": list(interval) if interval is not None and base is not None else None,
        "floor": gate.floor,
        "tolerance": gate.tolerance,
        "higher_is_better": gate.higher_is_better,
    }
    if value is None:
        return {**row, "status": "skipped", "reason": "the challenger has no such metric"}
    sign = 1.0 if gate.higher_is_better else -1.0
    reasons = []
    if math.isnan(value):
        reasons.append("the challenger's value is NaN")
    if gate.floor is not None and not sign * value >= sign * gate.floor:
        reasons.append(f"{value:.4f} {'<' if gate.higher_is_better else '>'} floor {gate.floor}")
    if base is not None and row["interval"] is not None:
        lo, hi = row["interval"]
        best = hi if gate.higher_is_better else -lo  # the best case for the challenger, as higher-is-better
        if not best >= -gate.tolerance:  # also fails on a NaN interval
            reasons.append(
                f"challenger - champion in [{lo:+.4f}, {hi:+.4f}] (paired bootstrap): worse beyond the tolerance"
            )
    elif base is not None and not sign * value >= sign * base - gate.tolerance:
        bound = base - sign * gate.tolerance
        reasons.append(f"{value:.4f} worse than the champion's {base:.4f} beyond the tolerance ({bound:.4f})")
    if reasons:
        return {**row, "status": "failed", "reason": "; ".join(reasons)}
    return {**row, "status": "passed", "reason": "" if base is not None else "floor only: no champion value"}


def check_gates(
    gates: list[GateConfig],
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    intervals: dict[str, tuple[float, float]] | None = None,
) -> tuple[bool, list[dict[str, Any]]]:
    """(every gate passed or skipped, the rows); ``intervals`` by metric path (``check_gate``)."""
    rows = [check_gate(g, challenger, champion, (intervals or {}).get(g.metric)) for g in gates]
    return all(r["status"] != "failed" for r in rows), rows


def gate_table(rows: list[dict[str, Any]]) -> str:
    """The gates as a Markdown table (report.md and the command's output)."""

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    def span(interval: list[float] | None) -> str:
        return "-" if interval is None else f"[{interval[0]:+.4f}, {interval[1]:+.4f}]"

    lines = [
        "| metric | challenger | champion | challenger - champion (bootstrap) | floor | tolerance | status | reason |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['metric']} | {fmt(r['challenger'])} | {fmt(r['champion'])} | {span(r.get('interval'))} "
            f"| {fmt(r['floor'])} | {r['tolerance']:g} | {r['status']} | {r['reason']} |"
        )
    return "\n".join(lines)
