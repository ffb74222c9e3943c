"""``docs/performance.md``: the figures of one ``benchmarks.run`` command, its machine, and a reading."""

from __future__ import annotations

import importlib
import time

from benchmarks.run import BENCHMARKS

TARGETS = {
    "a": (">=", 0.8),
    "b": (">=", 2.0),
    "c": (">=", 0.8),
    "d": (">=", 1.6),
    "e": ("<=", 1.2),
    "f": (">=", 1.0),
    "g": ("<=", 90),  # seconds, not a ratio
    "h": (">=", 0.8),
    "i": ("<=", 1.3),
}


def _met(key: str, value: object) -> str:
    if not isinstance(value, (int, float)):
        return "failed"
    op, target = TARGETS[key]
    return "yes" if (value >= target if op == ">=" else value <= target) else "no"


def _ratio_cell(d: dict[str, object]) -> str:
    """The ratio, its rounds' min-max, and a mark when the machine was loaded while it ran."""
    cell = str(d.get("ratio"))
    if isinstance(d.get("ratio_spread"), dict):
        cell += f" ({d['ratio_spread']['min']}-{d['ratio_spread']['max']})"  # type: ignore[index]
    return cell + (" loaded" if d.get("loaded") else "")


def _n(x: object) -> str:
    return f"{x:,}" if isinstance(x, int) else str(x)


