"""Keep an embedded local Ray on the loopback interface.

Ray binds its servers (GCS, raylet, workers) to the node IP, which it resolves to a reachable
address unless Ray believes it is a single-machine install (Ray's own setting for macOS/Windows,
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``). Ray reads that setting when it is first imported, so
this must run before ``import ray``; local-mode entry points call it, cluster mode never does.
"""

from __future__ import annotations

import os
import sys

_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def bind_local_ray_to_loopback() -> None:
    if os.environ.get(_ENV) == "0":
        return
    if "ray" in sys.modules:
        raise RuntimeError("bind_local_ray_to_loopback() must run before ray is imported")
    os.environ.setdefault(_ENV, "0")
