"""What every Ray worker process of an embedded session runs as it starts (``worker_process_setup_hook``).

A module of its own, importing nothing at the top: a tiny run starts about 40 worker processes, and the
hook's module is imported in each. From ``distrec.console`` (tqdm, the report module, matplotlib) it cost
each of them about 0.5 s, some 20 CPU-seconds of a run that a 2-core machine pays in wall time.
"""

from __future__ import annotations


def quiet_ray_worker() -> None:
    """Ray Train's PlacementGroupCleaner asks the State API every few seconds whether its controller lives;
    without a dashboard (distrec's embedded Ray has none) every ask fails with a warning, some 60 per model.
    Those warnings only, at the source."""
    import logging

    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
