"""Joining Ray: an existing cluster when there is one, else a local instance bound to loopback."""

from __future__ import annotations

import os

# On Linux Ray "resolves" 127.0.0.1 to the machine's routable address (so raylet, object
# transfers and Ray Train's torch rendezvous would all use it) unless it runs in its
# local-only mode, the default on macOS and Windows. A local run must stay on loopback.
_LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _stay_on_loopback() -> None:
    os.environ[_LOCAL_ONLY] = "0"  # for the raylet and workers this driver starts
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # for this process, if Ray was imported before


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to RAY_ADDRESS (as under `ray job submit`), or start a local Ray on 127.0.0.1 with
    no dashboard. A no-op when Ray is already initialized.

    Without RAY_ADDRESS, `ray.init()` would join the Ray that `ray start` last recorded in its
    temp directory (/tmp/ray/ray_current_cluster) when it still runs, whatever addresses that one
    listens on; address="local" always starts this run's own."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        return
    _stay_on_loopback()
    ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1", include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    address = ray.util.get_node_ip_address()
    if address != "127.0.0.1":
        ray.shutdown()
        raise RuntimeError(f"local Ray came up on {address}, not 127.0.0.1; refusing to run off loopback")


def assigned_device(requested_gpus: float = 0.0) -> str:
    """"cuda" when Ray gave this worker or actor a GPU and torch can use it, else "cpu".

    The accelerator follows the resources each rank or actor was given where it runs, never the
    machine that submitted the job (a laptop or login node without GPUs submits to GPU nodes).
    A process outside Ray (bench/train.py's in-process rank) goes by the GPUs it asks for."""
    import ray
    import torch

    given = bool(ray.get_gpu_ids()) if ray.is_initialized() else requested_gpus > 0
    return "cuda" if given and torch.cuda.is_available() else "cpu"
