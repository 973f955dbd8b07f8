"""Joining Ray: an existing cluster when there is one, else a local instance bound to loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

# On Linux Ray "resolves" 127.0.0.1 to the machine's routable address (so raylet, object
# transfers and Ray Train's torch rendezvous would all use it) unless it runs in its
# local-only mode, the default on macOS and Windows. A local run must stay on loopback.
_LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _stay_on_loopback() -> None:
    os.environ[_LOCAL_ONLY] = "0"  # for the raylet and workers this driver starts
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # for this process, if Ray was imported before


def init_ray(num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Connect to RAY_ADDRESS (as under `ray job submit`), or start a local Ray on 127.0.0.1 with
    no dashboard. A no-op when Ray is already initialized. `num_cpus`, `num_gpus`: what the local
    Ray declares instead of what it detects (tests declare GPUs a CPU machine lacks).

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
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, _node_ip_address="127.0.0.1",
             include_dashboard=False, log_to_driver=False, configure_logging=False)
    address = ray.util.get_node_ip_address()
    if address != "127.0.0.1":
        ray.shutdown()
        raise RuntimeError(f"local Ray came up on {address}, not 127.0.0.1; refusing to run off loopback")


class GpuUnusableError(ValueError):
    """Ray gave a rank, actor or replica GPUs that torch cannot use where it runs."""


def assigned_device(requested_gpus: float = 0.0) -> str:
    """"cuda" when Ray gave this worker or actor a GPU, else "cpu", even where torch sees one (a
    process given no GPU stays off the GPUs Ray counts as others'). Given a GPU that torch cannot
    use, it refuses (GpuUnusableError) rather than run on the CPU.

    The accelerator follows the resources each rank or actor was given where it runs, never the
    machine that submitted the job (a laptop or login node without GPUs submits to GPU nodes).
    A process outside Ray (bench/train.py's in-process rank) goes by the GPUs it asks for. An
    actor's or replica's CUDA_VISIBLE_DEVICES holds only the GPUs Ray gave it, so "cuda" (cuda:0)
    is one of them; Ray Train's ranks on a node see each other's, and DeepSpeed takes
    cuda:LOCAL_RANK, the rank's own (Ray Train orders local ranks by GPU id)."""
    import ray
    import torch

    if ray.is_initialized():
        ids = ray.get_gpu_ids()
        given = f"Ray gave this process GPU(s) {', '.join(map(str, ids))}" if ids else ""
    else:
        given = f"this process asks for {requested_gpus:g} GPU(s)" if requested_gpus > 0 else ""
    if not given:
        return "cpu"
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CUDA None: a CPU-only build"
        raise GpuUnusableError(
            f"{socket.gethostname()}: {given}, but torch cannot use CUDA here: torch {torch.__version__} ({build}), "
            f"driver: {_driver()}. Install a torch built for a CUDA version the driver supports (a driver runs "
            f"CUDA up to its own version; https://pytorch.org/get-started/locally/) or update the driver, or ask for "
            f"no GPUs (gpus_per_worker, gpus_per_actor, --gpus-per-replica 0) to run on the CPU")
    return "cuda"


def _driver() -> str:
    """The NVIDIA driver's version as nvidia-smi reports it, else why torch (a CUDA build) found
    none it can use, in a few words."""
    import torch

    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=60)
            versions = sorted({line.strip() for line in out.stdout.splitlines() if line.strip()})
            if out.returncode == 0 and versions:
                return f"{', '.join(versions)} (nvidia-smi)"
        except (OSError, subprocess.TimeoutExpired):
            pass
    if torch.version.cuda:
        try:
            torch.cuda.init()
        except Exception as e:  # the reason torch gives: no driver, a driver too old, no device
            return f"torch reports {' '.join(str(e).split())[:300]}"
    return "no NVIDIA driver found"


def raise_gpu_refusal(text: str, error: BaseException) -> None:
    """The GpuUnusableError that `text` (a Ray error's, or a Serve deployment's status message)
    reports, raised here as itself from `error`, so that the user reads its message rather than a
    traceback: Ray passes a failed constructor's error on only as the text of its traceback
    (ActorDiedError, Serve's status), which ends with the refusal's one line."""
    _, found, message = text.rpartition(f"{GpuUnusableError.__name__}: ")
    if found:
        raise GpuUnusableError(message.splitlines()[0].strip()) from error