def _rows(details: dict[str, dict[str, object]]) -> list[tuple[str, ...]]:
    rows = []
    for key, d in sorted(details.items()):
        name = BENCHMARKS[key][0]
        op, target = TARGETS[key]
        if d.get("ratio") is None:
            rows.append((name, "none", f"{op} {target}", "failed", "see Failures below", "", ""))
            continue
        if key == "a":
            measured = f"{_n(d.get('batch_rows_per_s'))} rows/s to Batch"
            reference = f"{_n(d.get('raw_rows_per_s'))} rows/s raw scan"
            size = f"{_n(d.get('rows'))} rows (of a {_n(d.get('dataset_rows'))}-row log), batch {d.get('batch_size')}"
        elif key == "b":
            measured = f"{_n(d.get('torchrec_samples_per_s'))} samples/s TorchRec fused"
            reference = f"{_n(d.get('plain_samples_per_s'))} samples/s EmbeddingBag + {d.get('plain_reference')}"
            size = f"tables {d.get('tables')}, batch {d.get('batch_size')}"
            if d.get("table_rows_target") and str(d["table_rows_target"]) not in str(d.get("tables")):
                size += f" (reduced from {_n(d['table_rows_target'])} rows to fit the available memory)"
        elif key == "c":
            measured = f"{_n(d.get('stream_samples_per_s'))} samples/s on the stream, steady"
            reference = f"{_n(d.get('precomputed_samples_per_s'))} samples/s precomputed, steady"
            size = (
                f"{_n(d.get('rows'))} rows, {d.get('workers')} workers, bank {d.get('bank_size')} in "
                f"{d.get('bank_groups')} random groups (distill.bank_groups); whole epoch {d.get('epoch_ratio')}, "
                f"first step {d.get('stream_first_step_seconds')} vs {d.get('precomputed_first_step_seconds')} s"
            )
            if "full_bank_ratio" in d:
                size += f"; the whole bank for every row: {d.get('full_bank_ratio')} steady"
            if "inline_ratio" in d:
                size += (
                    f"; scored inline by the student's ranks (distill.soft_labels=inline): {d.get('inline_ratio')} "
                    f"steady, {d.get('inline_epoch_ratio')} whole epoch"
                )
        elif key == "d":
            measured = f"{_n(d.get('two_workers_samples_per_s'))} samples/s, 2 workers"
            reference = f"{_n(d.get('one_worker_samples_per_s'))} samples/s, 1 worker"
            size = f"{_n(d.get('rows'))} rows, {d.get('model')}"
            if "data_parallel_ratio" in d:
                size += f"; its tables data_parallel: {d.get('data_parallel_ratio')}"
            if "without_ray_ratio" in d:
                size += f"; without Ray (gloo processes, preloaded batches): {d.get('without_ray_ratio')}"
            if "independent_ratio" in d:
                size += f"; two independent plain processes (the machine's ceiling): {d.get('independent_ratio')}"
            if "demo_ratio" in d:
                size += f"; the demo's {d.get('demo_model')}: {d.get('demo_ratio')}"
        elif key == "f":
            measured = f"{d.get('cold_seconds')} s cold nightly, {d.get('cold_epochs')} epochs"
            reference = f"{d.get('warm_seconds')} s warm nightly, 1 epoch (AUC {d.get('warm_auc')})"
            size = f"{d.get('sizes')}" + ("" if d.get("reached") else "; no cold run reached the AUC: a lower bound")
        elif key == "g":
            measured = f"{d.get('tiny_run_seconds')} s wall, {d.get('training_loop_seconds')} s in training loops"
            reference = f"{d.get('outside_loops_share')} of the time outside training loops"
            size = f"{_n(d.get('rows'))} rows, jobs/local.yaml, {d.get('repeats')} runs"
        elif key == "h":
            files: dict = d.get("files", {})  # type: ignore[assignment]
            measured = f"{_n(d.get('many_rows_per_s'))} rows/s over {_n(files.get('many'))} files"
            reference = f"{_n(d.get('few_rows_per_s'))} rows/s over {_n(files.get('few'))} files"
            size = f"{_n(d.get('rows'))} training rows, bank {d.get('bank_size')}"
        elif key == "i":
            sizes: dict = d.get("sizes", {})  # type: ignore[assignment]
            measured = f"{d.get('peak_pss_mib')} MiB PSS, {_n(sizes.get('trained_and_streamed'))} rows"
            reference = f"{d.get('reference_peak_pss_mib')} MiB PSS, {_n(sizes.get('reference'))} rows"
            size = (
                f"{_n(sizes.get('generated'))}-row log ({_n(d.get('generate_rows_per_s'))} rows/s generated); "
                f"teacher epoch {_n(d.get('train_rows_per_s'))} rows/s, stream {_n(d.get('stream_rows_per_s'))} rows/s"
            )
        else:
            small, large = d.get("small", {}), d.get("large", {})
            measured = f"{large.get('peak_pss_sum_mib')} MiB PSS on {_n(d.get('sizes', [0, 0])[-1])} rows"  # type: ignore[union-attr,index]
            reference = f"{small.get('peak_pss_sum_mib')} MiB PSS on {_n(d.get('sizes', [0, 0])[0])} rows"  # type: ignore[union-attr,index]
            size = f"synthetic logs {d.get('sizes')} (train split streamed); {d.get('mib_per_million_rows')} MiB/M rows"
        rows.append((name, _ratio_cell(d), f"{op} {target}", _met(key, d.get("ratio")), measured, reference, size))
    return rows


def _batch_overhead_us(a: dict[str, object]) -> str:
    """What building the batches adds to the raw scan, per batch, from (a)'s two medians."""
    batch, raw, size = a.get("batch_rows_per_s"), a.get("raw_rows_per_s"), a.get("batch_size")
    if not (isinstance(batch, int | float) and isinstance(raw, int | float) and isinstance(size, int) and batch > 0):
        return "a few tens of"
    return f"about {size * (1 / batch - 1 / raw) * 1e6:.0f}"


