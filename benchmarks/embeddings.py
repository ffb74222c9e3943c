"""(b) Teacher training samples/s: the TorchRec fused path against plain PyTorch, same process.

Both sides train the same DeepFM teacher (``build_model``, ``Objective``: identical dense layers and
loss) on the same pre-built batches, in one subprocess with a world-size-1 gloo process group and one
torch thread (as ``distrec.train.loop`` sets), alternating blocks of steps:

- ``torchrec``: the construction of ``distrec.train.loop.train_worker`` step by step: tables on the
  meta device, ``apply_optimizer_in_backward`` (row-wise Adagrad, the default ``sparse_optimizer``),
  ``planner.collective_plan``, ``DistributedModelParallel`` (fbgemm TBE, fused kernel),
  ``CombinedOptimizer`` with fused Adam for the dense layers, and what steps a rank alone
  (``Training.pipeline``: ``DirectSteps``, forward, backward and the optimizers' step).
- ``plain_sparseadam``: the same model built on the CPU, whose TorchRec ``EmbeddingBagCollection`` is
  a dict of plain ``nn.EmbeddingBag`` modules, switched to ``sparse=True``; ``torch.optim.SparseAdam``
  for the tables and the same fused Adam for the dense layers; ``loss.backward()`` then both ``step()``.
- ``plain_adagrad``: the same model and tables with ``torch.optim.Adagrad`` (which takes sparse
  gradients), the plain optimizer closest to the fused row-wise Adagrad.

The headline ratio is against the faster of the two plain sides (by median), so neither optimizer's
cost flatters the fused path; both ratios are reported, each with the min/median/max of its rounds.

Four tables of ``rows x 64`` (user, item + history, a context and an item-side feature), uniformly
drawn ids, histories of 0..20 items: the embedding path dominates. ``rows`` is 2M (500k with
``--quick``), or fewer when the machine's available memory would not hold all three sides.
Training data comes from memory, so data loading is not part of either figure (see (a) for that).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HISTORY_LEN = 20
DIM = 64
HIDDEN = [128, 64]


def _manifest(rows: int) -> object:
    from distrec.data.schema import Manifest, SparseFeature

    return Manifest(
        name="bench-tables",
        sparse=[
            SparseFeature("user_id", rows, "user"),
            SparseFeature("item_id", rows, "item"),
            SparseFeature("ctx_id", rows, "context"),
            SparseFeature("item_cat", rows, "item"),
        ],
        history_max_len=HISTORY_LEN,
    )


def _batches(manifest: object, table_rows: int, batch_size: int, count: int) -> list[object]:
    import numpy as np
    import pyarrow as pa

    from distrec.data.batch import BatchBuilder

    rng = np.random.default_rng(0)
    builder = BatchBuilder(manifest)  # type: ignore[arg-type]
    out = []
    for _ in range(count):
        lengths = rng.integers(0, HISTORY_LEN + 1, batch_size)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        hist = pa.ListArray.from_arrays(offsets, rng.integers(0, table_rows, int(offsets[-1])))
        table = pa.table(
            {
                **{k: rng.integers(0, table_rows, batch_size) for k in ("user_id", "item_id", "ctx_id", "item_cat")},
                "label": (rng.random(batch_size) < 0.2).astype(np.float32),
                "hist_item_ids": hist,
            }
        )
        out.append(builder(table))
    return out


def _torchrec_step(manifest: object, batches: list[object], batch_size: int) -> object:
    """``train_worker``'s construction, minus Ray: returns a function running one step (``Training.pipeline``)."""
    import torch

    from distrec.config import ModelConfig, TrainConfig
    from distrec.train.loop import WorkerTask, build_training

    task = WorkerTask(
        model=ModelConfig(name="t", arch="deepfm", dim=DIM, hidden=list(HIDDEN)),
        train=TrainConfig(num_workers=1, batch_size=batch_size),
        dataset="",
    )
    training = build_training(task, manifest, 1, torch.device("cpu"))  # type: ignore[arg-type]
    feed = itertools.cycle(batches)

    def step() -> float:
        return training.pipeline.progress(feed).loss.item()

    return step


