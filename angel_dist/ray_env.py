"""Joining Ray: an existing cluster when there is one, else a local instance bound to loopback."""

from __future__ import annotations

import os


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to RAY_ADDRESS / a running cluster (as under `ray job submit`), or start a local
    Ray on 127.0.0.1 with no dashboard. A no-op when Ray is already initialized."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        return
    ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False,
             configure_logging=False)
