"""(c) Student samples/s fed by the live soft-label stream against precomputed soft labels.

Both sides are one epoch of the ``jobs/local.yaml`` student (BCE + front-door KD + CRL) through
``distrec.orchestrate.trainers.fit`` with the same worker count, on the same training logs:

- ``stream``: ``soft_label_stream`` (Ray Data: read Parquet -> one ``SoftLabeler`` stage whose actors,
  one per teacher, each add every teacher's front-door column, at the job's bank size,
  ``distill.bank_groups`` and ``distill.score_batch_size``) passed to ``fit``: scoring runs concurrently
  with training.
- ``precomputed``: the same stream written to Parquet once beforehand (not timed; cached under the
  output directory, keyed by the teachers' weights and the bank), then read by the student's own
  file reader (``train_files``, each rank its share), as ``distrec run`` trains every student on the
  soft labels it scored once.
- ``inline`` (reported beside the headline): ``distill.soft_labels=inline``, each student rank scoring the
  chunks it reads with every teacher (``WorkerTask.inline_scoring``) in a low-priority feed thread
  (``distrec.train.feed.background``), no stage or actors.

The teachers are freshly initialised exports of the ``jobs/local.yaml`` teachers (DeepFM, DCN):
scoring costs the same whatever the weights, and this skips training them. The headline is the
steady state, what the live stream costs the student per row: rows over the training loop's
``train_step`` timer (``distrec.train.loop``), which leaves out the epoch's first step (timed as
``first_step``: it waits for the data to start flowing, on the stream for its scorer actors to load
the teachers and encode the history bank) and the validation and checkpoint after the epoch; the
first step's batch is taken out of the rows. Reported beside it, per side: the time of that first
step (``*_first_step_seconds``), and the whole epoch's rate, the trainer's own ``rows`` /
``seconds`` with its validation and checkpoint (``epoch_ratio``). Ray and worker start-up are not
counted on either side.

To explain the ratio, a third interleaved side times the scoring alone in this process on one
thread (every teacher's ``TeacherScorer`` on the same few batches): ``scoring_rows_per_s``, with the
heads split against the bank (``bank_head``, the stream's path), and ``scoring_generic_rows_per_s``,
the same scorers on the generic broadcast path (the cost before the split). A fourth side consumes
the stream alone in this process (no student): ``first_batch_seconds`` is the time from starting
it to its first batch (scorer actors loading the teachers, encoding the bank, the first blocks), and
``steady_rows_per_s`` the rows after that one over the time after it. When the
stream and the student share the same cores, no overlap can beat ``cores / (workers +
precomputed_rate / scoring_rate)`` (the student's workers each keeping one core busy): that rough
bound is reported as ``shared_cores_bound``. Where the job scores against groups of the bank, one more
side streams against the whole bank for every row (``full_bank_*``: 64 head evaluations a row instead
of 8). ``--quick`` runs the stream, precomputed, inline and scoring sides only. Both live sides score only the
front-door columns the student reads, as ``distrec run`` does (``soft_label_targets``).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from benchmarks.common import REPO, interleave, load_average, loaded, median, ratio, spread, synthetic
from benchmarks.scaling import fit_metrics


def _teacher_exports(out: Path, config: object, manifest: object) -> dict[str, object]:
    import torch

    from distrec.models.architectures import model_from_config
    from distrec.train.export import export_spec, write_export

    exports = {}
    for seed, spec in enumerate(config.teachers):  # type: ignore[attr-defined]
        torch.manual_seed(seed)
        model = model_from_config(spec, manifest, torch.device("cpu"))
        directory = out / "teachers" / spec.name
        write_export(directory, export_spec(spec), manifest, model.state_dict())  # type: ignore[arg-type]
        exports[spec.name] = str(directory.resolve())
    return exports


def _scoring(
    teachers: dict[str, object], options: object, files: list[str], columns: list[str], batch_size: int, split: bool
) -> object:
    """A function timing rows/s of scoring with every teacher (one after the other) on one thread, with
    ``options`` (the bank's groups, the targets); ``split=False`` drops each scorer's split heads (the
    generic path)."""
    import pyarrow.parquet as pq
    import torch

    from distrec.orchestrate.stream import TeacherScorer

    threads = torch.get_num_threads()
    scorers = [TeacherScorer(export, options) for export in teachers.values()]  # type: ignore[arg-type]
    if not split:
        for scorer in scorers:
            scorer.bank = [(direct, None) for direct, _ in scorer.bank]
    torch.set_num_threads(threads)  # TeacherScorer sets one thread for its process; restore ours
    table = pq.read_table(files[0], columns=columns)
    batches = [table.slice(i * batch_size, batch_size) for i in range(8)]

    def timed() -> float:
        torch.set_num_threads(1)
        try:
            started = time.perf_counter()
            for batch in batches:
                for scorer in scorers:
                    scorer(batch)
            return sum(b.num_rows for b in batches) / (time.perf_counter() - started)
        finally:
            torch.set_num_threads(threads)

    timed()  # warm-up
    return timed


def _stream_alone(dataset: object, batch_size: int) -> tuple[float, float]:
    """(seconds to the first batch, rows/s after it) of consuming ``dataset`` in this process."""
    started = time.perf_counter()
    first = None
    rows = 0
    for table in dataset.iter_batches(batch_size=batch_size, batch_format="pyarrow"):  # type: ignore[attr-defined]
        if first is None:
            first = time.perf_counter()
        else:
            rows += table.num_rows
    assert first is not None, "the stream yielded no batch"
    return first - started, rows / (time.perf_counter() - first)


def run(out: Path, quick: bool) -> dict[str, object]:
    from distrec.config import load_config
    from distrec.data.batch import BatchBuilder
    from distrec.data.schema import Manifest
    from distrec.io import atomic_dir
    from distrec.orchestrate.pipeline import soft_label_targets
    from distrec.orchestrate.stream import (
        InlineScoring,
        ScoringOptions,
        front_door_column,
        soft_label_stream,
        write_history_bank,
    )
    from distrec.train.loop import WorkerTask

    rows = 300_000 if quick else 500_000  # quick: enough steps (100 a rank) for the steady state to mean one
    repeats = 2 if quick else 3  # each round is whole TorchTrainer fits: quick keeps two
    config = load_config(REPO / "jobs" / "local.yaml")
    root = synthetic(out, rows)
    manifest = Manifest.read(root)
    files = [str(f.resolve()) for f in manifest.files(root, "train")]
    columns = BatchBuilder(manifest).columns
    work = out / f"stream-{rows}"
    teachers = _teacher_exports(work, config, manifest)
    bank = write_history_bank(manifest, str(root), config.distill.bank_size, config.seed, work / "bank.parquet")
    soft = [front_door_column(name) for name in teachers]

    groups, batch = config.distill.bank_groups, config.distill.score_batch_size
    # as distrec run scores them: the front-door columns the student reads; one thread (inline: as the rank)
    options = ScoringOptions(str(bank.resolve()), bank_groups=groups, targets=soft_label_targets(config))

    def stream(bank_groups: int = groups, beside_training: bool = True) -> object:
        scoring = replace(options, bank_groups=bank_groups)
        return soft_label_stream(files, columns, teachers, scoring, batch, beside_training=beside_training)  # type: ignore[arg-type]

    inputs = [f for f in sorted((work / "teachers").rglob("*")) if f.is_file()] + [bank]
    digest = hashlib.sha1(b"".join(f.read_bytes() for f in inputs)).hexdigest()
    precomputed = work / f"soft_labels-{digest[:10]}-g{groups}"  # keyed by the teachers' weights, the bank, the groups
    if not precomputed.is_dir():
        with atomic_dir(precomputed) as tmp:
            stream(beside_training=False).write_parquet(str(tmp))  # type: ignore[attr-defined]
    scoring = _scoring(teachers, options, files, columns, batch, split=True)
    scoring_generic = _scoring(teachers, options, files, columns, batch, split=False)
    alone: list[tuple[float, float]] = []

    def stream_alone() -> float:
        alone.append(_stream_alone(stream(beside_training=False), config.train.batch_size))
        return alone[-1][1]

    epoch: dict[str, list[float]] = defaultdict(list)  # per side: the whole epoch's rows/s
    first_step: dict[str, list[float]] = defaultdict(list)  # per side: seconds of the epoch's first step

    def side(name: str, dataset: object = None, train_files: list[str] | None = None, inline: object = None) -> float:
        """The steady rows/s of one student epoch (module docstring), recording the rest."""
        task = WorkerTask(
            model=config.student,
            train=replace(config.train, epochs=1),
            dataset=str(root.resolve()),
            train_files=train_files,
            soft_label_columns=soft,
            distill=config.distill,
            crl=config.crl,
            inline_scoring=inline,
        )
        metrics = fit_metrics(task, out, dataset)
        epoch[name].append(metrics["rows"] / metrics["seconds"])
        first_step[name].append(metrics["timers"]["first_step"])
        first_batches = task.train.batch_size * task.train.num_workers  # one batch a rank, in the first step
        return (metrics["rows"] - first_batches) / metrics["timers"]["train_step"]

    sides = {
        "stream": lambda: side("stream", stream()),
        "precomputed": lambda: side(
            "precomputed", train_files=sorted(str(f.resolve()) for f in precomputed.glob("*.parquet"))
        ),
        "scoring": scoring,
        "inline": lambda: side("inline", inline=InlineScoring(teachers, options)),  # type: ignore[arg-type]
    }
    if not quick:  # the sides that explain the ratio
        sides |= {"scoring_generic": scoring_generic, "stream_alone": stream_alone}
        if groups > 1:
            sides["stream_full_bank"] = lambda: side("stream_full_bank", stream(1))
    load_before = load_average()
    results = interleave(sides, repeats)  # type: ignore[arg-type]
    cores, workers, pre = len(os.sched_getaffinity(0)), config.train.num_workers, median(results["precomputed"])
    bound = min(1.0, cores / (workers + pre / median(results["scoring"])))
    explained: dict[str, object] = {
        "inline_ratio": ratio(results["inline"], results["precomputed"]),
        "inline_ratio_spread": spread(results["inline"], results["precomputed"]),
        "inline_epoch_ratio": ratio(epoch["inline"], epoch["precomputed"]),
        "inline_first_step_seconds": round(median(first_step["inline"]), 1),
        "inline_samples_per_s": round(median(results["inline"])),
    }
    if not quick:
        explained |= {
            "scoring_generic_rows_per_s": round(median(results["scoring_generic"])),
            "scoring_split_speedup": ratio(results["scoring"], results["scoring_generic"]),
            "first_batch_seconds": round(median([first for first, _ in alone]), 1),
            "steady_rows_per_s": round(median([steady for _, steady in alone])),
        }
        if groups > 1:
            explained |= {
                "full_bank_ratio": ratio(results["stream_full_bank"], results["precomputed"]),
                "full_bank_ratio_spread": spread(results["stream_full_bank"], results["precomputed"]),
                "full_bank_epoch_ratio": ratio(epoch["stream_full_bank"], epoch["precomputed"]),
                "stream_full_bank_first_step_seconds": round(median(first_step["stream_full_bank"]), 1),
            }
    return {
        "ratio": ratio(results["stream"], results["precomputed"]),
        "ratio_spread": spread(results["stream"], results["precomputed"]),
        "epoch_ratio": ratio(epoch["stream"], epoch["precomputed"]),
        "epoch_ratio_spread": spread(epoch["stream"], epoch["precomputed"]),
        "stream_first_step_seconds": round(median(first_step["stream"]), 1),
        "precomputed_first_step_seconds": round(median(first_step["precomputed"]), 1),
        **explained,
        "loaded": loaded(load_before),
        "shared_cores_bound": round(bound, 3),
        "scoring_rows_per_s": round(median(results["scoring"])),
        "stream_samples_per_s": round(median(results["stream"])),
        "precomputed_samples_per_s": round(median(results["precomputed"])),
        "teachers": [f"{t.arch} dim {t.dim} hidden {t.hidden}" for t in config.teachers],
        "student": f"{config.student.arch} dim {config.student.dim} hidden {config.student.hidden}",
        "workers": config.train.num_workers,
        "bank_size": config.distill.bank_size,
        "bank_groups": groups,
        "rows": manifest.rows["train"],
        "dataset_rows": rows,
        "repeats": repeats,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "samples": {k: [round(v) for v in vs] for k, vs in results.items()},
    }
