#!/usr/bin/env bash
# Check a GPU machine's stack and time the pure-PyTorch parts of distrec's hot paths.
#
#   bash scripts/gpu_check.sh > gpu_check.json          # progress on stderr, one JSON object on stdout
#   GPU_CHECK_QUICK=1 bash scripts/gpu_check.sh         # tiny sizes (a smoke run; automatic without CUDA)
#   PYTHON=.venv/bin/python bash scripts/gpu_check.sh   # another interpreter (default: python3)
#
# Needs only bash, python3 and torch: no distrec install, no torchrec (its parts report
# {"skipped": "torchrec not installed"}), no network. Reports:
#   stack             nvidia-smi (GPUs, driver), torch and its CUDA build, torch.cuda, the device,
#                     whether torchrec / fbgemm_gpu import
#   frontdoor_scoring the front-door scorer: an MLP head [48 -> 64 -> 32 -> 1] on every (row, bank
#                     history) pair by broadcasting, B = 8192 rows x N = 64, dim 16 (as
#                     distrec/causal/frontdoor.py + the teachers' heads do); rows/s
#   student_dense     the student's dense path: the same MLP, forward + backward + Adam on
#                     B = 8192 x 48 inputs; steps/s, samples/s
#   embedding_bag     plain PyTorch reference for the sparse side: 4 nn.EmbeddingBag(sparse=True)
#                     tables of 2M x 64, one id per bag, B = 8192, a Linear head, with SparseAdam and
#                     with sparse Adagrad (errors are reported, not fatal); samples/s
#   torchrec          when torchrec imports: fbgemm's fused TBE (the kernel of TorchRec's sharded
#                     tables) with EXACT_ROWWISE_ADAGRAD on the same tables and batch; samples/s
# Every timing: warm-up iterations, torch.cuda.synchronize around each timed repeat, 5 repeats,
# median / min / max. On CPU (no CUDA) every size is tiny, so the script doubles as a smoke test
# (tests/test_gpu_check.py).
set -euo pipefail

PY="${PYTHON:-python3}"
if ! command -v "$PY" >/dev/null 2>&1; then
    printf '{"error": "python interpreter not found: %s"}\n' "$PY"
    exit 2
fi

exec "$PY" - "$@" <<'PYTHON'
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback

# One JSON object on stdout: keep fd 1 for it and send everything else (library prints, C++
# logs, warnings) to stderr.
_json_out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr

REPEATS = 5
_T0 = time.perf_counter()
report = {"script": "scripts/gpu_check.sh", "python": platform.python_version(), "platform": platform.platform()}


def log(message):
    print(f"[gpu_check {time.perf_counter() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def emit(code=0):
    _json_out.write(json.dumps(report, indent=2, sort_keys=False) + "\n")
    _json_out.flush()
    sys.exit(code)


def error_text(exc):
    return f"{type(exc).__name__}: {exc}".strip()[:500]


def nvidia_smi():
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"available": False, "error": "nvidia-smi not on PATH"}
    query = "name,driver_version,memory.total,compute_cap"
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except Exception as exc:  # a hung or broken driver
        return {"available": False, "error": error_text(exc)}
    if out.returncode != 0:
        return {"available": False, "error": (out.stderr or out.stdout).strip()[:500]}
    gpus = []
    for line in out.stdout.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        gpus.append(dict(zip(query.split(","), fields)))
    return {"available": True, "gpus": gpus}


report["nvidia_smi"] = nvidia_smi()

try:
    import torch
    from torch import nn
except Exception as exc:
    report["torch"] = {"error": error_text(exc)}
    report["cuda"] = False
    emit(2)

report["torch"] = {
    "version": torch.__version__,
    "cuda_build": torch.version.cuda,
    "num_threads": torch.get_num_threads(),
}
cuda = torch.cuda.is_available()
report["cuda"] = cuda
report["device"] = "cpu"
report["device_count"] = 0
if cuda:
    try:
        props = torch.cuda.get_device_properties(0)
        report["device"] = torch.cuda.get_device_name(0)
        report["device_count"] = torch.cuda.device_count()
        report["device_memory_gib"] = round(props.total_memory / 2**30, 1)
        report["capability"] = f"{props.major}.{props.minor}"
        report["torch"]["cudnn"] = torch.backends.cudnn.version()
        torch.zeros(1, device="cuda:0")  # a first CUDA context, so a broken driver shows here
    except Exception as exc:
        report["cuda_error"] = error_text(exc)
        report["cuda"] = cuda = False
        report["device"] = "cpu"
