"""Submit ``distrec run CONFIG key=value ...`` to a remote Ray cluster through the Ray Jobs API.

The local repository is uploaded as the job's ``working_dir`` (Ray puts it first on the
job's PYTHONPATH, so the uploaded code wins over the copy installed in the image). The
default submission id is deterministic -- config stem, UTC date and a hash of the config
file and the overrides -- so submitting the same nightly twice reports the job that already
exists instead of starting a second one. A job "runs once to completion or failure"
(``JobSubmissionClient.submit_job``): to retry a failed nightly, pass a new ``submission_id``.

Token authentication (Ray >= 2.52, https://docs.ray.io/en/latest/ray-security/token-auth.html):
a cluster started with ``RAY_AUTH_MODE=token`` answers 401/403 to any request to the
dashboard without ``Authorization: Bearer <token>``
(``ray/_private/authentication/http_token_authentication.py``). Ray's own clients look for
the token in ``RAY_AUTH_TOKEN``, then in the file named by ``RAY_AUTH_TOKEN_PATH``, then in
``~/.ray/auth_token``; this module reads the same places (``token_env`` first) and sends the
header itself, so it works whether or not ``RAY_AUTH_MODE`` is set in the submitting shell.
The token never goes into the job's runtime_env or metadata: the dashboard shows both.

The client side needs ``ray[default]`` (the Jobs SDK and its log stream use aiohttp).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from distrec.errors import DistrecError

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

TOKEN_ENV = "RAY_AUTH_TOKEN"  # the variable Ray itself reads the token from
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_FILE = "~/.ray/auth_token"

# gitwildmatch patterns, relative to the working_dir. The leading "/" anchors a pattern to the
# root: "/data" drops the local data folder but keeps the package folder distrec/data/.
WORKING_DIR_EXCLUDES = [
    "/.venv",
    "/.git",
    "/runs",
    "/data",
    "/bench_out",
    "/.pytest_cache",
    "/.ruff_cache",
    "__pycache__",
    "*.egg-info",
]
_TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


class SubmitError(DistrecError):
    """The job could not be submitted, or (with ``wait``) it ended in another state than SUCCEEDED."""


def default_submission_id(config_path: Path, overrides: list[str], now: dt.datetime | None = None) -> str:
    """``distrec-<config stem>-<UTC yyyymmdd>-<hash of the config file and the overrides>``."""
    digest = hashlib.sha256(Path(config_path).read_bytes())
    for override in overrides:
        digest.update(b"\0" + override.encode())
    stem = re.sub(r"[^a-z0-9]+", "-", Path(config_path).stem.lower()).strip("-") or "config"
    day = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return f"distrec-{stem}-{day:%Y%m%d}-{digest.hexdigest()[:10]}"


def submit(
    config_path: Path,
    overrides: list[str],
    address: str,
    *,
    submission_id: str | None = None,
    working_dir: Path = Path("."),
    wait: bool = False,
    entrypoint_num_cpus: float = 0,
    token_env: str = TOKEN_ENV,
) -> str:
    """Submit ``distrec run CONFIG overrides...`` to the Ray job server at ``address``; return the submission id.

    ``config_path`` must lie inside ``working_dir``, the folder that is uploaded. With
    ``entrypoint_num_cpus=0`` Ray pins the driver to the head node (``JobManager._get_label_selector``),
    which suits a head that advertises no CPUs for tasks; a value > 0 lets it land on any node with
    a free CPU. With ``wait=True`` the job's log is streamed to stdout until it ends, and a job that
    does not succeed raises :class:`SubmitError` (the CLI turns that into a non-zero exit).
    """
    config_path, working_dir = Path(config_path), Path(working_dir)
    if not config_path.is_file():
        raise SubmitError(f"config file {config_path} not found")
    try:
        relative = config_path.resolve().relative_to(working_dir.resolve()).as_posix()
    except ValueError:
        raise SubmitError(
            f"config file {config_path} lies outside the working_dir {working_dir} that is uploaded to the cluster"
        ) from None
    submission_id = submission_id or default_submission_id(config_path, overrides)
    metadata = {
        "distrec_config": relative,
        "distrec_overrides": shlex.join(overrides),
        "distrec_config_sha256": hashlib.sha256(config_path.read_bytes()).hexdigest(),
    }
    return _submit_entrypoint(
        shlex.join(["distrec", "run", relative, *overrides]),
        address,
        submission_id=submission_id,
        working_dir=working_dir,
        wait=wait,
        entrypoint_num_cpus=entrypoint_num_cpus,
        metadata=metadata,
        token_env=token_env,
    )


def _submit_entrypoint(
    entrypoint: str,
    address: str,
    *,
    submission_id: str,
    working_dir: Path = Path("."),
    wait: bool = False,
    entrypoint_num_cpus: float = 0,
    metadata: dict[str, str] | None = None,
    token_env: str = TOKEN_ENV,
    timeout_s: float | None = None,
) -> str:
    """Submit any shell ``entrypoint`` (idempotently, by ``submission_id``); the code path behind :func:`submit`."""
    client = _connect(address, token_env)
    status = _status_or_none(client, submission_id)
    if status is None:
        excludes = [*WORKING_DIR_EXCLUDES, *_token_file_excludes(Path(working_dir), token_env)]
        runtime_env = {"working_dir": str(Path(working_dir).resolve()), "excludes": excludes}
        try:
            client.submit_job(
                entrypoint=entrypoint,
                submission_id=submission_id,
                runtime_env=runtime_env,
                metadata={"submitted_by": "distrec", **(metadata or {})},
                entrypoint_num_cpus=entrypoint_num_cpus,
            )
            _say(f"submitted job {submission_id} to {address}: {entrypoint}")
        except RuntimeError as e:  # another submitter may have won the race for this id
            if "already exists" not in str(e):
                raise SubmitError(f"submitting job {submission_id} to {address} failed: {e}") from e
            status = _status_or_none(client, submission_id)
    if status is not None:
        _say(f"job {submission_id} already exists on {address} with status {status}; not submitting it again")
    if not wait:
        return submission_id
    final = _follow(client, submission_id, timeout_s)
    if final != "SUCCEEDED":
        message = client.get_job_info(submission_id).message
        raise SubmitError(f"job {submission_id} ended {final}" + (f": {message}" if message else ""))
    return submission_id


def _connect(address: str, token_env: str) -> JobSubmissionClient:
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise SubmitError(
            f"the address must be the dashboard's http(s) URL, e.g. http://127.0.0.1:8265; got {address!r}"
        )
    token, source = _find_token(token_env)
    headers = {"Authorization": f"Bearer {token}"} if token else None

    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError:
        if token is None:
            raise SubmitError(
                f"the Ray cluster at {address} requires token authentication and no token was found: "
                f"set {token_env} to the cluster's token (or {TOKEN_PATH_ENV} to a file holding it); "
                "see cluster/README.md"
            ) from None
        raise SubmitError(f"the Ray cluster at {address} rejected the token from {source}") from None
    except (ConnectionError, RuntimeError) as e:  # unreachable, or the client lacks ray[default]
        raise SubmitError(f"cannot use the Ray job server at {address}: {e}") from e


def _find_token(token_env: str) -> tuple[str | None, str | None]:
    """The token and where it came from, searched in Ray's order with ``token_env`` first."""
    for name in dict.fromkeys([token_env, TOKEN_ENV]):
        if value := os.environ.get(name, "").strip():
            return value, f"${name}"
    for path in (os.environ.get(TOKEN_PATH_ENV), DEFAULT_TOKEN_FILE):
        if path and (file := Path(path).expanduser()).is_file() and (value := file.read_text().strip()):
            return value, str(file)
    return None, None


