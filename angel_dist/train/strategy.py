"""The one owner of DeepSpeed: engine set-up, backward, step, sharded save and load.

The training loop calls only this object, so a plain-PyTorch or FSDP strategy could stand
in without touching the loop.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from angel_dist.train.grad_reduce import FlatGradients, clip_gradients
from angel_dist.train.partitioned_adamw import PartitionedAdamW, collectives_from_all_reduce


# DeepSpeed's shared-memory segment of a rank (deepspeed/ops/csrc/cpu/comm/shm.cpp names it so).
_SHM_SEGMENT = "/dev/shm/deepspeed_allreduce_buffer_{uid}_{addr}_{port}_{rank}"


def init_distributed(on_gpu: bool, node_local: bool) -> bool:
    """DeepSpeed's communication over the process group Ray Train set up (NCCL on GPUs, gloo on CPU).

    On CPU, when two or more ranks all run on this node (`node_local`, decided by Ray node id;
    ranks on several nodes stay on gloo), DeepSpeed's shared-memory all-reduce comes up with it
    (its op reads LOCAL_SIZE): it sums the 40 MB of gradients of the bench's `small` model over
    two ranks in about half the time gloo over TCP loopback takes (medians ~20 ms against ~40 ms
    on a 2-core machine). The op never removes its segments from /dev/shm (66 MB a rank); once
    every rank has mapped all of them (the barrier), each rank unlinks its own, so they go with
    the processes, also when a rank crashes later. Its waits have no timeout: a rank that dies
    leaves its peers waiting until Ray Train tears the worker group down, as it does on a failure.
    Returns whether the shared-memory all-reduce came up."""
    import deepspeed
    import torch.distributed as dist

    world = os.environ.get("WORLD_SIZE", "1")
    if not on_gpu and world != "1" and node_local:
        os.environ["LOCAL_SIZE"] = world
    else:
        os.environ.pop("LOCAL_SIZE", None)  # a value Ray or an earlier run left would bring the op up
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", auto_mpi_discovery=False)
    if _shared_memory_segments():
        dist.barrier()
        segment = Path(_SHM_SEGMENT.format(uid=os.getuid(), addr=os.environ.get("MASTER_ADDR", ""),
                                           port=os.environ.get("MASTER_PORT", ""), rank=dist.get_rank()))
        try:
            segment.unlink()
        except FileNotFoundError:
            warnings.warn(f"DeepSpeed's shared-memory segments are up but {segment} is missing: this DeepSpeed "
                          f"names its segments otherwise, and they will stay in /dev/shm after the run")
    return _shared_memory_segments()


def _shared_memory_segments() -> bool:
    """Whether DeepSpeed's shared-memory op set up its segments: it does when it was built and
    LOCAL_SIZE names every rank (whatever the CPU's vector instructions)."""
    import deepspeed.comm as ds_comm
    import torch.distributed as dist

    world = dist.get_world_size()
    return (world > 1 and os.environ.get("LOCAL_SIZE") == str(world)
            and getattr(ds_comm.comm.cdb, "shm_comm_op", None) is not None)


def _shared_memory_all_reduce():
    """DeepSpeed's in-place shared-memory sum when init_distributed brought it up, else None.

    DeepSpeed built it for CPU inference (tensor-parallel ranks of one node); it is a plain sum
    over the ranks of a float tensor. Only ranks that all share a node may call it: it sets up
    nothing otherwise, and its kernel then reads unmapped memory. Its fp32 kernel needs AVX2."""
    import deepspeed.comm as ds_comm

    if not _shared_memory_segments() or getattr(ds_comm.comm.cdb, "shm_vector_kernel_level", 0) < 1:
        return None
    return ds_comm.inference_all_reduce


def ds_config(path: str | Path, micro_batch: int, grad_accum: int, clip: float, lr: float, weight_decay: float,
              on_gpu: bool) -> dict:
    """The JSON template of ds_configs/ filled with this run's batch, optimizer and precision."""
    config = json.loads(Path(path).read_text())
    config["train_micro_batch_size_per_gpu"] = micro_batch
    config["gradient_accumulation_steps"] = grad_accum
    config["gradient_clipping"] = clip
    optimizer = config.setdefault("optimizer", {"type": "AdamW", "params": {}})
    optimizer.setdefault("params", {}).update({"lr": lr, "weight_decay": weight_decay})
    offload = config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device") == "cpu"
    if not offload:
        # torch's AdamW (DeepSpeed's FusedAdam exists only for CUDA builds), fused: one operation
        # updates every tensor, where its default on CPU takes ~10 per parameter. (Offload keeps
        # DeepSpeed's CPU Adam, which works on ZeRO's flat partitions already.)
        optimizer["params"].update({"torch_adam": True, "fused": True})
    if on_gpu and torch.cuda.is_bf16_supported():
        config["bf16"] = {"enabled": True}
    else:
        config.pop("bf16", None)
        config.pop("fp16", None)
    config.pop("train_batch_size", None)
    if not on_gpu and "zero_optimization" in config:
        # Overlapping gradient reduction with backward needs CUDA streams; on CPU it only adds copies.
        config["zero_optimization"]["overlap_comm"] = False
    return config


def loading_universal(config: dict) -> dict:
    """`config` set to load a checkpoint converted to DeepSpeed's universal format."""
    return {**config, "checkpoint": {**config.get("checkpoint", {}), "load_universal": True}}


def model_loading(config: dict) -> dict:
    """How to load the model an engine of `config` trains (load_model's arguments): its parameters
    in the precision they train in, so no rank holds an fp32 copy of bf16 weights; under ZeRO-3, the
    config zero.Init partitions a checkpoint with as it is read."""
    precision = next((k for k in ("bf16", "fp16") if config.get(k, {}).get("enabled")), None)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return {"dtype": dtype, "zero3": config if _stage(config) == 3 else None}


def owns_gradients(config: dict) -> bool:
    """Whether the strategy, not DeepSpeed, averages and clips the gradients under this engine
    config: ZeRO stage 0 in fp32, stage 1 in fp32 or bf16. Stage 0 only averages gradients
    (angel_dist/train/grad_reduce.py does it in a fixed number of operations; DeepSpeed per
    parameter); stage 1 also partitions AdamW's moments, and keeps bf16 parameters' fp32 master
    (angel_dist/train/partitioned_adamw.py; DeepSpeed reduces per parameter there too). Stage 0's
    mixed precision (DeepSpeed's bf16 optimizer keeps fp32 gradients of its own), fp16 (loss
    scaling) and stages 2 and 3 (which partition the gradients) stay DeepSpeed's."""
    precision = next((k for k in ("bf16", "fp16") if config.get(k, {}).get("enabled")), "fp32")
    return (_stage(config) == 0 and precision == "fp32") or (_stage(config) == 1 and precision != "fp16")


def _stage(config: dict) -> int:
    return config.get("zero_optimization", {}).get("stage", 0)


# The strategy's ZeRO-1 checkpoint: the whole model (the file and format DeepSpeed's stage 0
# writes, which export reads) and each rank's slice of the optimizer's moments (and bf16's master).
MODEL_STATES = "mp_rank_00_model_states.pt"
PARTITION_FILE = "optimizer-partition-{rank:05d}.pt"


def partition_files(dir_: Path) -> list[Path]:
    """The strategy's ZeRO-1 optimizer partitions in checkpoint dir_, in rank order (none: another format)."""
    return sorted(dir_.glob(PARTITION_FILE.replace("{rank:05d}", "*")))


def deepspeed_files(engine, root: str | Path, tag: str) -> list[Path]:
    """The files `engine.save_checkpoint(root, tag)` wrote in this rank, named by the engine's own
    functions under the conditions its save writes them. DeepSpeed 0.19.8, each ds_configs/ file
    saved on 2 CPU ranks in fp32 and bf16: `mp_rank_00_model_states.pt` by rank 0 below ZeRO-3
    (stage 0 keeps its optimizer there), `zero_pp_rank_{r}_mp_rank_00_model_states.pt` by each
    rank r under ZeRO-3, and `zero_pp_rank_{r}_mp_rank_00_optim_states.pt` by each rank r under
    ZeRO-2 and 3 (`bf16_zero_pp_...` in bf16). Its `zero_to_fp32.py` and `zero_to_torch.py` go to
    `root`, outside the checkpoint. Publishing refuses a file no rank names (checkpoint.publish)."""
    files = []
    if engine.save_non_zero_checkpoint:
        files.append(Path(engine._get_ckpt_name(str(root), tag)))
    if engine.save_zero_checkpoint:
        files.append(Path(engine._get_zero_ckpt_name(str(root), tag)))
    return files


class DeepSpeedStrategy:
    def __init__(self, model: torch.nn.Module, config: dict, own_gradients: bool = True):
        """`own_gradients=False` leaves even stage 0's and 1's gradients to DeepSpeed (its
        per-parameter path; bench/train.py counts both)."""
        import deepspeed
        import torch.distributed as dist

        self.owned, self.clip, self.flat, optimizer = own_gradients and owns_gradients(config), 0.0, None, None
        self.partitioned = self.owned and _stage(config) == 1
        if self.owned:  # clipped here, after the average
            self.clip, config = config.get("gradient_clipping", 0.0), {**config, "gradient_clipping": 0.0}
        if self.partitioned:
            # DeepSpeed runs the model at stage 0 in the parameters' type and steps this optimizer,
            # which does ZeRO-1's work. bf16: the parameters are cast here, as DeepSpeed's bf16
            # engine casts them; buffers (a Llama's rotary frequencies) stay fp32, as there.
            adam = config["optimizer"].get("params", {})
            if config.get("bf16", {}).get("enabled"):
                for p in model.parameters():
                    p.data = p.data.to(torch.bfloat16)
            named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            config = {k: v for k, v in config.items() if k not in ("optimizer", "bf16")} | {"zero_optimization":
                                                                                            {"stage": 0}}

            shared = _shared_memory_all_reduce()

            def optimizer(_):  # called once the engine has the model on its device, synced from rank 0
                return PartitionedAdamW(named, dist.get_rank(), dist.get_world_size(), lr=adam.get("lr", 1e-3),
                                        betas=tuple(adam.get("betas", (0.9, 0.999))), eps=adam.get("eps", 1e-8),
                                        weight_decay=adam.get("weight_decay", 0.0), clip=self.clip,
                                        collectives=shared and collectives_from_all_reduce(shared, dist.get_rank()))
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                                                 optimizer=optimizer, config=config)
        self.params = [p for p in self.engine.module.parameters() if p.requires_grad]
        if self.owned:
            # The engine's own switch for ranks that reduce elsewhere (its pipeline engine sets it too).
            self.engine.enable_backward_allreduce = False
            if dist.get_world_size() > 1 and not self.partitioned:
                self.flat = FlatGradients(self.params, dist.get_world_size(), _shared_memory_all_reduce())

    @property
    def model(self):
        """What the step's forward passes call: the engine, which runs the model and stands in for it
        (attributes such as `get_encoder` reach the model). Its forward registers the hooks that
        begin DeepSpeed's backward: ZeRO-3 tells its optimizer there whether this micro-batch ends
        a gradient-accumulation step (calling the bare model, it accumulated wrongly), and the
        timers of `wall_clock_breakdown` start there. DPO's encoder pass, shared by chosen and
        rejected rows, runs before that call (through `get_encoder`), outside those timers."""
        return self.engine

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def train(self, mode: bool = True) -> None:
        self.engine.train(mode)

    def compile(self, shapes: int = 0) -> None:
        """torch.compile the model in place (DeepSpeed's `compile`: parameter names, hence
        checkpoints, stay): with `shapes` (padded batches take at most that many), one static graph
        for each; else torch's default, which makes lengths dynamic once they change."""
        import torch._dynamo

        if shapes:
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, shapes)
        self.engine.compile(compile_kwargs={"dynamic": False} if shapes else {})

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        if self.partitioned:  # into its fp32 buffer, whatever the parameters' type
            self.optimizer.accumulate()
        elif self.owned and self.engine.is_gradient_accumulation_boundary():
            if self.flat is not None:
                self.flat.all_reduce_mean(self.clip)
            else:
                clip_gradients(self.params, self.clip)

    def step(self, lr: float) -> bool:
        """Apply the micro-batch; True when this was the last micro-batch of an optimizer step."""
        boundary = self.engine.is_gradient_accumulation_boundary()
        if boundary:
            for group in self.engine.optimizer.param_groups:
                group["lr"] = lr
        self.engine.step()
        return boundary

    def save(self, root: str | Path, tag: str) -> list[Path]:
        """Every rank writes its shards of model and optimizer state into root/tag; returns the files
        this rank wrote (it hashes them for meta.json: angel_dist/train/checkpoint.py). Our own state
        (step, reader, RNG) goes to JSON beside them, not into DeepSpeed's pickles."""
        if not self.partitioned:
            self.engine.save_checkpoint(str(root), tag=tag, save_latest=False)
            return deepspeed_files(self.engine, root, tag)
        import torch.distributed as dist

        out = Path(root) / tag
        out.mkdir(parents=True, exist_ok=True)
        files = [out / PARTITION_FILE.format(rank=dist.get_rank())]
        if dist.get_rank() == 0:
            torch.save({"module": self.engine.module.state_dict()}, out / MODEL_STATES)
            files.append(out / MODEL_STATES)
        torch.save(self.optimizer.partition_state(), files[0])
        return files

    def load(self, root: str | Path, tag: str) -> None:
        from angel_dist.train.safe_load import weights_only_loads

        if self.partitioned:
            self._load_partitioned(Path(root) / tag)
            return
        with weights_only_loads():
            path, _ = self.engine.load_checkpoint(str(root), tag=tag, load_lr_scheduler_states=False)
        if path is None:
            raise FileNotFoundError(f"DeepSpeed found no checkpoint at {Path(root) / tag}")

    def _load_partitioned(self, dir_: Path) -> None:
        """The whole model, and this rank's slice of the moments from the slices of whatever world
        size saved them (each file mapped, so a rank reads only the values it takes)."""
        from angel_dist.errors import BadInputError

        files = partition_files(dir_)
        if not files or not (dir_ / MODEL_STATES).exists():
            raise BadInputError(dir_, None, f"expected the strategy's ZeRO-1 checkpoint ({MODEL_STATES} and "
                                            f"{PARTITION_FILE.format(rank=0)}, ...); was it saved under "
                                            f"another ds_config?")
        model = read_weights(dir_ / MODEL_STATES, "the model's states", self.device)
        try:
            self.engine.module.load_state_dict(model["module"])
        except (KeyError, TypeError, RuntimeError) as e:
            raise BadInputError(dir_ / MODEL_STATES, None, f"does not fit the model: {type(e).__name__}: "
                                                            f"{str(e)[:300]}") from None
        parts = [read_weights(f, "a slice of the optimizer's moments", "cpu", mmap=True) for f in files]
        try:
            self.optimizer.load_partitions(parts)
        except ValueError as e:
            raise BadInputError(dir_, None, str(e)) from None


