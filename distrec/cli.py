"""The ``distrec`` command: data, run, tune, plan, submit, nightly, registry, evaluate.

Exit codes: 0 success, 1 other failure, 2 bad data, 3 bad configuration, 4 bad checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, cast

from distrec.errors import DistrecError


def _data_synth(args: argparse.Namespace) -> None:
    from distrec.data.synth import synthesize

    manifest = synthesize(
        Path(args.out),
        args.rows,
        users=args.users,
        items=args.items,
        days=args.days,
        history_len=args.history_len,
        confounding=args.confounding,
        activity=args.activity,
        random_fraction=args.random_fraction,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(f"{args.out}: {sum(manifest.rows.values())} rows {manifest.rows}")


# `data import` flag (argparse dest) -> import_interactions argument; only flags given on the command
# line are passed, so they override a preset's values and the importer's defaults apply otherwise.
_IMPORT_FLAGS = {
    **{name: name for name in ("user_col", "item_col", "label_col", "time_col", "time_unit", "policy_col")},
    **{name: name for name in ("propensity_col", "random_col", "label_threshold", "ood", "history_len")},
    **{name: name for name in ("partition", "valid_fraction", "test_fraction", "split", "name")},
    "valid_random_fraction": "valid_random_fraction",
    "confounder_col": "confounder_cols",
    "sparse_col": "sparse_cols",
    "position_col": "position_col",
    "derive_confounders": "derive_confounders",
    "headroom": "headroom",
}


def _data_import(args: argparse.Namespace) -> None:
    from distrec.data.presets import import_preset
    from distrec.errors import ConfigError

    if args.append:
        _data_append(args)
        return
    if args.new_ids is not None:
        raise ConfigError("--new-ids applies to --append only (at import, size the tables with --headroom)")
    explicit = {arg: getattr(args, flag) for flag, arg in _IMPORT_FLAGS.items() if getattr(args, flag) is not None}
    manifest = import_preset(args.preset, args.interactions, args.out, overwrite=args.overwrite, **explicit)
    card = manifest.cardinality
    print(
        f"{args.out}: {sum(manifest.rows.values())} rows {manifest.rows}, "
        f"{card['user_id']} users, {card['item_id']} items"
    )


def _run(args: argparse.Namespace) -> None:
    from distrec.config import load_config
    from distrec.errors import ConfigError
    from distrec.io import partial_dir
    from distrec.loopback import bind_local_ray_to_loopback

    resume = Path(args.resume) if args.resume else None
    if resume is not None:
        saved = partial_dir(resume) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {resume}: no partial run there (no {saved})")
        config = load_config(saved, args.overrides)
    elif args.config is None:
        raise ConfigError("distrec run needs a CONFIG (or --resume RUN_DIR)")
    else:
        config = load_config(args.config, args.overrides)
    if config.ray.address is None:
        bind_local_ray_to_loopback()
    from distrec.console import Console
    from distrec.orchestrate.pipeline import run

    console = Console(verbose=args.verbose)
    run_dir = run(config, resume=resume, console=console)
    console.summary(run_dir)
    if config.registry.log_runs:
        from distrec.nightly.registry import Registry

        Registry(config.registry, config.runs_dir).log_run(run_dir)
    print(run_dir)


def _tune(args: argparse.Namespace) -> None:
    from distrec.config import load_config
    from distrec.loopback import bind_local_ray_to_loopback

    config = load_config(args.config, args.overrides)
    if config.ray.address is None:
        bind_local_ray_to_loopback()
    from distrec.console import Console
    from distrec.orchestrate.tune import tune

    console = Console(verbose=args.verbose)
    tune_dir = tune(config, console)
    console.tune_summary(tune_dir)
    print(tune_dir)


def _plan(args: argparse.Namespace) -> None:
    import json

    from distrec.config import load_config
    from distrec.data.schema import Manifest
    from distrec.orchestrate.pipeline import synthetic_dataset
    from distrec.train.plan import format_plan, plan_config

    config = load_config(args.config, args.overrides)
    manifest = Manifest.read(config.data.path) if config.data.path else Manifest.read(synthetic_dataset(config))
    rows = plan_config(config, manifest, args.world_size, args.device)
    print(json.dumps(rows, indent=1) if args.json else format_plan(rows))


def _submit(args: argparse.Namespace) -> None:
    from distrec.orchestrate.submit import submit

    status = submit(
        Path(args.config),
        args.overrides,
        args.address,
        submission_id=args.submission_id,
        wait=args.wait,
    )
    print(status)


def _nightly(args: argparse.Namespace) -> None:
    from distrec.config import load_config
    from distrec.console import Console
    from distrec.loopback import bind_local_ray_to_loopback
    from distrec.nightly.job import default_date, nightly, parse_date

    config = load_config(args.config, args.overrides)
    if config.ray.address is None:
        bind_local_ray_to_loopback()
    date = parse_date(args.date) if args.date else default_date()
    print(nightly(config, date, force=args.force, console=Console(verbose=args.verbose)).line())


def _registry(args: argparse.Namespace) -> None:
    from distrec.config import load_config
    from distrec.nightly.registry import Registry

    config = load_config(args.config, args.overrides)
    registry = Registry(config.registry, config.runs_dir)
    if args.registry_command == "list":
        rows = registry.table()
        if not rows:
            print(f"{registry.uri}: model {registry.name!r} has no versions")
        for row in rows:
            print("  ".join(f"{k}={v}" for k, v in row.items() if v))
    elif args.registry_command == "promote":
        with registry.lock():
            previous = registry.promote(args.version, "manual")
        print(f"champion: version {args.version} (was {previous})")
    else:
        current, previous = registry.rollback()
        print(f"champion: version {previous} (rolled back from {current})")


def _evaluate(args: argparse.Namespace) -> None:
    import json

    from distrec.nightly.evaluate import evaluate_model

    print(json.dumps(evaluate_model(args.model, Path(args.data), args.split, args.config, args.overrides), indent=1))


def _data_days(args: argparse.Namespace) -> None:
    from distrec.data.days import synthesize_days

    manifest = synthesize_days(
        Path(args.out),
        args.days,
        args.rows_per_day,
        users=args.users,
        items=args.items,
        new_users_per_day=args.new_users_per_day,
        new_items_per_day=args.new_items_per_day,
        popularity_drift=args.popularity_drift,
        policy_change_day=args.policy_change_day,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    days = cast(dict[str, Any], manifest.source["days"])
    print(f"{args.out}: {len(days)} days, {sum(manifest.rows.values())} rows {manifest.rows}")


def _data_append(args: argparse.Namespace) -> None:
    from distrec.data.importer import append_interactions
    from distrec.errors import ConfigError

    given = [flag for flag in ("preset", *_IMPORT_FLAGS) if getattr(args, flag) is not None]
    if given or args.overwrite:
        names = ["--no-derived-confounders" if f == "derive_confounders" else "--" + f.replace("_", "-") for f in given]
        raise ConfigError(
            f"--append reads the columns and settings of {args.out} from its manifest: drop "
            f"{', '.join(names + (['--overwrite'] if args.overwrite else []))}"
        )
    manifest = append_interactions(Path(args.interactions), Path(args.out), new_ids=args.new_ids or "index")
    appended = cast(list[dict[str, Any]], manifest.source["appends"])[-1]
    card = manifest.cardinality
    print(
        f"{args.out}: appended {appended['days']} (unseen ids {appended['unseen_ids']}, {appended['new_ids']}); "
        f"now {sum(manifest.rows.values())} rows, {card['user_id']} users, {card['item_id']} items"
    )


def _data_compact(args: argparse.Namespace) -> None:
    from distrec.data.compact import compact

    counts = compact(Path(args.dir), args.partition)
    print(
        f"{args.dir}: {counts['files_before']} -> {counts['files_after']} Parquet files ({args.partition} partitions)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distrec", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="create or import datasets in the canonical format").add_subparsers(
        dest="data_command", required=True
    )
    synth = data.add_parser("synth", help="synthetic confounded logs with known ground truth")
    synth.add_argument("--out", required=True)
    synth.add_argument("--rows", type=int, required=True)
    synth.add_argument("--users", type=int, default=600)
    synth.add_argument("--items", type=int, default=400)
    synth.add_argument("--days", type=int, default=7)
    synth.add_argument("--history-len", type=int, default=20)
    synth.add_argument("--confounding", type=float, default=2.0)
    synth.add_argument("--activity", type=float, default=1.0, help="lognormal sd of user activity [1.0]")
    synth.add_argument("--random-fraction", type=float, default=0.05)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--overwrite", action="store_true")
    synth.set_defaults(func=_data_synth)

    compact = data.add_parser("compact", help="merge a dataset's small files into month or year partitions, in place")
    compact.add_argument("dir")
    compact.add_argument("--partition", choices=["month", "year"], default="month")
    compact.set_defaults(func=_data_compact)

    days = data.add_parser("days", help="a synthetic day store with drift, for the nightly (distrec.data.days)")
    days.add_argument("--out", required=True)
    days.add_argument("--days", type=int, required=True)
    days.add_argument("--rows-per-day", type=int, required=True)
    days.add_argument("--users", type=int, default=400, help="users on the first day [400]")
    days.add_argument("--items", type=int, default=200, help="items on the first day [200]")
    days.add_argument("--new-users-per-day", type=int, default=10)
    days.add_argument("--new-items-per-day", type=int, default=5)
    days.add_argument("--popularity-drift", type=float, default=0.05, help="per-day drift of item popularity")
    days.add_argument("--policy-change-day", type=int, help="the day index from which the logging policy changes")
    days.add_argument("--seed", type=int, default=0)
    days.add_argument("--overwrite", action="store_true")
    days.set_defaults(func=_data_days)

    imp = data.add_parser(
        "import",
        help="import your own interaction table (Parquet or CSV)",
        description="Defaults in brackets; a --preset sets its own, and flags given explicitly override it.",
    )
    imp.add_argument("--interactions", required=True, help="Parquet or CSV file, one row per exposure")
    imp.add_argument("--out", required=True)
    imp.add_argument(  # names listed here, not imported: the parser stays free of numpy/pyarrow imports
        "--preset",
        metavar="NAME",
        help="movielens (ratings.csv: rating >= 4, per-user time split, monthly partitions) or open-bandit "
        "(a Bernoulli-TS log; --ood its uniform-random log); see distrec/data/presets.py",
    )
    imp.add_argument("--user-col", help="[user_id]")
    imp.add_argument("--item-col", help="[item_id]")
    imp.add_argument("--label-col", help="[label]")
    imp.add_argument("--time-col", help="[timestamp]")
    imp.add_argument("--time-unit", help="unit of the time column: s, ms, us, ns [s]")
    imp.add_argument("--policy-col")
    imp.add_argument("--propensity-col")
    imp.add_argument("--random-col", help="boolean column: exposure chosen uniformly at random")
    imp.add_argument("--position-col", help="slot/position of the exposure; gives the confounder conf_position")
    imp.add_argument("--label-threshold", type=float, help="label = value >= threshold (e.g. 4 for ratings)")
    imp.add_argument("--ood", help="a separately supplied out-of-distribution test log, same columns")
    imp.add_argument("--confounder-col", action="append", help="observed confounder (repeatable)")
    imp.add_argument("--sparse-col", action="append", help="extra categorical feature (repeatable)")
    imp.add_argument(
        "--no-derived-confounders",
        dest="derive_confounders",
        action="store_false",
        default=None,
        help="do not derive conf_policy, conf_position, conf_propensity from the policy, position, propensity columns",
    )
    imp.add_argument("--history-len", type=int, help="[20]")
    imp.add_argument(
        "--partition",
        choices=["auto", "day", "month", "year"],
        help="one Parquet partition per day, month or year; auto: days unless that gives many small files [auto]",
    )
    imp.add_argument(  # choices spelled out here for the same reason; distrec.data.importer.SPLIT_MODES
        "--split",
        choices=["global-time", "per-user-time"],
        help="cut the logged (non-random) rows by time over all users, or per user: each user's last rows "
        "are test_id, those before them valid [global-time; movielens preset: per-user-time]",
    )
    imp.add_argument("--valid-fraction", type=float, help="latest logged rows (per user) before test_id [0.1]")
    imp.add_argument("--test-fraction", type=float, help="latest logged rows (per user), the test_id split [0.1]")
    imp.add_argument(
        "--valid-random-fraction",
        type=float,
        help="earliest random-exposure rows that form valid_random instead of test_ood [0]",
    )
    imp.add_argument("--name", help="dataset name in the manifest [the file's stem]")
    imp.add_argument(
        "--headroom",
        type=float,
        help="embedding-table rows per id of the user, item and sparse features, room for ids that appends "
        "bring (e.g. 2) [none: the tables hold the imported ids only]",
    )
    imp.add_argument("--overwrite", action="store_true")
    imp.add_argument(
        "--append",
        action="store_true",
        help="add the new days of --interactions to the dataset at --out (columns and settings from its "
        "manifest); known raw ids keep their indices; atomic",
    )
    imp.add_argument(  # choices spelled out: distrec.data.importer.NEW_IDS
        "--new-ids",
        choices=["index", "hash"],
        help="with --append: give unseen ids the next indices, within the tables' headroom, or hash them onto "
        "known indices [index]",
    )
    imp.set_defaults(func=_data_import)

    run = sub.add_parser("run", help="train teachers, stream soft labels, train the student, evaluate")
    run.add_argument("config", nargs="?", help="YAML config, e.g. jobs/local.yaml")
    run.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=2")
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a partial run (its config.yaml) without retraining finished models",
    )
    run.set_defaults(func=_run)

    tune = sub.add_parser("tune", help="search settings on Ray Tune, selected on valid (tune.target, tune.space)")
    tune.add_argument("config")
    tune.add_argument("overrides", nargs="*", help="e.g. 'tune.space={train.sparse_lr: [0.05, 0.1, 0.2]}'")
    tune.set_defaults(func=_tune)

    plan = sub.add_parser("plan", help="print every model's sharding plan (dry run, no training)")
    plan.add_argument("config")
    plan.add_argument("overrides", nargs="*")
    plan.add_argument("--world-size", type=int, default=2, help="workers per model")
    plan.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.set_defaults(func=_plan)

    submit = sub.add_parser("submit", help="submit `distrec run` as a Ray job to a cluster")
    submit.add_argument("config")
    submit.add_argument("overrides", nargs="*")
    submit.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://head:8265")
    submit.add_argument("--submission-id", help="idempotency key; default derived from config, overrides and date")
    submit.add_argument("--wait", action="store_true", help="follow the logs until the job ends")
    submit.set_defaults(func=_submit)

    nightly = sub.add_parser("nightly", help="one night: data checks, warm start, gates, registry, promotion")
    nightly.add_argument("config", help="YAML config, e.g. jobs/nightly.yaml (data.path: a day store)")
    nightly.add_argument("overrides", nargs="*")
    nightly.add_argument("--date", help="the day to hold out and gate on, YYYY-MM-DD [yesterday, UTC]")
    nightly.add_argument("--force", action="store_true", help="promote even if a gate fails (recorded)")
    nightly.set_defaults(func=_nightly)

    registry = sub.add_parser("registry", help="the MLflow model registry: list, promote, rollback")
    registry.add_argument("--config", default="jobs/nightly.yaml", help="the config naming the registry [%(default)s]")
    reg = registry.add_subparsers(dest="registry_command", required=True)
    reg.add_parser("list", help="every version with its aliases and tags").add_argument("overrides", nargs="*")
    promote = reg.add_parser("promote", help="make VERSION the champion (recorded as manual)")
    promote.add_argument("version")
    promote.add_argument("overrides", nargs="*")
    reg.add_parser("rollback", help="champion -> the champion it replaced").add_argument("overrides", nargs="*")
    registry.set_defaults(func=_registry)

    evaluate = sub.add_parser("evaluate", help="one model's metrics on any dataset")
    evaluate.add_argument("model", help="an export directory, or models:/NAME@ALIAS or models:/NAME/VERSION")
    evaluate.add_argument("--data", required=True, help="a dataset directory")
    evaluate.add_argument("--split", help="one split [test_id and test_ood, where present]")
    evaluate.add_argument("--config", default="jobs/nightly.yaml", help="for models:/ URIs: the registry [%(default)s]")
    evaluate.add_argument("overrides", nargs="*")
    evaluate.set_defaults(func=_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # distrec's own progress at INFO; other libraries' chatter (fbgemm, the planner's tables) with -v
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    logging.getLogger("distrec").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        args.func(args)
    except DistrecError as exc:
        print(f"distrec: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
