"""Promotion gates: the challenger against an absolute floor and against the champion, per metric.

TFMA-style: each gate has an absolute bound (``floor``: at least it when higher is better, at most
it otherwise) and a tolerance against the champion (no worse than the champion by more than
``tolerance``); both must hold. Without a champion (the first night) only the floors apply. A
metric the challenger lacks (e.g. ``test_ood`` on data without that split) is skipped, and said to be.
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


def check_gate(gate: GateConfig, challenger: dict[str, Any], champion: dict[str, Any] | None) -> dict[str, Any]:
    """One gate's outcome: the values compared, ``status`` (passed | failed | skipped) and why."""
    value, base = lookup(challenger, gate.metric), lookup(champion, gate.metric)
    row: dict[str, Any] = {
        "metric": gate.metric,
        "challenger": value,
        "champion": base,
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
    if base is not None and not sign * value >= sign * base - gate.tolerance:
        bound = base - sign * gate.tolerance
        reasons.append(f"{value:.4f} worse than the champion's {base:.4f} beyond the tolerance ({bound:.4f})")
    if reasons:
        return {**row, "status": "failed", "reason": "; ".join(reasons)}
    return {**row, "status": "passed", "reason": "" if base is not None else "floor only: no champion value"}


def check_gates(
    gates: list[GateConfig], challenger: dict[str, Any], champion: dict[str, Any] | None
) -> tuple[bool, list[dict[str, Any]]]:
    """(every gate passed or skipped, the rows)."""
    rows = [check_gate(g, challenger, champion) for g in gates]
    return all(r["status"] != "failed" for r in rows), rows


def gate_table(rows: list[dict[str, Any]]) -> str:
    """The gates as a Markdown table (report.md and the command's output)."""

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines = [
        "| metric | challenger | champion | floor | tolerance | status | reason |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['metric']} | {fmt(r['challenger'])} | {fmt(r['champion'])} | {fmt(r['floor'])} "
            f"| {r['tolerance']:g} | {r['status']} | {r['reason']} |"
        )
    return "\n".join(lines)
