"""Run the ablations behind docs/results.md and write its tables (``python scripts/results.py``).

Each experiment is one ``distrec run ... ablation=true`` in its own process; the tables are rebuilt
from the runs' report.json files after every run, so a partial sweep still leaves a valid document.
Finished runs are listed in ``runs/results-index.json``: a later invocation (another ``--only``, or a
restart after a kill) skips the runs already there and rebuilds the tables from all of them.
A run that fails is reported and the sweep goes on with the next one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from distrec.io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
ORDER = ("mf", "deepfm", "dcn", "base", "kd", "causald", "crl", "causald+crl")
COMMON = ["ablation=true", "eval.peers=[mf]"]
# Chosen for the synthetic default by searches on valid_random (docs/results.md, the session 11 reading): the
# CRL critic (crl alone over critic_lr x critic_steps)
SYNTHETIC_CHOSEN = ["crl.critic_lr=0.03"]
# CausalD alone, as its own method: the student without CRL, lambda chosen on valid_do, the do-split's validation
# twin, where the front-door target is the Bayes predictor (docs/results.md, the session 21 reading); the
# ablation's causald shares the full student's lambda, chosen on valid_random for the exposure shift
CAUSALD_LAMBDA = 3.0
CAUSALD_CHOSEN = ["crl.beta=0", "train.valid_split=valid_do", f"distill.weight={CAUSALD_LAMBDA}"]
LARGE = ["data.synth.rows=2000000", "data.synth.users=2000", "data.synth.items=1000", "eval.peers=[mf]"]


def experiments(seeds: list[int]) -> dict[str, list[list[str]]]:
    """Every experiment: the synthetic default, CausalD at its own settings on it, the 2M-row SCM (no
    ablation: ~10 min a seed on 2 idle cores) and the real logs."""
    return {
        "synthetic": [[*COMMON, f"seed={s}", f"data.synth.seed={s}", *SYNTHETIC_CHOSEN] for s in seeds],
        "synthetic-causald": [[f"seed={s}", f"data.synth.seed={s}", *CAUSALD_CHOSEN] for s in seeds],
        "synthetic-2m": [[*LARGE, f"seed={s}", f"data.synth.seed={s}"] for s in seeds],
        "movielens": [[*COMMON, "data.path=data/ml", f"seed={s}", "crl.beta=0"] for s in seeds],
        "open-bandit": [[*COMMON, "data.path=data/obd", f"seed={s}"] for s in seeds],
    }


# The learning rates are chosen per dataset on valid, as the MF peer's grid is (distrec.eval.peers.MF_GRID):
# one ``distrec tune`` of base on the first seed's data, applied to every seed and model of the experiment.
# The 2M-row SCM keeps the defaults (a search there would cost ~40 min on 2 cores).
LR_SPACE = "tune.space={train.sparse_lr: [0.03, 0.1], train.dense_lr: [0.001, 0.003]}"
TUNED = ("synthetic", "movielens", "open-bandit")
SAME_DATA = {"synthetic-causald": "synthetic"}  # experiments that reuse another's search (same dataset)
# what the configured student is in an experiment without ablation, for its tables
STUDENT_IS = {"synthetic-causald": f"causald (lambda {CAUSALD_LAMBDA:g}, valid_do)"}


def tuned_learning_rates(name: str, overrides: list[str]) -> list[str]:
    """``train.*`` overrides chosen by a search of base on ``valid`` (run once per experiment, then reused)."""
    run_id = f"results-tune-{SAME_DATA.get(name, name)}"
    result = REPO / "runs" / run_id / "tune.json"
    if not result.is_file():
        data = [o for o in overrides if o.startswith("data.")]
        distrec("tune", "jobs/local.yaml", *data, "tune.target=base", f"run_id={run_id}", LR_SPACE)
    best = json.loads(result.read_text())["trials"][0]["params"]
    return [f"{k}={v}" for k, v in sorted(best.items())]


def models_of(reports: list[dict]) -> list[str]:
    names = [m for m in reports[0]["models"] if all(m in r["models"] for r in reports)]
    return sorted(names, key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER))


def imports() -> dict[str, tuple[Path, list[str]]]:
    """Dataset directory -> (the shared file it needs, the `distrec data import` flags)."""
    ml = SHARED / "ml-latest-small" / "ratings.csv"
    bts = SHARED / "open-bandit-dataset-small" / "bts" / "all" / "all.csv"
    rnd = SHARED / "open-bandit-dataset-small" / "random" / "all" / "all.csv"
    return {
        "data/ml": (ml, ["--preset", "movielens", "--interactions", str(ml)]),
        "data/obd": (bts, ["--preset", "open-bandit", "--interactions", str(bts), "--ood", str(rnd)]),
    }


def distrec(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "distrec.cli", *args], cwd=REPO, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"distrec {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


def mean_std(values: list[float | None]) -> str:
    v = np.array([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return "n/a"
    return f"{v.mean():.4f}" if v.size == 1 else f"{v.mean():.4f} ± {v.std(ddof=1):.4f}"


def table(reports: list[dict], split: str, metrics: tuple[str, ...]) -> list[str]:
    metrics = tuple(m for m in metrics if m in reports[0]["models"]["base"].get(split, {}))
    lines = ["| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for model in models_of(reports):
        cells = [mean_std([r["models"][model].get(split, {}).get(m) for r in reports]) for m in metrics]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    for truth in reports[0].get("ceilings", {}).get(split, {}):
        cells = [mean_std([r["ceilings"][split][truth].get(m) for r in reports]) for m in metrics]
        lines.append(f"| *ceiling: {truth}* | " + " | ".join(cells) + " |")
    return lines


def paired_table(reports: list[dict], metric: str, relative: bool = False) -> list[str]:
    """model - base on the same seed (same data, same teachers): mean ± std of the paired differences;
    with ``relative``, of model / base - 1 instead (a share of base's value: how causal errors are targeted)."""
    cols = [("test_id", None), ("test_ood", None), ("test_do", None), ("test_id", "q1"), ("test_id", "q5")]
    cols += [("test_ood", "q1"), ("test_do", "q1")]
    cols = [c for c in cols if c[0] in reports[0]["models"]["base"]]
    lines = [
        "| model | " + " | ".join(f"{s}{' ' + g if g else ''}" for s, g in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]

    def value(r: dict, model: str, split: str, group: str | None) -> float | None:
        entry = r["models"][model].get(split, {})
        return (entry.get("groups", {}).get(group, {}) if group else entry).get(metric)

    for model in models_of(reports):
        if model == "base":
            continue
        cells = []
        for split, group in cols:
            pairs = [(value(r, model, split, group), value(r, "base", split, group)) for r in reports]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            cells.append(mean_std([a / b - 1 if relative else a - b for a, b in pairs]))
        lines.append(f"| {model} {'/ base - 1' if relative else '- base'} | " + " | ".join(cells) + " |")
    return lines


def group_table(reports: list[dict], metric: str) -> list[str]:
    groups = ("q1", "q2", "q3", "q4", "q5")
    lines = [f"| model | {' | '.join(groups)} | q5 - q1 |", "|---" * 7 + "|"]
    for model in models_of(reports):
        cells = [mean_std([r["models"][model]["groups"][g].get(metric) for r in reports]) for g in groups]
        gap = mean_std([r["heterogeneity"][model]["head_tail_gap"].get(metric) for r in reports])
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {gap} |")
    return lines


READING = "## Reading"


def previous_sections(previous: str) -> dict[str, str]:
    """Each experiment's section (``## name`` up to the next ``## ``) of the previous document's tables."""
    tables = previous[: previous.index(READING)] if READING in previous else previous
    sections: dict[str, str] = {}
    for chunk in tables.split("\n## ")[1:]:
        name, _, body = chunk.partition("\n")
        sections[name.strip()] = f"## {name}\n{body}".rstrip("\n")
    return sections


def experiment_section(name: str, runs: list[tuple[list[str], Path]], seconds: float) -> list[str]:
    """One experiment's tables, from its runs' report.json files."""
    reports = [json.loads((d / "report.json").read_text()) for _, d in runs]
    if name in STUDENT_IS:
        for r in reports:
            for key in ("models", "heterogeneity"):
                r[key][STUDENT_IS[name]] = r[key].pop("student")
    out = [f"## {name}", "", f"{len(runs)} run(s), {seconds:.0f} s in all. Commands:", ""]
    out += [f"    distrec run jobs/local.yaml {' '.join(args)}" for args, _ in runs] + [""]
    metrics = ("auc", "gauc", "logloss", "ndcg@10", "causal_rmse", "causal_logloss", "fd_rmse", "fd_logloss")
    metrics += ("confounder_mi",)
    for split in ("test_id", "test_ood", "test_do"):
        if all(split in r["models"]["base"] for r in reports):
            out += [f"### {split}", "", *table(reports, split, metrics), ""]
    for metric in ("auc", "ndcg@10"):
        out += [f"### {metric} per activity group (test_id)", "", *group_table(reports, metric), ""]
    if len(reports) > 1:
        for metric in ("auc", "logloss", "fd_rmse"):
            if any(metric in r["models"]["base"].get("test_id", {}) for r in reports):
                title = f"### {metric}, paired difference against base (same seed)"
                out += [title, "", *paired_table(reports, metric), ""]
        if any("fd_rmse" in r["models"]["base"].get("test_id", {}) for r in reports):
            title = "### fd_rmse relative to base (model / base - 1, same seed): CausalD's causal error"
            out += [title, "", *paired_table(reports, "fd_rmse", relative=True), ""]
    return out


def document(done: dict[str, list[tuple[list[str], Path]]], seconds: dict[str, float], previous: str) -> str:
    """The tables, then the hand-written reading kept from the previous version of the file.

    An experiment with no finished run in the index (another ``--only``, or runs deleted since) keeps
    its section from the previous document, marked as not regenerated, so a partial sweep drops nothing.
    """
    out = ["# Results", "", "Tables generated by `python scripts/results.py`; every number is a mean over the runs"]
    out += ["listed (± sample std when several). The hand-written reading follows the tables.", ""]
    kept, order = previous_sections(previous), list(experiments([0]))
    for name in [*order, *(n for n in done if n not in order)]:  # the sweep's order
        if name in done:
            out += experiment_section(name, done[name], seconds.get(name, 0.0))
        elif name in kept:
            note = "(kept from the previous version of this file: not rerun by the latest sweep)"
            section = kept[name]
            if note not in section:
                heading, _, body = section.partition("\n")
                section = f"{heading}\n\n{note}\n{body}"
            out += [section, ""]
    reading = previous[previous.index(READING) :] if READING in previous else f"{READING}\n\n(to be written)\n"
    return "\n".join(out) + "\n" + reading


INDEX = REPO / "runs" / "results-index.json"


def load_index() -> dict[str, list[dict]]:
    """Experiment -> its finished runs ({overrides, run_dir, seconds}) whose report.json still exists."""
    if not INDEX.is_file():
        return {}
    index = json.loads(INDEX.read_text())
    return {n: [r for r in runs if (Path(r["run_dir"]) / "report.json").is_file()] for n, runs in index.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="*", help="experiments to run (default: all)")
    parser.add_argument("--out", default="docs/results.md")
    args = parser.parse_args()
    for out, (source, flags) in imports().items():
        if not (REPO / out / "manifest.json").is_file() and source.is_file():
            print(distrec("data", "import", *flags, "--out", out), flush=True)
    index = load_index()
    target = REPO / args.out
    for name, runs in experiments(args.seeds).items():
        if args.only and name not in args.only:
            continue
        chosen = tuned_learning_rates(name, runs[0]) if SAME_DATA.get(name, name) in TUNED else []
        for overrides in (run + chosen for run in runs):
            if any(r["overrides"] == overrides for r in index.get(name, [])):
                continue
            data = next((o.split("=", 1)[1] for o in overrides if o.startswith("data.path=")), None)
            if data and not (REPO / data / "manifest.json").is_file():
                print(f"skipping {name}: {data} is missing", flush=True)
                break
            started = time.time()
            try:
                run_dir = REPO / distrec("run", "jobs/local.yaml", *overrides)
            except RuntimeError as err:
                print(f"{name} {' '.join(overrides)}: {err}", flush=True)
                continue
            seconds = time.time() - started
            index.setdefault(name, []).append({"overrides": overrides, "run_dir": str(run_dir), "seconds": seconds})
            atomic_write_text(INDEX, json.dumps(index, indent=1))
            rebuild(index, target)
            print(f"{name}: {run_dir} ({seconds:.0f} s)", flush=True)
    rebuild(index, target)  # also when every run was already done: the tables' layout may have changed


def rebuild(index: dict[str, list[dict]], target: Path) -> None:
    """docs/results.md's tables from every finished run in ``index``, the reading kept."""
    previous = target.read_text() if target.is_file() else ""
    done = {n: [(r["overrides"], Path(r["run_dir"])) for r in rs] for n, rs in index.items() if rs}
    totals = {n: sum(r["seconds"] for r in rs) for n, rs in index.items()}
    atomic_write_text(target, document(done, totals, previous))


if __name__ == "__main__":
    main()
