"""distrec.orchestrate.submit against a real Ray head and its job server, with token auth on.

No mocks: the head is tests/multinode.py's cluster (``ray.cluster_utils.Cluster`` in a process of its
own, own temp dir and ports, dashboard bound to 127.0.0.1, RAY_AUTH_MODE=token), started once for the
module; tests/test_cluster.py submits the whole pipeline to the same kind of cluster with worker nodes.
The job server needs Ray's dashboard dependencies (`ray[default]`); where they are missing those tests
are skipped with the import error as the reason. The checks of ids, addresses and the uploaded
working_dir need no server.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from multinode import MultiNodeCluster

from distrec.cli import main
from distrec.orchestrate.submit import (
    WORKING_DIR_EXCLUDES,
    SubmitError,
    _submit_entrypoint,
    default_submission_id,
    submit,
)

REPO = Path(__file__).resolve().parents[1]
TOKEN_VAR = "DISTREC_TEST_RAY_TOKEN"  # a private name, so no other test's Ray sees this token
JOB_TIMEOUT_S = 45


def _job_server_unavailable() -> str | None:
    try:
        from ray._private.utils import get_dashboard_dependency_error

        error = get_dashboard_dependency_error()
    except ImportError as e:  # the helper moved: fall back to the package the dashboard cannot live without
        error = None if _has_module("aiohttp") else e
    if error is None:
        return None
    return f"Ray's job server cannot start here: its dashboard dependencies (ray[default]) are missing ({error!r})"


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _packaged_names(root: Path, tmp: Path) -> set[str]:
    """File names of the working_dir package exactly as the Jobs SDK builds it before uploading."""
    from ray._private.runtime_env.packaging import create_package

    target = tmp / "working_dir.zip"
    include_gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"  # as the SDK decides
    create_package(str(root), target, include_gitignore=include_gitignore, excludes=list(WORKING_DIR_EXCLUDES))
    with zipfile.ZipFile(target) as z:
        return {name for name in z.namelist() if not name.endswith("/")}


# ----------------------------------------------------------------------------- no server needed


def test_default_submission_id_is_deterministic_per_config_overrides_and_day(tmp_path):
    config = tmp_path / "Cluster Nightly.yaml"
    config.write_text("seed: 1\n")
    day = dt.datetime(2026, 11, 23, 1, 30, tzinfo=dt.UTC)
    first = default_submission_id(config, ["train.epochs=2"], day)
    assert re.fullmatch(r"distrec-cluster-nightly-20261123-[0-9a-f]{10}", first)
    assert default_submission_id(config, ["train.epochs=2"], day + dt.timedelta(hours=20)) == first
    assert default_submission_id(config, ["train.epochs=3"], day) != first
    assert default_submission_id(config, ["train.epochs=2"], day + dt.timedelta(days=1)) != first
    config.write_text("seed: 2\n")
    assert default_submission_id(config, ["train.epochs=2"], day) != first


@pytest.mark.parametrize("address", ["127.0.0.1:8265", "ray://head:10001", "http://", "auto"])
def test_address_must_be_the_dashboard_http_url(address):
    with pytest.raises(SubmitError, match=r"http\(s\) URL"):
        _submit_entrypoint("echo never", address, submission_id="never")


def test_config_must_lie_inside_the_uploaded_working_dir(tmp_path):
    (tmp_path / "repo").mkdir()
    config = tmp_path / "outside.yaml"
    config.write_text("seed: 1\n")
    with pytest.raises(SubmitError, match="outside the working_dir"):
        submit(config, [], "http://127.0.0.1:9", working_dir=tmp_path / "repo")
    with pytest.raises(SubmitError, match="not found"):
        submit(tmp_path / "missing.yaml", [], "http://127.0.0.1:9", working_dir=tmp_path)


def test_working_dir_excludes_are_anchored_at_its_root(tmp_path):
    root = tmp_path / "wd"
    for name in ["data/big.parquet", "runs/r1/ckpt.pt", ".venv/lib/x.py", ".git/HEAD", "pkg/__pycache__/m.pyc"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("excluded")
    for name in ["pkg/data/schema.py", "pkg/runs.py", "jobs/cluster.yaml"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("kept")
    assert _packaged_names(root, tmp_path) == {"pkg/data/schema.py", "pkg/runs.py", "jobs/cluster.yaml"}


def test_uploaded_repository_keeps_every_distrec_module(tmp_path):
    """What `distrec submit` uploads from this repository: all of distrec/, none of .venv or .git."""
    names = _packaged_names(REPO, tmp_path)
    expected = {
        p.relative_to(REPO).as_posix() for p in (REPO / "distrec").rglob("*.py") if "__pycache__" not in p.parts
    }
    missing = sorted(expected - names)
    assert not missing, (
        f"the job's working_dir would lack {missing}: Ray honours .gitignore, so an unanchored pattern there "
        "(e.g. 'data/' instead of '/data/') also drops package folders of the same name"
    )
    assert not [n for n in names if n.startswith((".venv/", ".git/", "runs/", "data/"))]


# ----------------------------------------------------------------------------- real job server


@pytest.fixture(scope="module")
def ray_head() -> Iterator[MultiNodeCluster]:
    reason = _job_server_unavailable()
    if reason:
        pytest.skip(reason)
    cluster = MultiNodeCluster()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def client(ray_head, monkeypatch):
    from ray.job_submission import JobSubmissionClient

    monkeypatch.setenv(TOKEN_VAR, ray_head.token)
    return JobSubmissionClient(ray_head.dashboard, headers=ray_head.headers)


def _count(client, submission_id: str) -> int:
    return sum(job.submission_id == submission_id for job in client.list_jobs())


def test_job_succeeds_streams_its_log_and_is_submitted_once(ray_head, client, tmp_path, capsys):
    from ray.job_submission import JobStatus

    address = ray_head.dashboard
    (tmp_path / "note.txt").write_text("uploaded-file-ok\n")
    sid = "distrec-test-hello"
    kwargs = dict(submission_id=sid, working_dir=tmp_path, wait=True, token_env=TOKEN_VAR, timeout_s=JOB_TIMEOUT_S)

    assert _submit_entrypoint("echo distrec-job-ok && cat note.txt", address, **kwargs) == sid
    out = capsys.readouterr()
    assert "distrec-job-ok" in out.out and "uploaded-file-ok" in out.out
    assert client.get_job_status(sid) == JobStatus.SUCCEEDED
    assert "distrec-job-ok" in client.get_job_logs(sid)

    # The same id again, even with another command: the existing job is reported, nothing new runs.
    assert _submit_entrypoint("echo second-run", address, **kwargs) == sid
    assert "already exists" in capsys.readouterr().err
    assert _count(client, sid) == 1
    assert "second-run" not in client.get_job_logs(sid)


def test_failed_job_raises_with_its_status(ray_head, client, tmp_path):
    address = ray_head.dashboard
    with pytest.raises(SubmitError, match="FAILED"):
        _submit_entrypoint(
            "echo about-to-fail; exit 3",
            address,
            submission_id="distrec-test-fails",
            working_dir=tmp_path,
            wait=True,
            token_env=TOKEN_VAR,
            timeout_s=JOB_TIMEOUT_S,
        )
    assert "about-to-fail" in client.get_job_logs("distrec-test-fails")


def test_submit_runs_distrec_on_the_config_relative_to_the_working_dir(ray_head, client, tmp_path):
    address = ray_head.dashboard
    (tmp_path / "jobs").mkdir()
    config = tmp_path / "jobs" / "nightly.yaml"
    config.write_text("seed: 1\n")
    overrides = ["train.epochs=1", "note=two words"]

    sid = submit(config, overrides, address, working_dir=tmp_path, token_env=TOKEN_VAR)
    try:
        assert sid == default_submission_id(config, overrides)
        info = client.get_job_info(sid)
        assert info.entrypoint == "distrec run jobs/nightly.yaml train.epochs=1 'note=two words'"
        assert info.metadata["distrec_config"] == "jobs/nightly.yaml"
        assert "Bearer" not in str(info.runtime_env) and "Bearer" not in str(info.metadata)
        assert submit(config, overrides, address, working_dir=tmp_path, token_env=TOKEN_VAR) == sid
        assert _count(client, sid) == 1
    finally:
        client.stop_job(sid)  # the pipeline itself is not what this test is about


def test_missing_or_wrong_token_is_a_clear_error(ray_head, tmp_path, monkeypatch):
    address, token = ray_head.dashboard, ray_head.token
    for name in (TOKEN_VAR, "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token either
    with pytest.raises(SubmitError, match=f"requires token authentication.*{TOKEN_VAR}"):
        _submit_entrypoint("echo never", address, submission_id="never", token_env=TOKEN_VAR)
    monkeypatch.setenv(TOKEN_VAR, token[::-1])
    with pytest.raises(SubmitError, match=f"rejected the token from \\${TOKEN_VAR}"):
        _submit_entrypoint("echo never", address, submission_id="never", token_env=TOKEN_VAR)


def test_command_line_refuses_a_submission_without_the_right_token(ray_head, client, tmp_path, monkeypatch, capsys):
    """`distrec submit` exits non-zero with the reason on stderr, and nothing reaches the cluster."""
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token either
    args = ["submit", "jobs/local.yaml", "--address", ray_head.dashboard, "--wait"]
    assert main(args) == SubmitError.exit_code
    assert "requires token authentication and no token was found: set RAY_AUTH_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-" + ray_head.token)
    assert main(args) == SubmitError.exit_code
    assert "rejected the token from $RAY_AUTH_TOKEN" in capsys.readouterr().err
    assert _count(client, default_submission_id(REPO / "jobs" / "local.yaml", [])) == 0
