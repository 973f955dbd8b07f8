"""The training ranks' process group, its rendezvous listening only on rank 0's node address
(127.0.0.1 under a local Ray).

Ray Train's torch backend has rank 0 start torch's TCPStore through `env://`, and TCPStore binds
every interface (`[::]:PORT`) whatever MASTER_ADDR says; neither Ray's TorchConfig nor torch's
env:// has a setting for the address. So rank 0 first binds a socket to its node's address and
serves the store on it (TCPStore's `master_listen_fd`); the store that env:// then creates in that
process shares the server (`multi_tenant`), and the process group comes up as Ray's backend brings
it up otherwise. On a loopback node gloo's and NCCL's own sockets are pinned to the loopback
interface too: they bind the address the host name resolves to otherwise.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass

from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend

_SERVERS: list = []  # rank 0's listening socket and store server, alive as long as its process


def _serve_store(world_size: int) -> tuple[str, int]:
    """On rank 0: a TCPStore server listening on this node's address only; (address, port)."""
    import ray
    import torch.distributed as dist

    address = ray.util.get_node_ip_address()
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((address, 0))
    sock.listen()
    port = sock.getsockname()[1]
    store = dist.TCPStore(address, port, world_size, is_master=True, wait_for_workers=False, multi_tenant=True,
                          master_listen_fd=sock.fileno())
    _SERVERS.append((sock, store))
    return address, port


def loopback_interface() -> str:
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and ipaddress.ip_address(a.address).is_loopback for a in addresses):
            return name
    raise RuntimeError("no network interface holds a loopback address")


def _rendezvous_env(address: str, port: int) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = address, str(port)
    if ipaddress.ip_address(address).is_loopback:
        os.environ["GLOO_SOCKET_IFNAME"] = os.environ["NCCL_SOCKET_IFNAME"] = loopback_interface()


class _BoundRendezvousBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: "BoundRendezvousConfig") -> None:
        from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup

        import ray

        from angel_dist.ray_env import assigned_device

        # A rank given a GPU that torch cannot use refuses here, before NCCL fails on it with less to say.
        worker_group.execute(assigned_device)
        address, port = worker_group.execute_single(0, _serve_store, len(worker_group))
        worker_group.execute(_rendezvous_env, address=address, port=port)
        if not isinstance(worker_group, V1WorkerGroup):  # as Ray's backend does: v1 sets them later
            worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(i, _setup_torch_process_group, backend=backend_config.backend,
                                                   world_rank=i, world_size=len(worker_group), init_method="env://",
                                                   timeout_s=backend_config.timeout_s)
                 for i in range(len(worker_group))])


@dataclass
class BoundRendezvousConfig(TorchConfig):
    """Ray Train's TorchConfig (backend required: gloo or nccl), with the rendezvous above."""

    @property
    def backend_cls(self):
        return _BoundRendezvousBackend
