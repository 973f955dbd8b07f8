"""FlatGradients across two gloo ranks on loopback: the averaged gradients are the mean of the
ranks' own, accumulation reduces only once, and gradients stay in the buffer across steps."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from angel_dist.train.grad_reduce import FlatGradients
from conftest import free_port


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(11, 6), torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def _loss(model, rank: int, micro: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 * rank + micro)
    x = torch.randint(0, 11, (4,), generator=g)
    return model(x).pow(2).mean() * (rank + 1)


def _local_grads(rank: int, micros: int) -> list[torch.Tensor]:
    model = _model()
    for m in range(micros):
        _loss(model, rank, m).backward()
    return [p.grad.clone() for p in model.parameters()]


def _rank(rank: int, world: int, port: int, out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = _model()
        flat = FlatGradients(list(model.parameters()), world)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay those of _model()
        results = []
        for micros in (1, 2):  # a plain step, then two micro-batches accumulated before one reduction
            for m in range(micros):
                flat.attach()
                _loss(model, rank, m).backward()
            flat.all_reduce_mean()
            results.append([p.grad.clone() for p in model.parameters()])
            assert all(p.grad.data_ptr() == v.data_ptr() for p, v in flat.views)
            opt.step()
            opt.zero_grad(set_to_none=True)
        out[rank] = results
    finally:
        dist.destroy_process_group()


def test_flat_gradients_average_the_ranks_gradients():
    world = 2
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank, args=(world, free_port(), out), nprocs=world)
        results = dict(out)
    for step, micros in enumerate((1, 2)):
        mean = [sum(gs) / world for gs in zip(*(_local_grads(r, micros) for r in range(world)))]
        for rank in range(world):
            got = results[rank][step]
            assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(got, mean))
        assert all(torch.equal(a, b) for a, b in zip(results[0][step], results[1][step]))


def test_a_gradient_replaced_after_attach_is_refused():
    model = _model()
    flat = FlatGradients(list(model.parameters()), 1)
    flat.attach()
    next(model.parameters()).grad = torch.zeros_like(next(model.parameters()))
    with pytest.raises(RuntimeError, match="left the flat buffer"):
        flat.all_reduce_mean()