def _reading(details: dict[str, dict[str, object]], info: dict[str, object]) -> list[str]:
    """One paragraph per figure that ran: this run's numbers, and what we found limits each ratio."""
    out = []
    details = {key: d for key, d in details.items() if d.get("ratio") is not None}
    a, b, c, d, e = (details.get(k, {}) for k in "abcde")
    cores = info.get("nproc")
    if a:
        out.append(
            f"**(a) reader {a.get('ratio')}** ({_n(a.get('batch_rows_per_s'))} vs {_n(a.get('raw_rows_per_s'))} "
            "rows/s). Both sides decode the same Parquet chunks of the `ShardReader`; the Batch side converts "
            "and checks each chunk once (id ranges proven by the row groups' footer statistics are not "
            f"rescanned) and then cuts {a.get('batch_size')}-row batches from its arrays, so what is left per "
            "batch is copying its ids and history into the KJT's values and building seven tensors: "
            f"{_batch_overhead_us(a)} us a batch on top of the raw decode (a view of the chunk's arrays for "
            "the labels, weights, dense, confounder and soft-label tensors; the KJT's construction and the "
            "copy of its values are most of it)."
            + (
                f" The reader is far from limiting training: it builds batches "
                f"{a['batch_rows_per_s'] / d['one_worker_samples_per_s']:.0f}x faster than one worker trains "  # type: ignore[operator]
                "the demo teacher (d)."
                if d.get("one_worker_samples_per_s") and a.get("batch_rows_per_s")
                else ""
            )
        )
    if b:
        out.append(
            f"**(b) TorchRec fused vs plain {b.get('ratio')}** (tables {b.get('tables')}), against the "
            f"faster plain side, `nn.EmbeddingBag(sparse=True)` + {b.get('plain_reference')}; against "
            f"SparseAdam {b.get('ratio_vs_plain_sparseadam')}, against sparse Adagrad "
            f"{b.get('ratio_vs_plain_adagrad')}. The fused path runs one fbgemm table-batched lookup for all "
            "tables and applies row-wise Adagrad inside the backward, touching only the looked-up rows; "
            "the plain sides build sparse COO gradients, coalesce them and run a separate optimizer step "
            "(SparseAdam keeps two moment tables as large as the embeddings, Adagrad one). The plain "
            "tables are TorchRec's unsharded `EmbeddingBagCollection`, i.e. a dict of `nn.EmbeddingBag`, "
            "so they also pay its per-table KJT split."
        )
    if c:
        score_us = 1e6 / c["scoring_rows_per_s"]  # type: ignore[operator]
        train_us = 1e6 * c["workers"] / c["precomputed_samples_per_s"]  # type: ignore[operator]
        bank_rows = c["bank_size"] // (c.get("bank_groups") or 1)  # type: ignore[operator]
        out.append(
            f"**(c) stream vs precomputed {c.get('ratio')}** in the steady state "
            f"({_n(c.get('stream_samples_per_s'))} vs {_n(c.get('precomputed_samples_per_s'))} samples/s over the "
            "training steps after each fit's first; the whole epoch, with that first step, validation and "
            f"the checkpoint: {c.get('epoch_ratio')}). The stream adds the teachers' scoring to the student's "
            f"work: with a bank of {c.get('bank_size')} in {c.get('bank_groups')} random groups "
            "(`distill.bank_groups`: each chunk of rows scored against one group, an unbiased estimate of "
            f"the front-door probability), each teacher's head runs {bank_rows} times per row; on one thread, "
            f"scoring with all teachers ran at {_n(c.get('scoring_rows_per_s'))} rows/s ({score_us:.1f} "
            f"core-us per row), against {train_us:.1f} core-us per row for the {c.get('workers')}-worker "
            "student on precomputed labels. Splitting the heads against the bank (`bank_head`) scores "
            f"{c.get('scoring_split_speedup')}x as many rows/s as the generic broadcast path "
            f"({_n(c.get('scoring_generic_rows_per_s'))} rows/s). "
            f"On {cores} cores the scorer actors and the student's workers share the same CPUs; "
            f"from these timings no overlap can do much better than {c.get('shared_cores_bound')} (a rough "
            "bound: the timings are medians taken between the fits on a machine whose load varies). "
            "The stream's warm-up is a fixed cost per job, not per row: the student's first step waited "
            f"{c.get('stream_first_step_seconds')} s on the stream (scorer actors starting, loading the "
            f"teachers and encoding the bank) against {c.get('precomputed_first_step_seconds')} s on "
            f"precomputed labels; the stream alone reaches its first batch in {c.get('first_batch_seconds')} s "
            f"and then runs at {_n(c.get('steady_rows_per_s'))} rows/s. Session 14 cut the stream's own cost "
            "(its CPU a row, consumed alone by the driver on 700,000 rows: 19.4 us before, 11.5 with one read "
            "task a file instead of Ray Data's split blocks, 9.6 with 4,096-row scoring calls, 7.6 with one "
            "stage for both teachers instead of one a teacher, against about 8 for the scoring itself on one "
            "thread). End to end, two full runs of this benchmark a few minutes apart, before the read moved "
            "to distrec's own datasource: one stage for both teachers 0.790 (0.732-0.803), one a teacher 0.691 "
            "(0.672-0.741)."
            + (
                f" Against the whole bank for every row ({c.get('bank_size')} head evaluations a row) the "
                f"stream reaches {c.get('full_bank_ratio')} "
                f"({(c.get('full_bank_ratio_spread') or {}).get('min')}-"
                f"{(c.get('full_bank_ratio_spread') or {}).get('max')}) in the steady state and "
                f"{c.get('full_bank_epoch_ratio')} over the whole epoch (first step "
                f"{c.get('stream_full_bank_first_step_seconds')} s): on shared cores that needs the scorers "
                "on cores (or GPUs) of their own."
                if "full_bank_ratio" in c
                else ""
            )
            + (
                " Scored inline instead (`distill.soft_labels=inline`: each student rank runs the teachers on the "
                "chunks it reads, in its own process; no scorer actors, object store or Ray Data), the student "
                f"runs at {_n(c.get('inline_samples_per_s'))} samples/s, {c.get('inline_ratio')} "
                f"({(c.get('inline_ratio_spread') or {}).get('min')}-{(c.get('inline_ratio_spread') or {}).get('max')})"
                f" in the steady state and {c.get('inline_epoch_ratio')} over the whole epoch, its first step "
                f"{c.get('inline_first_step_seconds')} s: the stream's warm-up is gone, and each rank scores its "
                "next chunks in a feed thread at the lowest CPU priority (`distrec.train.feed.background`), in "
                "the time its steps spend waiting on the other rank's collectives (session 20; before it, "
                "the scoring ran inside the rank's steps: 0.678)."
                if "inline_ratio" in c
                else ""
            )
            + " The reference is the student reading the precomputed labels with its own file reader, as "
            "`distrec run` trains every student on the soft labels it scored once. Until session 13 it read "
            "them through Ray Data, about half as fast in the steady state (its read ramps up after the first "
            "batch: at 210,000 rows the stream came out above it, 1.28), and the headline was the whole "
            "epoch at the full bank."
        )
    if d:
        out.append(
            f"**(d) 2 vs 1 worker {d.get('ratio')}** on the compute-bound {d.get('model')} "
            f"({_n(d.get('two_workers_samples_per_s'))} vs {_n(d.get('one_worker_samples_per_s'))} samples/s; "
            f"load average {d.get('load_average_before')} before and {d.get('load_average_after')} after, on "
            f"{cores} cores); the demo teacher ({d.get('demo_model')}) {d.get('demo_ratio')} "
            f"({_n(d.get('demo_two_workers_samples_per_s'))} vs {_n(d.get('demo_one_worker_samples_per_s'))}). "
            "The demo teacher's tables are tiny (2,000 users, 1,000 items, 16 tags, 16 dims), so sharding "
            "them saves no work, while every step of a 2-worker run adds gloo collectives (the embedding "
            "all-to-alls forward and backward, the dense gradient all-reduce) in which each rank waits for "
            "the slower one; the file reader's ranks no longer exchange a flag each step (their step counts "
            "come from the Parquet footers). The wider model does about 40x the MLP arithmetic per row for a "
            "comparable number of collectives, which is where a second worker can pay. "
            + (
                f"With its tables replicated (`train.sharding_types=[data_parallel]`: no embedding all-to-alls, "
                f"the tables' gradients all-reduced with the dense ones) two workers ran "
                f"{_n(d.get('two_workers_data_parallel_samples_per_s'))} samples/s, "
                f"{d.get('data_parallel_ratio')} of one. "
                if "data_parallel_ratio" in d
                else ""
            )
            + (
                (
                    f"Without Ray (two gloo processes running the same construction and pipeline on preloaded "
                    f"batches) two ranks ran {d.get('without_ray_ratio')} of one: the collectives' share, apart "
                    "from Ray and the file reader. "
                    if "without_ray_ratio" in d
                    else ""
                )
                + f"Two independent processes training the same model with plain PyTorch, nothing shared, ran "
                f"{d.get('independent_ratio')} of one: what the machine allows, against which the rest is "
                "distrec's (and TorchRec's and gloo's) own cost. "
                if "independent_ratio" in d
                else ""
            )
            + "Where the second worker's time goes (session 23, by hand, `docs/performance-history.md`): "
            "without Ray and with replicated tables a 2-rank step took 18.5-20.8 ms against 14.2 ms for one "
            "rank, of which the training thread's CPU was 14.5-16.5 ms and the rest waiting on the other rank "
            "at the step's two all-reduces; an all-reduce through shared memory instead of gloo's TCP took only "
            "0.5-1 ms off it, so what stalls a step is the other rank, not the transport. "
            + (
                "With a load average above the core count the two workers rarely hold a core each at the "
                "same moment, so these figures measure the machine's contention as much as distrec."
                if d.get("loaded")
                else "The machine was close to idle here, so these are distrec's own costs."
            )
        )
    if e:
        out.append(_memory_reading(e))
    if f := details.get("f", {}):
        runs = ", ".join(f"{r['epochs']} epochs {r['seconds']} s AUC {r['auc']}" for r in f.get("cold_runs", []))  # type: ignore[union-attr]
        out.append(
            f"**(f) warm vs cold {f.get('ratio')}**: the warm-started nightly (1 epoch from last night's "
            f"champion) took {f.get('warm_seconds')} s to a held-out AUC of {f.get('warm_auc')}; nightlies "
            f"on the same date that retrain from scratch (`nightly.warm_start=false`), each with the same "
            f"champion: {runs}. Both sides fetch and evaluate the champion for the gates, and both include "
            "the other fixed costs of a night (data checks, the teacher's soft-label scoring on Ray Data, "
            "evaluation, the MLflow record), which do not shrink with fewer epochs, so the ratio "
            "understates the saving in training time alone. (Until session 13 the cold side ran without a "
            "champion, so it skipped the champion's evaluation and download that the warm side paid.)"
            + (
                ""
                if f.get("reached")
                else " No cold run reached the warm AUC within 0.005: the ratio is a lower bound."
            )
        )
    if g := details.get("g", {}):
        stages = ", ".join(f"{name} {sec} s" for name, sec in g.get("stages", {}).items())  # type: ignore[union-attr]
        loops = ", ".join(f"{name} {sec} s" for name, sec in g.get("loops", {}).items())  # type: ignore[union-attr]
        out.append(
            f"**(g) tiny run {g.get('tiny_run_seconds')} s** (median of {g.get('repeats')}; target 90 s): "
            f"{g.get('outside_loops_share')} of it outside the training loops. Its stages: {stages}. The "
            f"training loops themselves: {loops}. What is left is start-up: every model is its own "
            "TorchTrainer (a controller and a worker group of fresh processes, each importing torch, "
            "torchrec and Ray Train, then a gloo process group and a sharding plan), the scorer actors "
            "load the teachers, and evaluation runs its own tasks; on 2 cores the concurrent start-ups "
            "queue for the CPUs. What was cut (session 11, from 118 s on an idle machine): Ray Train's "
            "controller collected each epoch's report only at its next poll, every 2 s, and the worker's "
            "next report waited for it (`train.controller_poll_s`, now 0.25 s: 6 reports took 22.9 s in a "
            "bare TorchTrainer at 2 s, 9.9 s at 0.2 s); each trainer was started from a Ray task, a process "
            "importing torch, torchrec and Ray Train only to wait (now a driver thread); Ray Data's v2 "
            "Parquet datasource started footer-reading actors for every read (v1: scoring 19 s -> 8 s); "
            "evaluation started a process per model (now as many at a time as there are cores, reusing "
            "them); every Ray worker process (about 40 in this run) imported distrec's console module, "
            "with tqdm, the report module and matplotlib (about 0.5 s each), for its setup hook (session "
            "15: the hook has a module of its own that imports nothing). A bare TorchTrainer with an "
            "empty loop still costs 7-8 s on this machine."
        )
    if h := details.get("h", {}):
        files = h.get("files", {})
        out.append(
            f"**(h) many files vs few {h.get('ratio')}** ({_n(h.get('many_rows_per_s'))} vs "
            f"{_n(h.get('few_rows_per_s'))} rows/s over {files.get('many')} vs {files.get('few')} files of the "  # type: ignore[union-attr]
            "same rows). The stream reads with distrec's own Ray Data datasource "
            "(`distrec.data.datasource.ParquetFiles`): small files share read tasks (about 32 MiB of Parquet "
            "a task, at least 2 per CPU slot), and each task reads its files in turn with pyarrow's "
            "`ParquetFile`, joining small ones into chunks of up to 16,384 rows. History: every file a task of "
            "its own through `ray.data.read_parquet`, 0.564 (session 11); files sharing its tasks, 0.69 "
            "(session 12); this datasource, session 14 (`read_parquet` read 35,000-49,000 rows/s over these "
            "3,000 files where it reads 77,000-107,000, read alone). What is left is per file: each file is "
            "opened, its footer read and its row groups decoded on their own, and here a file holds about 70 "
            "rows, so a many-file log still pays that on every pass; `distrec data compact DIR` and the "
            "importer's `partition=auto` keep a dataset's files large."
        )
    if i := details.get("i", {}):
        big: dict = i.get("scale", {})  # type: ignore[assignment]
        small: dict = i.get("reference", {})  # type: ignore[assignment]
        sizes: dict = i.get("sizes", {})  # type: ignore[assignment]
        out.append(
            f"**(i) production scale {i.get('ratio')}**: the {_n(sizes.get('generated'))}-row log was generated "
            f"at {_n(i.get('generate_rows_per_s'))} rows/s with a peak of {i.get('generate_peak_pss_mib')} MiB PSS; "
            f"one teacher trained one epoch over {_n(big.get('train_rows'))} of its rows ({big.get('files')} files) "
            f"at {_n(i.get('train_rows_per_s'))} rows/s (valid AUC {big.get('valid_auc')}, {big.get('fit_seconds')} s "
            f"with start-up and validation), then its front-door column streamed over the same rows at "
            f"{_n(i.get('stream_rows_per_s'))} rows/s (bank {i.get('bank', {}).get('size')} in "  # type: ignore[union-attr]
            f"{i.get('bank', {}).get('groups')} groups). The whole job peaked at {i.get('peak_pss_mib')} MiB PSS "  # type: ignore[union-attr]
            f"against {i.get('reference_peak_pss_mib')} MiB for the same job on {_n(small.get('train_rows'))} rows "
            f"(largest single process {big.get('peak_single_mib')} vs {small.get('peak_single_mib')} MiB; top private "
            f"memory {', '.join(f'{n} {m}' for n, m in big.get('top_anon_mib', [])[:3])}). The first run (session "
            "12) peaked at 4,337 against 3,109 MiB (1.395): each training worker peaked at about 1,000 MiB "
            "(474 on the 1M-row log) and validation, 7.5M rows here, gathered every label and probability on "
            "every rank and then made float64 copies of them (it now keeps one click byte and one float32 logit "
            "a row and sums the log-loss batch by batch; the workers then peaked at 858 MiB), and with Ray "
            "Data's 128 MiB blocks the stream spilled 4 GB of its object store to disk. "
            "That run streamed at 164,889 rows/s, and sessions 13-21 at 25,000-73,000: Ray 2.60's "
            "downstream-capacity backpressure held the scorer stage back for minutes at a time, until session 22 "
            "turned it off (`pipeline.configure_ray_data`). Until session 23 the driver also grew with the log's "
            "file size: picking the history bank's 64 rows (`stream.write_history_bank`) decoded whole files, "
            "1M rows each here against 140,000 in the reference (session 22's run: the driver's private memory "
            "peaked at 1,090 MiB here, about 540 in the reference, 1.301 in all); it now decodes only the chosen "
            "rows' row groups, 16,384 rows at a time, and keeps no file open (picking the bank alone, by hand: "
            "+630 MiB whole files, +279 MiB row groups with every file left open, +46 MiB now). The training "
            "workers grew with the validation split (7.5M rows here against 75,000): every rank gathered every "
            "rank's clicks and logits and sorted them all for the AUC, about 860 MiB a worker against 475. "
            "Since session 23 rank 0 alone gathers them, and its AUC finds each positive's rank among the "
            "sorted negatives by binary search (7.5M rows: 50 MiB at its peak, against 476 MiB for the sort "
            "of every row and its tie runs)."
        )
    return out


