"""A multi-node Ray cluster on this machine, with token authentication, for the cluster tests.

``ray.cluster_utils.Cluster`` runs in a process of its own (this file as a script), driven over
stdin/stdout with one JSON line per command. That process, its nodes and every driver or client a
test starts get the cluster's token; the test process itself never connects, because Ray caches the
token process-wide and the session's embedded Ray (``ray_local``) may hold another one.

Each node is a raylet with its own resources and object store, as on separate machines, sharing
only the file system (the runs directory every node sees). The head advertises no CPUs, so no
training, scoring or Ray Data task lands there; drivers attach to it (Ray prefers the head when
several nodes share one address). The nodes' temp dir (``RAY_TMPDIR``) is private to the cluster,
so ``ray.init()`` elsewhere on the machine never finds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import requests

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
WORKER_CPUS = 4  # logical CPUs per worker node: 3 models x 1 worker each, plus a scorer or a read task
OBJECT_STORE = 200 * 1024**2


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class MultiNodeCluster:
    """A head (0 CPUs, dashboard and Jobs API on 127.0.0.1) plus worker nodes added by name."""

    def __init__(self, head_args: dict[str, Any] | None = None) -> None:
        self.token = secrets.token_hex(24)
        self.root = Path(tempfile.mkdtemp(prefix="drmn"))  # short: Ray's socket paths must stay < 108 bytes
        self.home = self.root / "home"  # no ~/.ray/auth_token of the user's
        self.home.mkdir()
        self.token_file = self.root / "token"
        self.token_file.write_text(self.token)
        self.token_file.chmod(0o600)
        self.nodes: dict[str, str] = {}  # name -> node id
        dashboard, agent, gcs = free_ports(3)
        self.address = f"127.0.0.1:{gcs}"
        self.dashboard = f"http://127.0.0.1:{dashboard}"
        args = dict(
            num_cpus=0,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=dashboard,
            dashboard_agent_listen_port=agent,
            gcs_server_port=gcs,
            node_ip_address="127.0.0.1",
            object_store_memory=OBJECT_STORE,
            **(head_args or {}),
        )
        self.log = self.root / "cluster.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(HERE), json.dumps(args)],
                env=self.env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
            )
        try:
            self.head = self._reply()["head"]
            self._wait_for_jobs_api()
        except BaseException:
            self.close()
            raise

    def env(self, token: bool = True) -> dict[str, str]:
        """The environment of a process on this cluster: a node, a driver, a client (``token=False``: none)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH_", "RAY_ADDRESS"))}
        env.update(
            HOME=str(self.home),
            RAY_TMPDIR=str(self.root),
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # every node on 127.0.0.1 (distrec.loopback)
            # Without it, Ray processes that look the cluster up (ray.util.state, e.g. Ray Train's
            # PlacementGroupCleaner) scan the machine's processes and pick the newest of its clusters.
            RAY_ADDRESS=self.address,
            # Every node's memory monitor sees the whole machine's memory (other test sessions included)
            # and would kill this cluster's workers for it; on real machines each node owns its memory.
            RAY_memory_monitor_refresh_ms="0",
        )
        if token:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_file))
        return env

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def add_node(self, name: str, num_cpus: int = WORKER_CPUS) -> str:
        """Start a worker node; returns its node id."""
        args = {"num_cpus": num_cpus, "node_ip_address": "127.0.0.1", "object_store_memory": OBJECT_STORE}
        self.nodes[name] = self._command({"op": "add", "name": name, "args": args})["node_id"]
        return self.nodes[name]

    def remove_node(self, name: str) -> None:
        """Kill every process of a worker node at once (SIGKILL, no drain): the node is lost."""
        self._command({"op": "remove", "name": name})
        del self.nodes[name]

    def get(self, path: str) -> Any:
        """GET a dashboard API path with the token; its JSON."""
        response = requests.get(f"{self.dashboard}{path}", headers=self.headers, timeout=30)
        response.raise_for_status()
        return response.json()

    def actors(self) -> list[dict[str, Any]]:
        """Every actor the cluster has had (Ray's state API), dead ones included."""
        return self.get("/api/v0/actors?limit=10000&detail=1")["data"]["result"]["result"]

    def close(self) -> None:
        """Shut the cluster down; then kill whatever of it is left (its processes name its temp dir)."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()  # type: ignore[union-attr]
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                p.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def processes(self) -> list[psutil.Process]:
        """The processes of this cluster still running (each names the cluster's temp dir)."""
        mine = []
        for p in psutil.process_iter(["cmdline"]):
            if any(str(self.root) in arg for arg in p.info["cmdline"] or []):
                mine.append(p)
        return mine

    def _wait_for_jobs_api(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.dashboard}/api/jobs/", headers=self.headers, timeout=5).status_code == 200:
                    return
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"the cluster's Jobs API did not come up:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)

    def _command(self, command: dict[str, Any]) -> dict[str, Any]:
        self.process.stdin.write(json.dumps(command) + "\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        return self._reply()

    def _reply(self) -> dict[str, Any]:
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"the cluster process ended:\n{self.log.read_text()[-3000:]}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"cluster command failed: {reply['error']}")
        return reply


def serve(head_args: dict[str, Any]) -> None:
    """The cluster process: start the head, then run commands from stdin until it closes."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    nodes: dict[str, Any] = {}

    def reply(message: dict[str, Any]) -> None:
        print(json.dumps(message), flush=True)

    reply({"head": cluster.head_node.node_id})
    try:
        for line in sys.stdin:
            command = json.loads(line)
            try:
                if command["op"] == "add":
                    nodes[command["name"]] = node = cluster.add_node(**command["args"])
                    cluster.wait_for_nodes()
                    reply({"node_id": node.node_id})
                elif command["op"] == "remove":
                    cluster.remove_node(nodes.pop(command["name"]), allow_graceful=False)
                    reply({"ok": True})
            except Exception as e:  # reported to the test, which raises it
                reply({"error": repr(e)})
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