def read_weights(path: Path, what: str, device, mmap: bool = False) -> dict:
    """A torch.save'd dict of tensors and plain values through torch's restricted unpickler."""
    import pickle

    from angel_dist.errors import BadInputError

    try:
        value = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise BadInputError(path, None, f"expected {what}: {type(e).__name__}: {str(e)[:300]}") from None
    if not isinstance(value, dict):
        raise BadInputError(path, None, f"expected {what} as a dict, found {type(value).__name__}")
    return value


def to_universal(root: str | Path, tag: str) -> str:
    """Convert checkpoint root/tag to DeepSpeed's universal format (any world size can load it);
    returns the universal tag. Idempotent: an existing conversion is reused once its files match
    the checksums recorded when it was made."""
    import subprocess
    import sys

    from angel_dist.atomic import atomic_path
    from angel_dist.train import checkpoint as ckpt
    from angel_dist.train.safe_load import raise_bad_input

    universal = f"{tag}.universal"
    target = Path(root) / universal
    if target.exists():
        ckpt.verify(target)
        return universal
    with atomic_path(target, directory=True) as tmp:
        tmp.rmdir()  # the converter creates its output folder
        done = subprocess.run([sys.executable, "-m", "angel_dist.train.safe_load", "--input_folder",
                               str(Path(root) / tag), "--output_folder", str(tmp), "--inject_missing_state",
                               "--num_extract_workers", "1", "--num_merge_workers", "1"],
                              capture_output=True, text=True, env={**os.environ})
        if done.returncode:
            raise_bad_input(done.stderr)
            raise RuntimeError(f"ds_to_universal failed on {Path(root) / tag}:\n{done.stderr[-4000:]}")
        ckpt.record(tmp, {"converted_from": tag})
    (Path(root) / "latest_universal").unlink(missing_ok=True)  # the converter's pointer; ours is `latest`
    return universal
