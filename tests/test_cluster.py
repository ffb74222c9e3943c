"""distrec on a multi-node Ray cluster (tests/multinode.py: a head with no CPUs and two worker nodes,
token authentication on), and the faults a cluster has.

- The undisturbed run is submitted with ``distrec submit --wait`` and runs as a Ray job. Each model's
  two workers land on the two worker nodes, one on each (``train.placement_strategy=STRICT_SPREAD``).
  The workers report their node ids in training.json, as in Ray Train's own scheduling tests. The soft
  labels are scored on the worker nodes and consumed by the driver on the head. Submitting it again
  starts nothing.
- Each fault is a run of its own on the same cluster. Its report must be complete. No training row
  may be lost or trained twice, and no soft label may be lost or doubled: the rows are counted and
  their ids are compared with the log. Its metrics must match the undisturbed run's.

The faults in the student stage resume a copy of the undisturbed run's teacher stage (``distrec run
--resume`` of a partial run, as after a driver lost there), so they do not train the teachers again.
The driver killed during the student stage is tests/test_run_resume.py's test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from multinode import REPO, MultiNodeCluster

from distrec.config import load_config
from distrec.data.schema import ITEM, LABEL, USER, Manifest
from distrec.errors import ConfigError

EVERY = 5  # steps between mid-epoch checkpoints: 22 steps of 128 rows per rank and epoch
RUN = [
    "train.epochs=1",
    "train.batch_size=128",
    f"train.checkpoint_every={EVERY}",
    "train.max_failures=2",
    "train.placement_strategy=STRICT_SPREAD",
    "train.collective_timeout_s=60",
    "distill.bank_size=16",
    "distill.score_batch_size=8",  # small scoring calls: the stream lasts long enough to be cut in its middle
    "teachers=[{name: fm, arch: deepfm, dim: 8, hidden: [16]}]",
    "student.dim=8",
    "student.hidden=[16]",
]
MODELS = ("fm", "base", "student")
IDS = [USER, ITEM, LABEL]  # the soft labels carry the model inputs, not the timestamp
RUN_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def cluster() -> Iterator[MultiNodeCluster]:
    c = MultiNodeCluster()
    try:
        c.add_node("a")
        c.add_node("b")
        yield c
    finally:
        c.close()


def submit_command(cluster: MultiNodeCluster, root: Path, runs: Path, *flags: str) -> list[str]:
    args = ["jobs/local.yaml", f"data.path={root}", f"runs_dir={runs}", "run_id=ref", "ray.address=auto", *RUN]
    return [sys.executable, "-m", "distrec.cli", "submit", *args, "--address", cluster.dashboard, *flags]


@pytest.fixture(scope="module")
def reference(
    cluster: MultiNodeCluster, tiny_dataset: tuple[Path, Manifest], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The undisturbed run: ``distrec submit jobs/local.yaml ... --wait``, token from RAY_AUTH_TOKEN_PATH."""
    root, _ = tiny_dataset
    runs = tmp_path_factory.mktemp("runs")
    command = submit_command(cluster, root, runs, "--wait")
    done = subprocess.run(command, cwd=REPO, env=cluster.env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return runs / "ref"


def report_of(run: Path, manifest: Manifest) -> dict[str, Any]:
    """The run's report, checked complete: every model, split and metric; every model trained every row once."""
    assert not run.with_name(run.name + ".partial").exists()
    report = json.loads((run / "report.json").read_text())
    assert set(report["models"]) == set(MODELS)
    for name, model in report["models"].items():
        for split in ("test_id", "test_ood"):
            for metric in ("auc", "gauc", "logloss"):
                assert np.isfinite(model[split][metric]), (name, split, metric)
        assert set(model["groups"]) == {"q1", "q2", "q3", "q4", "q5"}
    for name in MODELS:  # one epoch: each row exactly once (Progress.rows, restored with every checkpoint)
        assert report["run"]["training"][name]["rows"] == manifest.rows["train"], name
    return report


def nodes_of(report: dict[str, Any], name: str) -> list[str]:
    return report["run"]["training"][name]["nodes"]


def assert_close(got: dict[str, Any], want: dict[str, Any], models: tuple[str, ...] = MODELS) -> None:
    """Within noise of the undisturbed run: test AUC within 0.03 (600 rows per test split: a standard
    error of about 0.02), logloss within 0.01. A resumed run is not bitwise the same: the random
    streams restart at the checkpoint."""
    for name in models:
        for split in ("test_id", "test_ood"):
            for metric, tolerance in (("auc", 0.03), ("logloss", 0.01)):
                g, w = got["models"][name][split][metric], want["models"][name][split][metric]
                assert g == pytest.approx(w, abs=tolerance), (name, split, metric)


def logged_ids(root: Path, manifest: Manifest) -> pa.Table:
    return pa.concat_tables(pq.read_table(f, columns=IDS) for f in manifest.files(root, "train"))


def soft_labels_of(run: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(f) for f in sorted((run / "soft_labels").glob("*.parquet")))


def partial_copy(run: Path, target: Path, models: tuple[str, ...], soft_labels: bool) -> Path:
    """A partial run of ``run``'s configuration holding only ``models`` (and the soft labels): what a
    driver lost after them leaves behind. ``distrec run --resume`` trains the rest."""
    target.mkdir(parents=True)
    for name in ("config.yaml", "history_bank.parquet"):
        shutil.copy2(run / name, target / name)
    for name in models:
        shutil.copytree(run / "models" / name, target / "models" / name)
    if soft_labels:
        shutil.copytree(run / "soft_labels", target / "soft_labels")
    return target


def registered(storage: Path, checkpoint: str) -> bool:
    """Whether Ray Train has registered ``checkpoint`` of the run at ``storage``: every rank reported it,
    so a restarted group resumes from it. (Its files are complete a little earlier, while the ranks
    still wait for each other; a rank lost then costs the checkpoint.)"""
    try:
        snapshot = json.loads((storage / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or being written
        return False
    return any(c["checkpoint_dir_name"] == checkpoint for c in snapshot["checkpoint_results"])


class Driver:
    """``distrec run ...`` as a process of its own, attached to the cluster's head (its log in a file)."""

    def __init__(self, cluster: MultiNodeCluster, args: list[str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "distrec.cli", "run", *args],
                cwd=REPO,
                env=cluster.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_for(self, condition: Callable[[], Any], what: str, every: float = 0.05) -> Any:
        """Poll ``condition`` until it returns something true while the run goes on; that value."""
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not (value := condition()):
            assert self.process.poll() is None, f"the driver ended before {what}:\n{self.tail()}"
            assert time.monotonic() < deadline, f"no {what} after {RUN_TIMEOUT_S} s:\n{self.tail()}"
            time.sleep(every)
        return value

    def actors(self, cluster: MultiNodeCluster, class_name: str, count: int) -> list[dict[str, Any]]:
        """Wait until exactly ``count`` actors of ``class_name`` are alive; them."""

        def found() -> list[dict[str, Any]]:
            running = [a for a in cluster.actors() if a["class_name"] == class_name and a["state"] == "ALIVE"]
            return running if len(running) == count else []

        return self.wait_for(found, f"{count} live {class_name}", every=0.25)  # a scorer may live a few seconds

    def finish(self, timeout: float = RUN_TIMEOUT_S) -> None:
        """Wait for the run to end successfully."""
        try:
            code = self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        assert code == 0, f"distrec run exited {code}:\n{self.tail()}"

    def tail(self) -> str:
        return self.log.read_text()[-6000:]


SCORER = "MapWorker(MapBatches(SoftLabeler))"


# ----------------------------------------------------------------------------- the undisturbed run


def test_cluster_keys_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"train\.placement_strategy must be one of \['PACK', 'SPREAD'"):
        load_config(None, ["train.placement_strategy=pack"])
    with pytest.raises(ConfigError, match=r"train\.collective_timeout_s must be > 0, got 0"):
        load_config(None, ["train.collective_timeout_s=0"])
    assert load_config(None, ["train.placement_strategy=STRICT_SPREAD"]).train.placement_strategy == "STRICT_SPREAD"


def test_submitted_run_spreads_every_model_over_the_worker_nodes(
    cluster: MultiNodeCluster, reference: Path, tiny_dataset: tuple[Path, Manifest]
) -> None:
    root, manifest = tiny_dataset
    report = report_of(reference, manifest)
    workers = set(cluster.nodes.values())
    for name in MODELS:  # STRICT_SPREAD: rank 0 and rank 1 on different worker nodes, none on the head
        assert len(nodes_of(report, name)) == 2 and set(nodes_of(report, name)) == workers, name

    actors = cluster.actors()
    job = next(j for j in cluster.get("/api/jobs/") if j["submission_id"].startswith("distrec-local-"))
    assert job["status"] == "SUCCEEDED" and job["driver_node_id"] == cluster.head
    # Ray Train's controllers sit on the driver's node (trainers.py pins the tasks that call fit())
    controllers = [a for a in actors if a["class_name"] == "TrainController"]
    assert len(controllers) == len(MODELS) and {a["node_id"] for a in controllers} == {cluster.head}
    # the soft-label stream crosses nodes: scored on a worker node, consumed by the driver on the head
    scorers = [a for a in actors if a["class_name"] == SCORER]
    assert scorers and {a["node_id"] for a in scorers} <= workers

    # every training row got exactly one soft label, in the log's row order
    soft = soft_labels_of(reference)
    assert soft.num_rows == manifest.rows["train"]
    assert soft.select(IDS).equals(logged_ids(root, manifest))
    values = soft.column("fd__fm").to_numpy()
    assert np.isfinite(values).all() and ((values > 0) & (values < 1)).all()


def test_submitting_the_same_run_again_starts_nothing(
    cluster: MultiNodeCluster, reference: Path, tiny_dataset: tuple[Path, Manifest]
) -> None:
    root, _ = tiny_dataset
    command = submit_command(cluster, root, reference.parent)
    done = subprocess.run(command, cwd=REPO, env=cluster.env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "already exists" in done.stderr and "SUCCEEDED" in done.stderr
    ids = [j["submission_id"] for j in cluster.get("/api/jobs/")]
    assert len([i for i in ids if i.startswith("distrec-local-")]) == 1
    assert sorted(p.name for p in reference.parent.iterdir()) == ["ref"]


# ----------------------------------------------------------------------------- faults


def test_student_worker_killed_mid_epoch_resumes_from_its_mid_epoch_checkpoint(
    cluster: MultiNodeCluster, reference: Path, tiny_dataset: tuple[Path, Manifest], tmp_path: Path
) -> None:
    _, manifest = tiny_dataset
    partial = partial_copy(reference, tmp_path / "kill.partial", ("fm", "base"), soft_labels=True)
    checkpoints = partial / "checkpoints" / "student"
    first = checkpoints / f"epoch000-step{EVERY:07d}"
    driver = Driver(cluster, ["--resume", str(partial)], tmp_path / "driver.log")
    workers = driver.actors(cluster, "RayTrainWorker", 2)  # the student's two ranks
    driver.wait_for(lambda: registered(checkpoints, first.name), "mid-epoch checkpoint of the student")
    os.kill(workers[-1]["pid"], signal.SIGKILL)
    killed_at = time.time()
    assert not (checkpoints / "epoch000-end").exists(), "the epoch ended before the kill"
    driver.finish()

    run = tmp_path / "kill"
    report = report_of(run, manifest)
    student = report["run"]["training"]["student"]
    assert "restore" in student["timers"]  # the restarted group loaded a checkpoint
    # ... a mid-epoch one: the first was not written again, and the rest of the epoch was trained after the kill
    checkpoints = run / "checkpoints" / "student"
    assert (checkpoints / first.name / "dcp" / ".metadata").stat().st_mtime < killed_at
    later = sorted(p for p in checkpoints.iterdir() if p.name.startswith("epoch") and p.name > first.name)
    assert later and later[-1].stat().st_mtime > killed_at  # the kill may land after a later checkpoint too
    assert set(nodes_of(report, "student")) == set(cluster.nodes.values())
    assert_close(report, json.loads((reference / "report.json").read_text()))


@pytest.mark.slow
def test_scorer_killed_mid_stream_is_restarted_and_every_row_gets_one_soft_label(
    cluster: MultiNodeCluster, reference: Path, tiny_dataset: tuple[Path, Manifest], tmp_path: Path
) -> None:
    root, manifest = tiny_dataset
    partial = partial_copy(reference, tmp_path / "scorer.partial", ("fm", "base"), soft_labels=False)
    driver = Driver(cluster, ["--resume", str(partial)], tmp_path / "driver.log")
    # Killed as soon as it is seen alive: it scores a whole read block per call and runs ahead of the
    # driver's writer, so by the time the first soft labels reach the disk it has often scored them all.
    (scorer,) = driver.actors(cluster, SCORER, 1)
    os.kill(scorer["pid"], signal.SIGKILL)
    assert not (partial / "soft_labels").exists(), "the stream ended before the kill"
    driver.finish()

    restarted = [a for a in cluster.actors() if a["actor_id"] == scorer["actor_id"]]
    assert int(restarted[0]["num_restarts"]) >= 1  # the same actor, restarted (max_restarts), not a new one
    run = tmp_path / "scorer"
    soft = soft_labels_of(run)
    assert soft.num_rows == manifest.rows["train"]
    assert soft.select(IDS).equals(logged_ids(root, manifest))  # none lost, none doubled, in row order
    assert soft.equals(soft_labels_of(reference))  # and the same values as the undisturbed stream's
    assert_close(report_of(run, manifest), json.loads((reference / "report.json").read_text()))


@pytest.mark.slow
def test_worker_node_lost_mid_teacher_training_restarts_the_groups_on_a_new_node(
    cluster: MultiNodeCluster, reference: Path, tiny_dataset: tuple[Path, Manifest], tmp_path: Path
) -> None:
    root, manifest = tiny_dataset
    runs = tmp_path / "runs"
    args = ["jobs/local.yaml", f"data.path={root}", f"runs_dir={runs}", "run_id=lost", f"ray.address={cluster.address}"]
    storage = runs / "lost.partial" / "checkpoints" / "fm"
    driver = Driver(cluster, [*args, *RUN], tmp_path / "driver.log")
    driver.wait_for(lambda: registered(storage, f"epoch000-step{EVERY:07d}"), "mid-epoch checkpoint of the teacher")
    lost = cluster.nodes["b"]
    cluster.remove_node("b")  # with one worker of every model in training on it
    assert not (runs / "lost.partial" / "models" / "fm" / "training.json").exists()
    cluster.add_node("c")  # STRICT_SPREAD needs a second node again
    driver.finish()

    report = report_of(runs / "lost", manifest)
    assert "restore" in report["run"]["training"]["fm"]["timers"]  # resumed from its checkpoint
    # a model that ran to its end where it started (no restore, the lost node among its nodes) had done its
    # work before the loss: a group that loses a worker mid-training ends only through a restart. Neither
    # its training.json (the driver writes it after the trainer returns: base once did, 1.4 s of training)
    # nor its last checkpoint's files (rank 0 writes the metadata once the others are done: base once did,
    # with its worker on the lost node already finished) need be on disk before the loss
    timers = report["run"]["training"]
    ended = {n for n in MODELS if "restore" not in timers[n]["timers"] and lost in nodes_of(report, n)}
    assert "fm" not in ended
    for name in set(MODELS) - ended:  # every group, restarted or started later, on the nodes that are left
        assert set(nodes_of(report, name)) == set(cluster.nodes.values()) and lost not in nodes_of(report, name)
    assert_close(report, json.loads((reference / "report.json").read_text()))


@pytest.mark.slow
def test_hung_student_worker_fails_the_group_after_the_collective_timeout(
    cluster: MultiNodeCluster, reference: Path, tiny_dataset: tuple[Path, Manifest], tmp_path: Path
) -> None:
    """A peer that stops answering (SIGSTOP: alive to Ray, silent to gloo) fails its group after
    ``train.collective_timeout_s`` (60 s here), long before Ray Train's 10-minute health check."""
    _, manifest = tiny_dataset
    partial = partial_copy(reference, tmp_path / "hung.partial", ("fm", "base"), soft_labels=True)
    storage = partial / "checkpoints" / "student"
    driver = Driver(cluster, ["--resume", str(partial)], tmp_path / "driver.log")
    worker = driver.actors(cluster, "RayTrainWorker", 2)[-1]
    driver.wait_for(lambda: registered(storage, f"epoch000-step{EVERY:07d}"), "mid-epoch checkpoint of the student")
    os.kill(worker["pid"], signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        driver.finish(timeout=400)
    finally:
        if Path(f"/proc/{worker['pid']}").exists():
            os.kill(worker["pid"], signal.SIGKILL)
    assert time.monotonic() - stopped_at < 400
    # gloo's own words, in the log of the rank that waited for its peer (the workers log on their nodes)
    logs = cluster.root.glob("ray/session_*/logs/worker-*.err")
    assert any("Timed out waiting 60000ms" in f.read_text(errors="replace") for f in logs)
    report = report_of(tmp_path / "hung", manifest)
    assert "restore" in report["run"]["training"]["student"]["timers"]
    assert_close(report, json.loads((reference / "report.json").read_text()))