def _token_file_excludes(working_dir: Path, token_env: str) -> list[str]:
    """The token's file when it lies inside the working_dir (e.g. RAY_AUTH_TOKEN_PATH=./token): the
    upload would put it on the cluster, readable by every job; it is left out like .git."""
    _, source = _find_token(token_env)
    if source is None or source.startswith("$"):
        return []
    file, root = Path(source).resolve(), working_dir.resolve()
    return [f"/{file.relative_to(root).as_posix()}"] if file.is_relative_to(root) else []


def _status_or_none(client: JobSubmissionClient, submission_id: str) -> str | None:
    try:
        return str(client.get_job_status(submission_id))
    except RuntimeError as e:  # the SDK reports HTTP errors as "Request failed with status code N: ..."
        if "status code 404" in str(e):
            return None
        raise SubmitError(f"cannot read the status of job {submission_id}: {e}") from e


def _follow(client: JobSubmissionClient, submission_id: str, timeout_s: float | None) -> str:
    """Stream the job's log to stdout until the job ends; return its final status."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    async def tail() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        asyncio.run(asyncio.wait_for(tail(), timeout_s))
    except TimeoutError:
        raise SubmitError(f"job {submission_id} still running after {timeout_s} s") from None
    except RuntimeError as e:  # the log stream broke off: fall back to polling the status
        _say(f"log stream of job {submission_id} ended early ({e}); polling its status")
    # The stream closes when the job ends, but the recorded status may lag it by a moment.
    while (status := str(client.get_job_status(submission_id))) not in _TERMINAL:
        if deadline is not None and time.monotonic() > deadline:
            raise SubmitError(f"job {submission_id} still {status} after {timeout_s} s")
        time.sleep(1.0)
    return status


def _say(message: str) -> None:
    print(f"distrec submit: {message}", file=sys.stderr, flush=True)