quick = os.environ.get("GPU_CHECK_QUICK", "0") not in ("", "0") or not cuda
device = torch.device("cuda:0" if cuda else "cpu")
report["quick"] = quick


def try_import(name):
    start = time.perf_counter()
    try:
        module = __import__(name)
    except Exception as exc:
        return None, {"ok": False, "error": error_text(exc)}
    return module, {
        "ok": True,
        "version": getattr(module, "__version__", None),
        "import_s": round(time.perf_counter() - start, 2),
    }


_, report_fbgemm = try_import("fbgemm_gpu")
torchrec, report_torchrec = try_import("torchrec")
report["imports"] = {"fbgemm_gpu": report_fbgemm, "torchrec": report_torchrec}
log(f"torch {torch.__version__}, device {report['device']}, quick={quick}, torchrec={report_torchrec['ok']}")

# Sizes: the GPU figures at full size; tiny ones for CPU / quick runs.
B = 512 if quick else 8192  # rows per batch
BANK = 16 if quick else 64  # front-door x' bank size N
DIM = 16  # distrec's embedding dim for the head: direct, mediator, item -> 48 inputs
ROWS = 20_000 if quick else 2_000_000  # rows per embedding table
EMB_DIM = 16 if quick else 64
TABLES = 4
ITERS = {"score": 3 if quick else 20, "dense": 5 if quick else 100, "sparse": 3 if quick else 20}
WARMUP = 2 if quick else 10


def sync():
    if cuda:
        torch.cuda.synchronize()


def sig(value, digits=4):
    return float(f"{value:.{digits}g}")


def spread(values):
    return {"median": sig(statistics.median(values)), "min": sig(min(values)), "max": sig(max(values))}


def timed(step, iters, units_per_iter, unit):
    """Warm up, then REPEATS timed repeats of `iters` steps; rates in `unit` per second."""
    for _ in range(WARMUP):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(REPEATS):
        sync()
        start = time.perf_counter()
        for _ in range(iters):
            step()
        sync()
        seconds.append(time.perf_counter() - start)
    rates = [units_per_iter * iters / s for s in seconds]
    result = {
        "iters_per_repeat": iters,
        "warmup_iters": WARMUP,
        "repeats": REPEATS,
        "repeat_s": spread(seconds),
        f"{unit}_per_s": spread(rates),
    }
    if cuda:
        result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return result


def run_part(name, fn):
    log(f"{name} ...")
    try:
        result = fn()
    except Exception as exc:
        traceback.print_exc()
        result = {"error": error_text(exc)}
    finally:
        if cuda:
            torch.cuda.empty_cache()
    log(f"{name}: {json.dumps(result)[:300]}")
    return result


def mlp_head():
    return nn.Sequential(nn.Linear(3 * DIM, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1)).to(device)


def frontdoor_scoring():
    torch.manual_seed(0)
    head = mlp_head().eval()
    bank = torch.randn(BANK, DIM, device=device)  # e_k(x'_n), encoded once per teacher
    mediator = torch.randn(B, DIM, device=device)  # g_k(x)
    item = torch.randn(B, DIM, device=device)  # v_k(i)

    def step():
        with torch.inference_mode():
            pairs = torch.broadcast_tensors(bank.unsqueeze(0), mediator.unsqueeze(1), item.unsqueeze(1))
            logits = head(torch.cat(pairs, dim=-1)).squeeze(-1)  # [B, N]
            return torch.sigmoid(logits).mean(dim=1)  # [B]: 1/N sum_n sigmoid(h(x'_n, m, i))

    result = {"rows": B, "bank": BANK, "dim": DIM, "head": [3 * DIM, 64, 32, 1], "pairs_per_row": BANK}
    result.update(timed(step, ITERS["score"], B, "rows"))
    result["pairs_per_s_median"] = sig(result["rows_per_s"]["median"] * BANK)
    return result


def student_dense():
    torch.manual_seed(0)
    model = mlp_head()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    x = torch.randn(B, 3 * DIM, device=device)
    y = torch.randint(0, 2, (B,), device=device).float()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x).squeeze(-1), y).backward()
        optimizer.step()

    result = {"batch": B, "inputs": 3 * DIM, "mlp": [3 * DIM, 64, 32, 1], "optimizer": "Adam"}
    timing = timed(step, ITERS["dense"], 1, "steps")
    timing["samples_per_s"] = {k: sig(v * B) for k, v in timing["steps_per_s"].items()}
    result.update(timing)
    return result


