"""Where work ran: the Ray node (id and IP address) of every training rank and search actor.

Ranks and actors report `here()`; the Ray edges (train/launch.py, mine/pool.py) `record` what
they ran into the log a caller opened with `recording()` (the pipeline opens one per stage and
keeps it in run.json). Without an open log, recording does nothing.
"""

from __future__ import annotations

import contextvars
import socket
from contextlib import contextmanager
from typing import Iterator

_log: contextvars.ContextVar[list | None] = contextvars.ContextVar("placement", default=None)


def here() -> dict:
    """This process's node: Ray's node id and the node's IP address (the host name outside Ray)."""
    import ray

    if not ray.is_initialized():
        return {"node_id": f"host:{socket.gethostname()}", "ip": None}
    return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address()}


@contextmanager
def recording() -> Iterator[list]:
    """Collect what `record` reports until the block ends: a list of {"kind", ...} entries."""
    entries: list = []
    token = _log.set(entries)
    try:
        yield entries
    finally:
        _log.reset(token)


def record(kind: str, **details) -> None:
    entries = _log.get()
    if entries is not None:
        entries.append({"kind": kind, **details})