def _plain_steps(manifest: object, batches: list[object]) -> dict[str, object]:
    """One plain model; a step function per table optimizer (they share the tables, to save memory)."""
    import torch

    from distrec.config import TrainConfig
    from distrec.models.architectures import build_model
    from distrec.models.base import embedding_modules
    from distrec.train.objective import Objective

    train = TrainConfig()
    model = build_model("deepfm", "t", manifest, DIM, HIDDEN, torch.device("cpu"))  # type: ignore[arg-type]
    objective = Objective(model)
    bags = [bag for ebc in embedding_modules(model) for bag in ebc.embedding_bags.values()]
    for bag in bags:
        bag.sparse = True  # nn.EmbeddingBag(sparse=True): sparse gradients
    table_ids = {id(bag.weight) for bag in bags}
    tables = [bag.weight for bag in bags]
    dense = [p for p in objective.parameters() if id(p) not in table_ids]
    dense_opt = torch.optim.Adam(dense, lr=train.dense_lr, fused=True)  # as distrec.train.loop's dense layers
    feed = itertools.cycle(batches)

    def stepper(sparse_opt: torch.optim.Optimizer) -> object:
        def step() -> float:
            loss, _ = objective(next(feed))
            sparse_opt.zero_grad(set_to_none=True)
            dense_opt.zero_grad(set_to_none=True)
            loss.backward()
            sparse_opt.step()
            dense_opt.step()
            return loss.item()

        return step

    return {
        "plain_sparseadam": stepper(torch.optim.SparseAdam(tables, lr=train.dense_lr)),
        "plain_adagrad": stepper(torch.optim.Adagrad(tables, lr=train.sparse_lr)),
    }


def child(table_rows: int, batch_size: int, steps: int, repeats: int) -> dict[str, object]:
    import torch
    import torch.distributed as dist

    from benchmarks.common import interleave, load_average, loaded, median, ratio, spread

    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.NamedTemporaryFile() as store_file:
        dist.init_process_group("gloo", store=dist.FileStore(store_file.name, 1), rank=0, world_size=1)
        manifest = _manifest(table_rows)
        batches = _batches(manifest, table_rows, batch_size, 16)
        steps_by_side = {"torchrec": _torchrec_step(manifest, batches, batch_size), **_plain_steps(manifest, batches)}

        def block(step: object) -> float:
            for _ in range(3):  # warm caches, and the pipeline's prefetch after the other side ran
                step()  # type: ignore[operator]
            started = time.perf_counter()
            for _ in range(steps):
                step()  # type: ignore[operator]
            return steps * batch_size / (time.perf_counter() - started)

        load_before = load_average()
        results = interleave({name: (lambda s=s: block(s)) for name, s in steps_by_side.items()}, repeats)
        dist.destroy_process_group()
    plain = {name: results[name] for name in ("plain_sparseadam", "plain_adagrad")}
    best = max(plain, key=lambda name: median(plain[name]))
    out: dict[str, object] = {
        "ratio": ratio(results["torchrec"], plain[best]),
        "ratio_spread": spread(results["torchrec"], plain[best]),
        "plain_reference": best,
        "loaded": loaded(load_before),
        "torchrec_samples_per_s": round(median(results["torchrec"])),
        "plain_samples_per_s": round(median(plain[best])),
        "tables": f"4 x {table_rows} x {DIM}",
        "batch_size": batch_size,
        "steps_per_block": steps,
        "repeats": repeats,
        "samples": {k: [round(v) for v in vs] for k, vs in results.items()},
    }
    for name, samples in plain.items():
        out[f"ratio_vs_{name}"] = ratio(results["torchrec"], samples)
        out[f"ratio_vs_{name}_spread"] = spread(results["torchrec"], samples)
        out[f"{name}_samples_per_s"] = round(median(samples))
    return out


def table_rows_that_fit(target: int) -> int:
    """``target``, or fewer rows when the machine's available memory would not hold all three sides.

    Per table row: 4 tables x 64 floats, held 5 times (TorchRec's table, the plain table, SparseAdam's
    two moments, Adagrad's sum); at most 60% of MemAvailable, in steps of 250k rows.
    """
    available = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemAvailable")
    )
    fits = int(0.6 * available / (4 * DIM * 4 * 5)) // 250_000 * 250_000
    return max(250_000, min(target, fits))


def run(out: Path, quick: bool) -> dict[str, object]:
    """Runs ``child`` in a fresh interpreter (its own process group, nothing shared with Ray)."""
    target = 500_000 if quick else 2_000_000
    rows = table_rows_that_fit(target)
    args = ["--table-rows", str(rows), "--steps", "15" if quick else "30", "--repeats", "3" if quick else "5"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.embeddings", *args],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmarks.embeddings failed:\n{proc.stderr[-4000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "table_rows_target": target}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table-rows", type=int, default=2_000_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    result = child(args.table_rows, args.batch_size, args.steps, args.repeats)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
