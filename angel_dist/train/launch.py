"""The Ray edge of training: a TorchTrainer whose workers are the DeepSpeed ranks.

Each (re)start takes as many ranks as the live nodes can host, between the run's MIN and MAX
workers; a failed rank or a lost node ends that start, and the next resumes from the last
checkpoint (on another world size through DeepSpeed's universal checkpoint where ZeRO-2 or 3
saved it), up to
`max_failures` times. When the live nodes cannot host MIN workers, it waits for capacity,
saying so, for at most `capacity_timeout` seconds.

Why not Ray Train's own elasticity (ScalingConfig(num_workers=(MIN, MAX)), Ray 2.60): after a
node is lost its view of the cluster lags, so it first restarts at the old size and waits out
its worker-group start timeout (60 s) before trying fewer; below MIN it waits without a word
to the driver and without a limit; and it grows a running group by restarting it from the last
checkpoint, redoing the steps since. Deciding the size here, from the nodes Ray reports alive
at each start, avoids all three.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from angel_dist.atomic import write_json
from angel_dist.errors import read_json
from angel_dist.model.vocab import check_pair, located, tokenizer_of
from angel_dist.ray_env import init_ray, raise_gpu_refusal
from angel_dist.resources import find_resource
from angel_dist.shards.verify import verified_shard_sets
from angel_dist.train.config import TrainConfig

_POLL_S = 2.0  # how often a wait for capacity looks at the cluster again


def resolved(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with absolute paths, as ranks on any node and working directory need them (a local
    model or tokenizer directory included; a preset or cached name stays a name); `ds_configs/...`
    found in the checkout or the install as the pipeline finds it; the tokenizer a checkpoint
    brings when none is given (a preset needs one)."""
    tokenizer = tokenizer_of(cfg.model, cfg.tokenizer)
    if tokenizer is None:
        raise ValueError(f"model {cfg.model} is a preset, built with the tokenizer it is given: give one "
                         f"(--tokenizer DIR)")
    return TrainConfig.from_dict({
        **cfg.to_dict(), "out": str(Path(cfg.out).resolve()), "data": [str(Path(d).resolve()) for d in cfg.data],
        "ds_config": str(find_resource(cfg.ds_config).resolve()), "model": located(cfg.model),
        "tokenizer": located(tokenizer)})


def worker_resources(cfg: TrainConfig) -> dict[str, float]:
    return {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker > 0 else {}),
            **cfg.worker_resources}


