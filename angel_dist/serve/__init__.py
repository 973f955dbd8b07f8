"""`angel serve`: a bundle as an HTTP service on Ray Serve (`app.py`), on loopback unless told
otherwise; local Ray through `init_ray` (127.0.0.1), or the cluster of RAY_ADDRESS."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

APP_NAME = "angel-link"


@dataclass
class ServeConfig:
    bundle: str
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    beams: int = 10
    max_batch_size: int = 32  # requests per search; 1: one request at a time
    batch_wait_ms: float = 5.0  # how long a batch waits to fill
    cpus_per_replica: float = 1.0
    # Ray's num_gpus: a replica runs on the GPU Ray gives it, or on the CPU with 0. A linker uses one
    # device, so at most 1; a fraction lets replicas share a GPU (they do not talk to each other).
    gpus_per_replica: float = 0.0

    def __post_init__(self):
        if self.replicas < 1 or self.max_batch_size < 1 or self.beams < 1:
            raise ValueError("replicas, max_batch_size and beams must be >= 1")
        if not 0 <= self.gpus_per_replica <= 1:
            raise ValueError(f"gpus_per_replica must be from 0 to 1 (a replica's linker uses one device), got "
                             f"{self.gpus_per_replica:g}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")


def start_service(cfg: ServeConfig) -> str:
    """Deploy the service (replacing a running one of the same name); returns its URL."""
    from ray import serve

    from angel_dist.bundle import read_bundle
    from angel_dist.ray_env import init_ray, raise_gpu_refusal
    from angel_dist.serve.app import LinkService

    bundle = str(Path(cfg.bundle).resolve())
    read_bundle(bundle)  # a damaged bundle fails here, with its name, not in every replica
    init_ray()
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    app = LinkService.options(**deployment_options(cfg)).bind(bundle, cfg.beams, cfg.max_batch_size,
                                                             cfg.batch_wait_ms / 1000, _threads(cfg))
    try:
        serve.run(app, name=APP_NAME, route_prefix="/")
    except RuntimeError as e:  # Serve's own message only says the deployment failed; its status says why
        status = serve.status().applications.get(APP_NAME)
        for deployment in status.deployments.values() if status else ():
            raise_gpu_refusal(deployment.message, e)
        raise
    return f"http://[{cfg.host}]:{cfg.port}" if ":" in cfg.host else f"http://{cfg.host}:{cfg.port}"


def _threads(cfg: ServeConfig) -> int:
    return max(1, int(cfg.cpus_per_replica))


def deployment_options(cfg: ServeConfig) -> dict:
    """LinkService's Serve options: its replicas and the Ray resources of each."""
    return {"num_replicas": cfg.replicas, "max_ongoing_requests": max(64, 2 * cfg.max_batch_size),
            "ray_actor_options": {"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica,
                                  "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(_threads(cfg)),
                                                               "TOKENIZERS_PARALLELISM": "false"}}}}


def stop_service() -> None:
    from ray import serve

    serve.shutdown()
