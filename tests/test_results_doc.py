"""scripts/results.py rebuilds docs/results.md without dropping what a partial sweep did not rerun."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _results_module():
    spec = importlib.util.spec_from_file_location("results_script", REPO / "scripts" / "results.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(auc: float) -> dict:
    split = {"auc": auc, "groups": {g: {"auc": auc} for g in ("q1", "q2", "q3", "q4", "q5")}}
    return {
        "models": {"base": {"test_id": split, "groups": split["groups"]}},
        "heterogeneity": {"base": {"head_tail_gap": {"auc": 0.0}}},
    }


def test_a_partial_sweep_keeps_the_sections_it_did_not_rerun(tmp_path: Path) -> None:
    results = _results_module()
    previous = (
        "# Results\n\nintro\n\n## synthetic\n\nold synthetic table\n\n## movielens\n\nold movielens table\n\n"
        "## Reading (by hand)\n\nkept words\n"
    )
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps(_report(0.75)))
    doc = results.document({"synthetic": [(["seed=0"], run)]}, {"synthetic": 10.0}, previous)

    assert "old synthetic table" not in doc  # rerun: regenerated from its report
    assert "| base | 0.7500 |" in doc
    assert "old movielens table" in doc  # not rerun: kept, and marked as such
    movielens = doc[doc.index("## movielens") : doc.index("## Reading")]
    assert "not rerun by the latest sweep" in movielens
    assert doc.endswith("## Reading (by hand)\n\nkept words\n")
    # rebuilding again does not stack the mark
    again = results.document({"synthetic": [(["seed=0"], run)]}, {"synthetic": 10.0}, doc)
    assert again.count("not rerun by the latest sweep") == 1


def test_paired_tables_give_differences_and_relative_changes_per_seed() -> None:
    results = _results_module()

    def report(base: float, model: float) -> dict:
        return {"models": {n: {"test_id": {"fd_rmse": v}} for n, v in (("base", base), ("causald", model))}}

    reports = [report(0.20, 0.18), report(0.10, 0.08)]  # paired: -0.02 twice; relative: -10% and -20%
    [header, _, row] = results.paired_table(reports, "fd_rmse")
    assert header.startswith("| model | test_id |") and row.startswith("| causald - base | -0.0200 ± 0.0000 |")
    [_, _, row] = results.paired_table(reports, "fd_rmse", relative=True)
    assert row.startswith("| causald / base - 1 | -0.1500 ± 0.0707 |")