def id_batches(count=4):
    """A few pre-drawn batches of ids ([TABLES, B], one id per bag), cycled through."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    return [torch.randint(0, ROWS, (TABLES, B), generator=generator).to(device) for _ in range(count)]


def embedding_bag(optimizer_name):
    torch.manual_seed(0)
    tables = nn.ModuleList(
        nn.EmbeddingBag(ROWS, EMB_DIM, mode="sum", sparse=True, device=device) for _ in range(TABLES)
    )
    dense = nn.Linear(TABLES * EMB_DIM, 1).to(device)
    if optimizer_name == "SparseAdam":
        sparse_opt = torch.optim.SparseAdam(list(tables.parameters()), lr=1e-3)
    else:
        sparse_opt = torch.optim.Adagrad(list(tables.parameters()), lr=1e-2)
    dense_opt = torch.optim.Adam(dense.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    batches = id_batches()
    y = torch.randint(0, 2, (B,), device=device).float()
    state = {"i": 0}

    def step():
        ids = batches[state["i"] % len(batches)]
        state["i"] += 1
        sparse_opt.zero_grad(set_to_none=True)
        dense_opt.zero_grad(set_to_none=True)
        pooled = torch.cat([table(ids[t].unsqueeze(1)) for t, table in enumerate(tables)], dim=1)
        loss_fn(dense(pooled).squeeze(-1), y).backward()
        sparse_opt.step()
        dense_opt.step()

    result = {"optimizer": optimizer_name}
    result.update(timed(step, ITERS["sparse"], B, "samples"))
    return result


def embedding_bags():
    common = {"tables": TABLES, "rows": ROWS, "dim": EMB_DIM, "batch": B, "ids_per_bag": 1, "mode": "sum"}
    return {
        **common,
        "sparse_adam": run_part("embedding_bag/SparseAdam", lambda: embedding_bag("SparseAdam")),
        "sparse_adagrad": run_part("embedding_bag/Adagrad", lambda: embedding_bag("Adagrad")),
    }


def torchrec_tbe():
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    try:
        from fbgemm_gpu.split_embedding_configs import EmbOptimType as OptimType
    except ImportError:  # older fbgemm
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import OptimType

    torch.manual_seed(0)
    location, compute = (
        (EmbeddingLocation.DEVICE, ComputeDevice.CUDA) if cuda else (EmbeddingLocation.HOST, ComputeDevice.CPU)
    )
    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[(ROWS, EMB_DIM, location, compute)] * TABLES,
        optimizer=OptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=1e-2,
        eps=1e-8,
        pooling_mode=PoolingMode.SUM,
        device=device,
    )
    dense = nn.Linear(TABLES * EMB_DIM, 1).to(device)
    dense_opt = torch.optim.Adam(dense.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    # TBE input: all tables' ids table-major, one offset per bag.
    batches = [ids.reshape(-1).contiguous() for ids in id_batches()]
    offsets = torch.arange(0, TABLES * B + 1, device=device, dtype=torch.long)
    y = torch.randint(0, 2, (B,), device=device).float()
    state = {"i": 0}

    def step():
        ids = batches[state["i"] % len(batches)]
        state["i"] += 1
        dense_opt.zero_grad(set_to_none=True)
        loss_fn(dense(tbe(ids, offsets)).squeeze(-1), y).backward()  # the table update is fused into backward
        dense_opt.step()

    result = {
        "kernel": "fbgemm_gpu SplitTableBatchedEmbeddingBagsCodegen",
        "optimizer": "EXACT_ROWWISE_ADAGRAD (fused)",
        "tables": TABLES,
        "rows": ROWS,
        "dim": EMB_DIM,
        "batch": B,
        "ids_per_bag": 1,
    }
    result.update(timed(step, ITERS["sparse"], B, "samples"))
    return result


bench = {}
bench["frontdoor_scoring"] = run_part("frontdoor_scoring", frontdoor_scoring)
bench["student_dense"] = run_part("student_dense", student_dense)
bench["embedding_bag"] = embedding_bags()
if torchrec is None:
    bench["torchrec"] = {"skipped": "torchrec not installed"}
elif not report_fbgemm["ok"]:
    bench["torchrec"] = {"skipped": "fbgemm_gpu does not import"}
else:
    bench["torchrec"] = {"fbgemm_tbe_rowwise_adagrad": run_part("torchrec/fbgemm TBE", torchrec_tbe)}
report["bench"] = bench
report["wall_s"] = round(time.perf_counter() - _T0, 1)
emit(0)
PYTHON
