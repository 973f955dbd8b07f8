"""FlatGradients across two ranks on one node: the averaged gradients are the mean of the ranks'
own (reduced through gloo on loopback, and through DeepSpeed's shared-memory all-reduce that
init_distributed brings up on CPU), clipped as torch clips the mean, accumulation reduces only
once, a parameter without a gradient on one rank counts as zeros, and gradients stay in the
buffer across steps. The gradient work, and an engine step's work outside forward and backward,
takes a number of operations that does not grow with the number of parameter tensors."""

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from angel_dist.train.grad_reduce import FlatGradients, clip_gradients
from angel_dist.train.opcount import count_aten_ops
from conftest import free_port

# Micro-batches per step: a plain step; two accumulated; one into the views the optimizer zeroed in
# place (instead of dropping them); one where rank 1 has no gradient for the last layer. The mean's
# norm is clipped to CLIPS (0: not clipped; the others are below the norms, so they bite).
STEPS = (1, 2, 1, 1)
CLIPS = (0.0, 0.05, 0.0, 0.02)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(11, 6), torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3),
                               torch.nn.Linear(3, 3))


def _loss(model, rank: int, step: int, micro: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 * rank + 10 * step + micro)
    x = torch.randint(0, 11, (4,), generator=g)
    skip_last = step == 3 and rank == 1
    h = model[:4](x) if skip_last else model(x)
    return h.pow(2).mean() * (rank + 1)


def _local_grads(rank: int, step: int) -> list[torch.Tensor]:
    model = _model()
    for m in range(STEPS[step]):
        _loss(model, rank, step, m).backward()
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def _rank(rank: int, world: int, port: int, shared_memory: bool, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    if shared_memory:
        from angel_dist.train.strategy import _shared_memory_all_reduce, init_distributed

        init_distributed(on_gpu=False, node_local=True)
        reduce = _shared_memory_all_reduce()
        assert reduce is not None, "DeepSpeed's shared-memory all-reduce did not come up"
        dist.barrier()  # every rank has unlinked its segment
        out[f"segments-{rank}"] = sorted(p.name for p in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
    else:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        reduce = None
    try:
        model = _model()
        flat = FlatGradients(list(model.parameters()), world, reduce)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay those of _model()
        results = []
        for step, micros in enumerate(STEPS):
            for m in range(micros):
                _loss(model, rank, step, m).backward()
            flat.all_reduce_mean(CLIPS[step])
            results.append([p.grad.clone() for p in model.parameters()])
            assert all(p.grad.data_ptr() == v.data_ptr() for p, v in zip(flat.params, flat.views))
            opt.step()
            opt.zero_grad(set_to_none=step != 1)
        out[rank] = results
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("shared_memory", [False, True], ids=["gloo", "shared-memory"])
def test_flat_gradients_average_the_ranks_gradients(shared_memory):
    world, port = 2, free_port()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank, args=(world, port, shared_memory, out), nprocs=world)
        results = dict(out)
    for step in range(len(STEPS)):
        mean = [sum(gs) / world for gs in zip(*(_local_grads(r, step) for r in range(world)))]
        if CLIPS[step]:
            assert torch.linalg.vector_norm(torch.cat([g.flatten() for g in mean])) > CLIPS[step]
            torch.nn.utils.clip_grad_norm_(_params_of(mean), CLIPS[step])
        for rank in range(world):
            got = results[rank][step]
            assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(got, mean))
        assert all(torch.equal(a, b) for a, b in zip(results[0][step], results[1][step]))
    assert not mean[-1].eq(0).all()  # rank 1 had no gradient for the last layer; rank 0's was halved
    if shared_memory:
        assert results["segments-0"] == results["segments-1"] == []  # nothing left in /dev/shm


def _params_of(grads: list[torch.Tensor]) -> list[torch.nn.Parameter]:
    """Parameters holding `grads` (the very tensors) as their gradients."""
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g
    return params


