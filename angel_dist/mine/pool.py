"""The Ray edge of searching shard sets (mining, evaluation, annotation): a pool of actors,
each holding one linker.

Each actor loads the weights once and memory-maps the trie (the page cache holds one copy per
node); input shards are its tasks. An actor that dies is restarted by Ray and its unfinished
task runs again from the start of the shard; outputs are written atomically per shard, so a
redone shard replaces nothing and loses nothing.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from angel_dist.mine.work import GoldNames, MineSettings, mine_shard, predict_shard
from angel_dist.placement import here, record
from angel_dist.ray_env import init_ray, raise_gpu_refusal
from angel_dist.shards.reader import Shard


class ShardWorker:
    def __init__(self, linker: dict, settings: MineSettings, threads: int, fault: str | None = None,
                 fault_dir: str | None = None):
        import torch

        from angel_dist.decode.linker import Linker
        from angel_dist.ray_env import assigned_device

        torch.set_num_threads(max(1, threads))
        # The device this actor was given, decided here rather than where the pool was started; given
        # a GPU that torch cannot use, the actor refuses to start.
        self.linker = Linker(**{**linker, "device": assigned_device()})
        self.settings = settings
        self.gold_names = GoldNames(self.linker.trie.names()) if settings.gold_fallback else None
        self.fault = None
        if fault:
            shard, after = (int(x) for x in fault.split(":"))
            self.fault = (shard, after, Path(fault_dir) / f".fault-injected-{shard}-{after}")

    def ready(self) -> bool:
        return True

    def mine(self, index: int, shard: Shard, out: str, config_hash: str) -> dict:
        return self._placed(mine_shard(self.linker, shard, index, out, config_hash, self.settings, self.gold_names,
                                       self.fault))

    def predict(self, index: int, shard: Shard) -> dict:
        return self._placed(predict_shard(self.linker, shard, index, self.settings.search_chunk))

    @staticmethod
    def _placed(result: dict) -> dict:
        """The result with where it was computed: after a lost node, Ray restarts the actor elsewhere."""
        import ray

        return {**result, "actor": ray.get_runtime_context().get_actor_id(), **here()}

    def annotate(self, index: int, documents: list, parts: str, config_hash: str, k: int) -> dict:
        from angel_dist.annotate.work import annotate_shard  # annotate's package imports this pool's

        return self._placed(annotate_shard(self.linker, documents, index, parts, config_hash, k,
                                           self.settings.search_chunk, self.fault))


def run_pool(method: str, jobs: list[tuple], linker: dict, settings: MineSettings, actors: int,
             cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0, fault: str | None = None,
             fault_dir: str | None = None, total_inputs: int | None = None, progress: bool = True,
             desc: str = "search", unit: str = "mention", on_result=None, on_ready=None,
             placement: str = "PACK") -> dict[int, dict]:
    """Run `ShardWorker.<method>(*job)` for every job (its first element is the shard index) on
    `actors` actors; returns {index: result}. The bar starts once every actor holds its model
    (`on_ready` is called then) and counts each result's `inputs` (in `unit`s) out of `total_inputs`.
    `placement` SPREAD puts the actors on as many nodes as it can (Ray's SPREAD scheduling), PACK
    leaves it to Ray."""
    import ray
    from ray.util import ActorPool

    init_ray()
    if not jobs:
        return {}
    threads = max(1, int(cpus_per_actor))
    env = {"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    # An actor whose node is lost restarts on a node that has room and redoes its unfinished shard.
    worker = ray.remote(ShardWorker).options(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor, max_restarts=3,
                                             max_task_retries=3, runtime_env={"env_vars": env},
                                             scheduling_strategy="SPREAD" if placement == "SPREAD" else "DEFAULT")
    handles = [worker.remote(linker, settings, threads, fault, fault_dir) for _ in range(max(1, min(actors, len(jobs))))]
    try:
        ray.get([actor.ready.remote() for actor in handles])
    except ray.exceptions.RayActorError as e:  # an actor refused its GPU: its message, not Ray's traceback
        raise_gpu_refusal(str(e), e)
        raise
    if on_ready is not None:
        on_ready()
    pool = ActorPool(handles)
    results: dict[int, dict] = {}
    searched = 0
    try:
        with tqdm(total=total_inputs, desc=desc, unit=unit, disable=not progress) as bar:
            for result in pool.map_unordered(lambda actor, job: getattr(actor, method).remote(*job), jobs):
                results[result["index"]] = result
                bar.update(result["inputs"])
                if "searched" in result:
                    searched += result["searched"]
                    bar.set_postfix(searched=searched, refresh=False)
                if on_result is not None:
                    on_result(result)
    finally:
        for actor in handles:
            ray.kill(actor)
    if len(results) != len(jobs):
        raise RuntimeError(f"{len(jobs) - len(results)} shard(s) produced no result")
    placed: dict[tuple, list[int]] = {}
    for i in sorted(results):
        placed.setdefault(tuple(results[i][k] for k in ("actor", "node_id", "ip")), []).append(i)
    record("actors", method=method, actors=[{"actor": a, "node_id": n, "ip": ip, "shards": shards}
                                            for (a, n, ip), shards in placed.items()])
    return results