def hostable_workers(need: dict[str, float], placement: str, nodes: list[dict]) -> int:
    """How many workers needing `need` each the live `nodes` (ray.nodes() records) hold in all,
    counting their whole resources: what others hold now is Ray's to wait for, a node that is
    gone is ours to work around."""
    per_node = [min(math.floor(node["Resources"].get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0)
                for node in nodes if node.get("Alive")]
    per_node = [n for n in per_node if n > 0]
    if not per_node:
        return 0
    if placement == "STRICT_SPREAD":
        return len(per_node)
    if placement == "STRICT_PACK":
        return max(per_node)
    return sum(per_node)


def wait_for_capacity(cfg: TrainConfig, label: str, since: float) -> int:
    """The number of workers a start takes: as many as the live nodes hold, at most MAX. While
    they hold fewer than MIN it waits, saying so, until `capacity_timeout` seconds after `since`."""
    import ray

    need = worker_resources(cfg)
    told = False
    while True:
        n = hostable_workers(need, cfg.placement, ray.nodes())
        if n >= cfg.min_workers:
            if told:
                print(f"[angel] {label}: the cluster holds {min(n, cfg.max_workers)} worker(s) again; starting",
                      flush=True)
            return min(n, cfg.max_workers)
        _check_timeout(cfg, label, since, f"the live Ray nodes hold {n} of the {cfg.min_workers} worker(s) of {need} "
                                          f"it needs (placement {cfg.placement})")
        if not told:
            print(f"[angel] {label}: the live Ray nodes hold {n} of the {cfg.min_workers} worker(s) of {need} it "
                  f"needs; waiting up to {cfg.capacity_timeout:.0f} s for capacity", flush=True)
            told = True
        time.sleep(_POLL_S)


def _check_timeout(cfg: TrainConfig, label: str, since: float, why: str) -> None:
    waited = time.monotonic() - since
    if waited >= cfg.capacity_timeout:
        raise TimeoutError(f"{label}: {why}, still after {waited:.0f} s (capacity_timeout); add nodes, or let it "
                           f"run on fewer with workers: [MIN, MAX]")


def run_training(cfg: TrainConfig) -> Path:
    """Train (or resume) the run in `cfg.out` on the Ray cluster of RAY_ADDRESS, or a local one."""
    from ray.train import ControllerError, FailureConfig, RunConfig, ScalingConfig, WorkerGroupError
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.exceptions import WorkerGroupStartupFailedError, WorkerGroupStartupTimeoutError

    from angel_dist import placement
    from angel_dist.train.loop import FAULT_ENV, KEYS_ENV, PLACEMENT_FILE, train_worker
    from angel_dist.train.progress import ProgressTail
    from angel_dist.train.rendezvous import BoundRendezvousConfig

    cfg = resolved(cfg)
    check_pair(cfg.model, cfg.tokenizer)  # before any rank starts, and before the run directory is made
    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    write_json(run / "train_config.json", cfg.to_dict())
    init_ray()
    verified_shard_sets(cfg.data, progress=cfg.progress)  # once here, not by every rank as it opens them
    label = f"train {run.name}"
    gpu, need = cfg.gpus_per_worker > 0, worker_resources(cfg)
    # Switches for tests, read here where the user set them, not in workers a running Ray started.
    loop_config = {"config": json.loads(json.dumps(cfg.to_dict())), "fault": os.environ.get(FAULT_ENV),
                   "keys_log": os.environ.get(KEYS_ENV)}
    failures, waiting_since = 0, time.monotonic()
    with ProgressTail(run, label, cfg.progress_every, enabled=cfg.progress):
        while True:
            workers = wait_for_capacity(cfg, label, waiting_since)
            trainer = TorchTrainer(
                train_worker, train_loop_config=loop_config,
                scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu, resources_per_worker=need,
                                             placement_strategy=cfg.placement),
                torch_config=BoundRendezvousConfig(backend="nccl" if gpu else "gloo"),
                # Restarts are this loop's, each sized afresh; a group that does not start within Ray
                # Train's start timeout (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S) comes back here too.
                run_config=RunConfig(name="ray", storage_path=str(run),
                                     failure_config=FailureConfig(max_failures=0, controller_failure_limit=0)))
            try:
                trainer.fit()
                break
            except ControllerError as e:
                raise_gpu_refusal(str(e), e)
                if not isinstance(e.controller_failure, (WorkerGroupStartupFailedError,
                                                         WorkerGroupStartupTimeoutError)):
                    raise
                _check_timeout(cfg, label, waiting_since, f"{workers} worker(s) of {need} did not start")
                print(f"[angel] {label}: the workers did not start ({_first_line(e.controller_failure)}); sizing "
                      f"the group again", flush=True)
            except WorkerGroupError as e:
                _raise_bad_input(e)  # a refused checkpoint file is refused again on a restart
                raise_gpu_refusal(str(e), e)
                failures += 1
                if failures > cfg.max_failures >= 0:
                    raise
                limit = "no limit" if cfg.max_failures < 0 else f"at most {cfg.max_failures}"
                print(f"[angel] {label}: a rank failed or its node was lost ({_first_line(e)}); restarting from "
                      f"the last checkpoint (restart {failures}, {limit})", flush=True)
                waiting_since = time.monotonic()
    placement.record("train", run=str(run), starts=read_json(run / PLACEMENT_FILE, "the ranks' placement"))
    return run


def _raise_bad_input(error: Exception) -> None:
    """A rank's BadInputError (a checkpoint file refused) as itself, not inside Ray Train's error."""
    from angel_dist.errors import BadInputError

    for failure in getattr(error, "worker_failures", {}).values():
        if isinstance(failure, BadInputError):
            raise failure from error


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(error).__name__
