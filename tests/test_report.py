"""distrec.eval.report: heterogeneity on known numbers, and the files write_report produces."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from distrec.eval.groups import GROUP_NAMES, activity_groups, group_profile, groups_from_counts
from distrec.eval.metrics import evaluate
from distrec.eval.report import build_report, headline, heterogeneity, write_report


def test_heterogeneity_known_numbers() -> None:
    aucs = [0.6, 0.65, 0.7, 0.75, 0.8]
    groups = {g: {"auc": a, "logloss": 0.5} for g, a in zip(GROUP_NAMES, aucs, strict=True)}
    het = heterogeneity({"test_id": {}, "groups": groups})
    assert het["head_tail_gap"]["auc"] == pytest.approx(0.2)
    assert het["spread"]["auc"] == pytest.approx(math.sqrt(0.005))
    assert het["head_tail_gap"]["logloss"] == 0.0 and het["spread"]["logloss"] == 0.0
    assert math.isnan(het["head_tail_gap"]["gauc"])  # metric absent
    groups["q1"]["auc"] = math.nan
    het = heterogeneity(groups)  # a bare groups dict works too
    assert math.isnan(het["head_tail_gap"]["auc"])
    assert het["spread"]["auc"] == pytest.approx(np.std([0.65, 0.7, 0.75, 0.8]))


def _models() -> dict[str, dict[str, dict]]:
    rng = np.random.default_rng(0)
    user_group = activity_groups(rng.integers(0, 40, 400), 40)
    models: dict[str, dict[str, dict]] = {}
    for name, signal in (("dcn", 0.3), ("crl", 0.1), ("base", 0.2), ("student", 0.25)):
        models[name] = {}
        for split in ("test_id", "test_ood"):
            users = rng.integers(0, 40, 2000)
            labels = (rng.random(2000) < 0.3).astype(np.float32)
            probs = np.clip(0.3 + signal * (labels - 0.3) + 0.1 * rng.standard_normal(2000), 0.01, 0.99)
            labels[user_group[users] == 0] = 0.0  # one class only in q1: AUC is NaN there
            models[name][split] = evaluate(users, labels, probs, user_group)
    return models


def test_write_report_files(tmp_path) -> None:
    run = {"config": {"model": "dcn", "lr": 1e-3}, "dataset": "synthetic", "rows": 4000, "seconds": 1.5}
    report = build_report(run, _models())
    write_report(tmp_path, report)

    text = (tmp_path / "report.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert set(data) == {"run", "models", "heterogeneity", "ceilings", "intervals", "k"}
    assert data["run"]["dataset"] == "synthetic"
    for name in ("dcn", "crl"):
        entry = data["models"][name]
        for split in ("test_id", "test_ood"):
            assert {"auc", "gauc", "logloss", "ndcg@10", "recall@10"} <= set(entry[split])
            assert list(entry[split]["groups"]) == list(GROUP_NAMES)
        assert entry["groups"] == entry["test_id"]["groups"]
        assert entry["groups"]["q1"]["auc"] is None
        assert set(data["heterogeneity"][name]) == {"head_tail_gap", "spread"}
        assert data["heterogeneity"][name]["head_tail_gap"]["auc"] is None

    md = (tmp_path / "report.md").read_text()
    pngs = ["groups_test_id.png", "groups_test_ood.png", "id_vs_ood.png"]
    for png in pngs:
        assert f"]({png})" in md
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / png).stat().st_size > 1000
    assert "| dcn |" in md and "synthetic" in md
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["report.json", "report.md", *pngs])
    # what a reader wants first: the headline, then the dataset and the plots; no config dump
    assert md.index("## Student against base") < md.index("## Dataset") < md.index("## Plots") < md.index("## test_id")
    student, base = data["models"]["student"]["test_id"]["auc"], data["models"]["base"]["test_id"]["auc"]
    assert f"| test_id | {student:.4f} | {base:.4f} | {student - base:+.4f} |" in md
    assert "0.001" not in md and "config.yaml" in md  # the config's lr is not printed; its file is named


def test_headline_and_dataset_tables(tmp_path) -> None:
    counts = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 30])  # 10 users, 2 per quintile
    profile = group_profile(counts, groups_from_counts(counts))
    assert profile["q1"] == {"users": 2, "min_rows": 0, "max_rows": 1, "train_rows": 1}
    assert profile["q5"] == {"users": 2, "min_rows": 8, "max_rows": 30, "train_rows": 38}
    run = {
        "id": "r1",
        "dataset": {"name": "synth", "path": "/d", "users": 10, "items": 7, "source": {"scm_version": 5, "nested": {}}},
        "rows": {"train": 66, "valid": 5, "test_id": 5, "test_do": None},
        "activity": profile,
    }
    models = {"student": {"test_id": {"auc": 0.71, "groups": {"q1": {"auc": 0.65}}}}, "base": {"test_id": {"auc": 0.7}}}
    intervals = {"student_vs_base": {"test_id": [-0.002, 0.021], "q1 (test_id)": [-0.03, 0.05]}}
    report = build_report(run, models, intervals=intervals)
    assert headline(report) == [("test_id", 0.71, 0.7, (-0.002, 0.021))]  # q1 only where both models have it
    assert headline(build_report(run, models))[0].interval is None
    write_report(tmp_path, report)
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# Evaluation report: r1\n")
    assert "| test_id | 0.7100 | 0.7000 | +0.0100 | [-0.0020, +0.0210] |" in md
    assert "`synth` (scm_version 5): /d" in md and "nested" not in md
    assert "| users | items | train | valid | test_id |" in md and "| 10 | 7 | 66 | 5 | 5 |" in md
    assert "| q1 | 2 | 0-1 | 1.5% |" in md and "| q5 | 2 | 8-30 | 57.6% |" in md


def test_write_report_requires_sections(tmp_path) -> None:
    with pytest.raises(ValueError, match="heterogeneity"):
        write_report(tmp_path, {"run": {}, "models": {}})
