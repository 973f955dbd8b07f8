"""The Ray edge of shard writing: one task per pending shard, bounded concurrency, progress."""

from __future__ import annotations

import resource
from typing import Callable

from tqdm import tqdm

from angel_dist.ray_env import init_ray

# Each task is one CPU; its tokenizer must not fan out over the node's cores.
_TASK_ENV = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1"}


def _in_task(fn: Callable, index: int, own: tuple, *common) -> tuple[dict, dict]:
    import os

    record = fn(index, *common, *own)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return record, {"pid": os.getpid(), "peak_rss_mb": peak_kb / 1024}


def run_shard_tasks(fn: Callable, pending: list[int], common: tuple, own: dict[int, tuple] | None = None,
                    workers: int | None = None, progress: bool = True, desc: str = "shards") -> dict:
    """Run `fn(index, *common, *own[index])` as a Ray task for each pending shard index.

    `common` goes into the object store once (large arguments such as the KB table are shared
    by the tasks of a node, not copied per task); at most `workers` tasks run at a time (default:
    every CPU of the cluster). A task that dies is retried; shard writes are atomic, so a retry
    just writes the shard again. Returns {"records": {index: record}, "workers": {pid: peak RSS}}.
    """
    import ray

    init_ray(num_cpus=workers)
    if not pending:
        return {"records": {}, "workers": {}}
    remote = ray.remote(num_cpus=1, max_retries=3, runtime_env={"env_vars": _TASK_ENV})(_in_task)
    common_refs = tuple(ray.put(arg) for arg in common)
    fn_ref = ray.put(fn)
    limit = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    queue = list(pending)
    running: dict = {}
    records, peaks = {}, {}
    with tqdm(total=len(pending), desc=desc, unit="shard", disable=not progress) as bar:
        while queue or running:
            while queue and len(running) < limit:
                index = queue.pop(0)
                # Object refs resolve only as top-level arguments, hence *common_refs.
                running[remote.remote(fn_ref, index, (own or {}).get(index, ()), *common_refs)] = index
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                index = running.pop(ref)
                record, info = ray.get(ref)
                records[index] = record
                peaks[info["pid"]] = max(peaks.get(info["pid"], 0.0), info["peak_rss_mb"])
                bar.update(1)
                bar.set_postfix(samples=sum(r["count"] for r in records.values()))
    return {"records": records, "workers": peaks}