def test_a_lone_rank_clips_as_torch_does():
    grads = [torch.randn(5, 3, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    ours, theirs = _params_of([g.clone() for g in grads]), _params_of([g.clone() for g in grads])
    clip_gradients(ours + [torch.nn.Parameter(torch.zeros(2))], 0.5)  # one without a gradient
    torch.nn.utils.clip_grad_norm_(theirs, 0.5)
    assert all(torch.allclose(a.grad, b.grad, rtol=1e-6) for a, b in zip(ours, theirs))
    assert not torch.allclose(ours[0].grad, grads[0])  # the clip bit


@pytest.mark.parametrize("world", [1, 2])
def test_gradient_work_takes_the_same_operations_for_10_or_200_parameters(world):
    def ops(n: int) -> int:
        params = _params_of([torch.ones(3, 2) for _ in range(n)])
        if world == 1:
            return count_aten_ops(lambda: clip_gradients(params, 0.5))["dispatched"]
        flat = FlatGradients(params, world, lambda t: t.mul_(world))  # the sum of `world` equal ranks
        counts = count_aten_ops(lambda: flat.all_reduce_mean(0.5))["dispatched"]
        assert torch.allclose(flat.buffer, torch.full_like(flat.buffer, 0.5 / (6 * n) ** 0.5))
        return counts

    assert ops(10) == ops(200) <= 12


def _engine_steps(rank: int, port: int, name: str, bf16: bool, out) -> None:
    """One rank: the same tiny BART and batch stepped three times by the strategy's own gradient
    path and (fp32) by DeepSpeed's (ds_configs/{name}.json), operations counted on the third step."""
    from transformers import BartConfig, BartForConditionalGeneration

    from angel_dist.train.opcount import step_op_counts
    from angel_dist.train.strategy import ds_config

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                      LOCAL_WORLD_SIZE="1", DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    g = torch.Generator().manual_seed(0)
    batch = {"source_ids": torch.randint(3, 64, (2, 12), generator=g), "source_mask": torch.ones(2, 12, dtype=torch.bool),
             "decoder_ids": torch.randint(3, 64, (2, 6), generator=g), "decoder_mask": torch.ones(2, 6, dtype=torch.bool),
             "target_mask": torch.arange(6).expand(2, 6) >= 3}
    try:
        for own in (True,) if bf16 else (True, False):
            torch.manual_seed(0)
            model = BartForConditionalGeneration(BartConfig(
                vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32))
            config = ds_config(Path(__file__).parents[1] / "ds_configs" / f"{name}.json", 2, 1, 1e-3, 1e-2, 0.01, False)
            config["optimizer"]["params"]["fused"] = own
            if bf16:
                config["bf16"] = {"enabled": True}
                out["initial"] = {k: v.detach().clone() for k, v in model.named_parameters()}
                out["buffers"] = [k for k, _ in model.named_buffers()]
            out[own] = step_op_counts(model, batch, config, own_gradients=own), model.state_dict()
    finally:
        dist.destroy_process_group()


# Stage 0 averages in angel_dist/train/grad_reduce.py; stage 1 partitions the optimizer in
# angel_dist/train/partitioned_adamw.py (several ranks: tests/test_partitioned_adamw.py).
@pytest.mark.parametrize("name", ["ddp", "zero1"])
def test_an_engine_step_outside_forward_and_backward_takes_few_operations_and_trains_as_deepspeed(name):
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_engine_steps, args=(free_port(), name, False, out), nprocs=1)
        (ours, weights), (deepspeed, theirs) = out[True], out[False]
    assert ours["forward_backward"] == deepspeed["forward_backward"]
    assert ours["rest_over_forward_backward"] <= 0.1 < deepspeed["rest_over_forward_backward"]
    assert all(torch.allclose(weights[k], theirs[k], rtol=1e-5, atol=1e-7) for k in weights)  # clip 1e-3 bites


def test_a_bf16_zero1_step_keeps_bf16_parameters_in_few_operations():
    # Its arithmetic against an fp32 master stepped by torch: tests/test_partitioned_adamw.py.
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_engine_steps, args=(free_port(), "zero1", True, out), nprocs=1)
        (counts, weights), initial, buffers = out[True], out["initial"], out["buffers"]
    assert counts["rest_over_forward_backward"] <= 0.1
    # Parameters in bf16; buffers (BART's final_logits_bias) stay fp32, as DeepSpeed's bf16 engine keeps them.
    assert all(weights[k].dtype == torch.bfloat16 and torch.isfinite(weights[k]).all() for k in initial)
    assert buffers and {weights[k].dtype for k in buffers} == {torch.float32}
    assert not torch.allclose(weights["model.shared.weight"].float(), initial["model.shared.weight"])  # it trained