def _memory_reading(e: dict[str, object]) -> str:
    small: dict = e.get("small", {})  # type: ignore[assignment]
    large: dict = e.get("large", {})  # type: ignore[assignment]
    same: dict = e.get("large_same_file_size", {})  # type: ignore[assignment]
    sizes: list = e.get("sizes", [0, 0])  # type: ignore[assignment]

    def top(run: dict, key: str) -> str:
        return ", ".join(f"{name} {mib}" for name, mib in run.get(key, [])[:3]) or "n/a"

    text = (
        f"**(e) memory {e.get('ratio')}** ({_n(sizes[0])} vs {_n(sizes[-1])} rows in the log, "
        f"{_n(small.get('rows'))} vs {_n(large.get('rows'))} streamed). Summed PSS over the driver and every "
        f"Ray process peaked at {small.get('peak_pss_sum_mib')} vs {large.get('peak_pss_sum_mib')} MiB, a slope "
        f"of {e.get('mib_per_million_rows')} MiB per million rows over the sizes {e.get('peak_pss_sum_mib')}; "
        f"summed RSS at {small.get('peak_rss_sum_mib')} vs {large.get('peak_rss_sum_mib')} MiB "
        f"(ratio {e.get('ratio_rss_sum')}); "
        f"private (anonymous) memory alone at {small.get('peak_anon_sum_mib')} vs "
        f"{large.get('peak_anon_sum_mib')} MiB (ratio {e.get('ratio_anon_sum')}). A large part is fixed: Ray's "
        "GCS, raylet and pre-started workers, and every process's torch and Arrow libraries (RSS counts "
        "shared library pages once per process). What grew, by process (peak MiB): private memory "
        f"{top(small, 'top_anon_mib')} (small) vs {top(large, 'top_anon_mib')} (large); object-store pages "
        f"touched {top(small, 'top_shmem_mib')} vs {top(large, 'top_shmem_mib')}. The processes Ray lists as "
        "`ray::IDLE` at the end are the pooled workers that ran the Parquet read tasks; the object-store "
        "pages are shared memory, counted in the RSS of every process that touched them and bounded by the "
        "object store's size. "
    )
    if "ratio_same_file_size" in e:
        text += (
            f"The synthetic logs roll files at 1M rows, so the large log also has larger files "
            f"({_n(e.get('file_rows', {}).get('large'))} vs {_n(e.get('file_rows', {}).get('small'))} rows); "  # type: ignore[union-attr]
            f"rewritten with the small log's file size it peaked at {same.get('peak_pss_sum_mib')} MiB PSS, ratio "
            f"{e['ratio_same_file_size']}: "
            + (
                "holding the file size fixed removes most of the growth, so it comes from per-file buffering."
                if float(e["ratio_same_file_size"]) < float(e["ratio"]) - 0.05  # type: ignore[arg-type]
                else "about the headline's, so the size of a file is no longer what grows (it was, at 128 MiB "
                "blocks: 1.076 against 1.26 in session 11); what is left grows with the rows streamed."
            )
            + " "
        )
    grown = float(large.get("peak_anon_sum_mib", 0)) - float(small.get("peak_anon_sum_mib", 0))
    text += (
        f"Private memory grew by {grown:.0f} MiB for {_n(int(large.get('rows', 0)) - int(small.get('rows', 0)))} "
        "more rows, and in the breakdowns it sits in the read workers, not in the consumer. What each "
        "experiment did (10M rows, by hand unless in this table): Ray "
        "Data's v2 Parquet datasource (Ray's default) against v1 (a `ray.data_datasource` setting until session "
        "14; v1 is now fixed in `pipeline.configure_ray_data`, as v2's path also slowed distrec's own read, "
        "`datasource.ParquetFiles`, about 3x): v2 "
        "adds a pool of footer-reading actors; the last full run on v2 (session 9, older reader code too) "
        "peaked at 5,244 MiB PSS, the first on v1 at 3,432 (and scoring 7,000 rows took 19.0 s on v2, 7.7 s "
        "on v1); Ray's default object "
        "store (30% of RAM) against 512 MiB (`ray.object_store_mib`, the default): the stream touches new "
        "store pages as it goes, 1,050 MiB of the 3,432 at 30% of RAM, bounded at 512 MiB with the same "
        "rows/s; on v2, 16 MiB Ray Data blocks and a 512 MiB Ray Data object-store budget left the read "
        "workers' peaks unchanged; on v1, 16 MiB blocks (`ray.data_block_mib`, now the default) cut the large "
        "log's peak by about 100-170 MiB (session 12: 2,715 against 2,819-2,889 MiB at 128)."
    )
    experiments: dict = e.get("experiments", {})  # type: ignore[assignment]
    if experiments:
        done = "; ".join(
            f"{' '.join(f'{k}={v}' for k, v in x['env'].items()) or ' '.join(f'ray.{r}' for r in x['ray'])}: "
            f"{x['peak_pss_sum_mib']} MiB PSS on the large log, ratio {x['ratio']}, {_n(x['rows_per_s'])} rows/s"
            for x in experiments.values()
        )
        text += f" Run in this table, each one more pass over the large log with everything else the default: {done}."
    return text


