"""Security, checked: a local run listens on loopback only; ``distrec submit`` keeps the cluster token out
of the job (runtime_env, metadata, entrypoint, logs and the uploaded working_dir); model files load with
``weights_only=True``, so a pickled payload is refused without being run.

The job-server checks reuse tests/test_submit.py's throwaway token-auth Ray head (its ``ray_head`` and
``client`` fixtures); that module covers idempotency, failures and a missing or wrong token.
"""

from __future__ import annotations

import ast
import ipaddress
import json
from pathlib import Path

import psutil
import pytest
import ray
import torch
from test_submit import JOB_TIMEOUT_S, TOKEN_VAR, client, ray_head  # noqa: F401  (fixtures)

from distrec.errors import CheckpointError
from distrec.orchestrate.submit import TOKEN_PATH_ENV, _submit_entrypoint
from distrec.train.export import read_export

REPO = Path(__file__).resolve().parents[1]


def _session_processes() -> list[psutil.Process]:
    """This embedded session's processes (GCS, raylet, workers, ...): their command lines name its
    session directory or they descend from this driver."""
    session = Path(ray._private.worker._global_node.get_session_dir_path()).name
    me = psutil.Process()
    found = {p.pid: p for p in me.children(recursive=True)}
    for p in psutil.process_iter(["cmdline"]):
        if any(session in part for part in p.info["cmdline"] or []):
            found[p.pid] = p
    return [me, *found.values()]


def _loopback(ip: str) -> bool:
    """127.0.0.0/8 and ::1, also as an IPv4-mapped IPv6 address (gRPC listens on ``::ffff:127.0.0.1``)."""
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def test_a_local_session_listens_on_loopback_only(ray_local: None) -> None:
    @ray.remote(num_cpus=0)
    def ping() -> str:
        return "pong"

    assert ray.get([ping.remote() for _ in range(4)]) == ["pong"] * 4  # workers are up
    listening: list[tuple[str, str, int]] = []
    for process in _session_processes():
        try:
            connections = process.net_connections(kind="inet")
            name = process.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        listening += [(name, c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN]
    names = {name for name, _, _ in listening}
    assert any("gcs" in n for n in names) and any("raylet" in n for n in names), listening
    exposed = [entry for entry in listening if not _loopback(entry[1])]
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_submit_keeps_the_token_out_of_the_job(ray_head, client, tmp_path, monkeypatch, capsys) -> None:  # noqa: F811
    address, token = ray_head.dashboard, ray_head.token
    monkeypatch.delenv(TOKEN_VAR, raising=False)
    token_file = tmp_path / "secrets" / "ray_token"  # kept beside the code, as people do
    token_file.parent.mkdir()
    token_file.write_text(token + "\n")
    monkeypatch.setenv(TOKEN_PATH_ENV, str(token_file))
    (tmp_path / "note.txt").write_text("uploaded-file-ok\n")
    sid = "distrec-test-no-token"
    # the job lists what was uploaded and the names (not values) of its environment
    entrypoint = "find . -type f | sort && python -c 'import os; print(sorted(os.environ))'"
    kwargs = dict(submission_id=sid, working_dir=tmp_path, wait=True, token_env=TOKEN_VAR, timeout_s=JOB_TIMEOUT_S)
    assert _submit_entrypoint(entrypoint, address, metadata={"distrec_config": "x.yaml"}, **kwargs) == sid
    printed = capsys.readouterr()
    info = client.get_job_info(sid)
    logs = client.get_job_logs(sid)
    assert "./note.txt" in logs and "ray_token" not in logs, logs  # the token's file was not uploaded
    seen = {
        "runtime_env": json.dumps(info.runtime_env),
        "metadata": json.dumps(info.metadata),
        "entrypoint": info.entrypoint,
        "logs": logs,
        "submit's output": printed.out + printed.err,
    }
    for where, text in seen.items():
        assert token not in text, f"the token reached the job's {where}"
        assert "Bearer" not in text, where


class Payload:
    """Unpickling this creates ``marker``: proof that a pickle's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def test_a_pickled_payload_in_an_export_is_refused_unrun(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.json").write_text(json.dumps({"name": "m", "arch": "mlp", "dim": 4, "hidden": [], "manifest": {}}))
    marker = tmp_path / "payload-ran"
    torch.save({"w": torch.zeros(2), "x": Payload(marker)}, export / "weights.pt")
    for mmap in (False, True):
        with pytest.raises(CheckpointError, match="holds pickled objects, not only tensors; refused"):
            read_export(export, mmap=mmap)
    assert not marker.exists()


def test_every_torch_load_in_distrec_is_weights_only() -> None:
    """A static check over the package: no ``torch.load`` without ``weights_only=True``."""
    calls = []
    for path in sorted((REPO / "distrec").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                safe = any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords
                )
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", safe))
    assert calls, "no torch.load found: the check looks in the wrong place"
    assert all(safe for _, safe in calls), [where for where, safe in calls if not safe]