def render(
    command: str,
    info: dict[str, object],
    details: dict[str, dict[str, object]],
    errors: dict[str, str],
    summary: dict[str, object],
) -> str:
    lines = [
        "# Performance",
        "",
        "Generated by `make bench` (`python -m benchmarks.run`); rerun it rather than editing this file. Every "
        "figure is a ratio against a reference measured in the same command (medians of interleaved repeats), "
        "because the machine is shared and absolute speeds drift from one minute to the next.",
        "",
        f"- command: `{command}`" + (" (quick: smaller sizes, fewer repeats)" if summary.get("quick") else ""),
        f"- finished: {summary.get('finished') or time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"wall time {summary.get('seconds')} s",
        f"- machine: {info.get('nproc')} cores ({info.get('cpu_model')}), {info.get('memory_gib')} GiB; "
        f"load average (1/5/15 min) {info.get('load_average_start')} at the start, "
        f"{info.get('load_average_end')} at the end",
        f"- versions: Python {info.get('python')}, torch {info.get('torch')}, torchrec {info.get('torchrec')}, "
        f"fbgemm-gpu-cpu {info.get('fbgemm_gpu_cpu')}, Ray {info.get('ray')}, pyarrow {info.get('pyarrow')}",
        "- how the figures got here (the partial reruns, A/Bs and profiles behind each change, with their "
        "commands): `docs/performance-history.md`",
        "",
        "| figure | ratio | target | met | measured | reference | sizes |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(details)]
    lines += ["", "## Reading", ""]
    for paragraph in _reading(details, info):
        lines += [paragraph, ""]
    if errors:
        lines += ["## Failures", ""]
        for key, trace in errors.items():
            lines += [f"({key}) {BENCHMARKS[key][0]}:", "", "```", trace.strip()[-2000:], "```", ""]
    lines += ["## What each figure compares", ""]
    for key in sorted(details):
        doc = (importlib.import_module(BENCHMARKS[key][1]).__doc__ or "").strip()
        lines += [f"### {doc.splitlines()[0]}", "", *doc.splitlines()[2:], ""]
    lines += [
        "Raw per-repeat figures are in `bench_out/results.json`. Reproduce with the command above "
        "(`make bench`, or `make bench BENCH_ARGS=--quick`).",
        "",
    ]
    return "\n".join(lines)
