"""The strategy's ZeRO-1 (angel_dist/train/partitioned_adamw.py) on 1, 2 and 3 ranks of one process
(a thread each, gloo over loopback): its steps give the parameters torch's AdamW gives on the
ranks' mean gradient, clipped as torch clips, also with bf16 parameters over an fp32 master; its
moments (and master) saved on one world size resume on another; a partition set that is not one
whole state of this model is refused; and a step takes the same operations for 10 or 200
parameter tensors."""

import datetime
import threading

import pytest
import torch
import torch.distributed as dist

from angel_dist.train.opcount import count_aten_ops
from angel_dist.train.partitioned_adamw import Collectives, PartitionedAdamW, collectives_from_all_reduce, whole_master

# Micro-batches per step and the clip of each step (0: none; the others are below the norms, so they bite).
STEPS = (1, 2, 1, 1)
CLIPS = (0.0, 0.05, 0.0, 0.02)
OPTIM = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)


_SEEDING = threading.Lock()  # the ranks' threads share torch's global generator


def _model() -> torch.nn.Module:
    with _SEEDING:
        torch.manual_seed(0)  # 66 + 30 + 18 + 12 = 126 values: not a multiple of 4, so slices are padded
        return torch.nn.Sequential(torch.nn.Embedding(11, 6), torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3),
                                   torch.nn.Linear(3, 3))


def _loss(model, rank: int, step: int, micro: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 * rank + 10 * step + micro)
    x = torch.randint(0, 11, (4,), generator=g)
    skip_last = step == 3 and rank == 1  # rank 1 has no gradient for the last layer
    h = model[:4](x) if skip_last else model(x)
    return h.pow(2).mean() * (rank + 1)


def _reference(world: int, steps=range(len(STEPS))) -> list[list[torch.Tensor]]:
    """torch's AdamW stepped on the ranks' mean gradient, clipped by torch: the parameters after each step."""
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), **OPTIM)
    out = []
    for step in steps:
        grads = []
        for rank in range(world):
            model.zero_grad(set_to_none=True)
            for m in range(STEPS[step]):
                _loss(model, rank, step, m).backward()
            grads.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()])
        for p, gs in zip(model.parameters(), zip(*grads)):
            p.grad = sum(gs) / world
        if CLIPS[step]:
            assert torch.nn.utils.clip_grad_norm_(model.parameters(), CLIPS[step]) > CLIPS[step]
        opt.step()
        out.append([p.detach().clone() for p in model.parameters()])
    return out


def _on_ranks(world: int, fn, all_reduce_only: bool = False) -> dict:
    """fn(rank, collectives) on `world` threads, each a gloo rank bound to loopback; their results
    by rank. `all_reduce_only`: the collectives built from gloo's all-reduce alone, as the strategy
    builds them from DeepSpeed's shared-memory all-reduce."""
    store, results, errors = dist.HashStore(), {}, []

    def rank_main(rank: int):
        try:
            options = dist.ProcessGroupGloo._Options()
            options._devices = [dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")]
            options._timeout = datetime.timedelta(seconds=60)
            pg = dist.ProcessGroupGloo(store, rank, world, options)
            collectives = Collectives(lambda out, inp: pg._reduce_scatter_base(out, inp).wait(),
                                      lambda out, inp: pg._allgather_base(out, inp).wait(),
                                      lambda t: pg.allreduce([t]).wait())
            if all_reduce_only:
                collectives = collectives_from_all_reduce(collectives.all_reduce, rank)
            results[rank] = fn(rank, collectives)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _steps(model, opt, rank: int, steps) -> list[list[torch.Tensor]]:
    out = []
    for step in steps:
        for m in range(STEPS[step]):
            _loss(model, rank, step, m).backward()
        opt.clip = CLIPS[step]
        opt.step()
        model.zero_grad(set_to_none=True)
        out.append([p.detach().clone() for p in model.parameters()])
    return out


def _optimizer(model, rank: int, world: int, collectives) -> PartitionedAdamW:
    return PartitionedAdamW(list(model.named_parameters()), rank, world, collectives=collectives, **OPTIM)


@pytest.mark.parametrize("world,all_reduce_only", [(1, False), (2, False), (3, False), (3, True)])
def test_steps_give_torch_adamw_on_the_mean_gradient(world, all_reduce_only):
    def rank_main(rank, collectives):
        model = _model()
        return _steps(model, _optimizer(model, rank, world, collectives), rank, range(len(STEPS)))

    results, expected = _on_ranks(world, rank_main, all_reduce_only), _reference(world)
    for step, want in enumerate(expected):
        for rank in range(world):
            assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(results[rank][step], want)), \
                (world, rank, step)
        assert all(all(torch.equal(a, b) for a, b in zip(results[r][step], results[0][step])) for r in range(world))
    assert not torch.allclose(expected[-1][0], _model()[0].weight)  # it trained


@pytest.mark.parametrize("saved,resumed", [(2, 3), (3, 1)])
def test_moments_saved_on_one_world_size_resume_on_another(saved, resumed):
    """Two steps on `saved` ranks, their partitions and weights taken over by `resumed` ranks for the
    last two: the same parameters as the uninterrupted reference (whose gradient is the mean over
    `saved` ranks throughout: the resumed ranks see the saved ranks' losses, as the reader hands
    a resumed run the same samples)."""
    def first(rank, collectives):
        model = _model()
        opt = _optimizer(model, rank, saved, collectives)
        _steps(model, opt, rank, range(2))
        return opt.partition_state(), {k: v.clone() for k, v in model.state_dict().items()}

    parts = _on_ranks(saved, first)
    weights = parts[0][1]

    def second(rank, collectives):
        model = _model()
        opt = _optimizer(model, rank, resumed, collectives)
        model.load_state_dict(weights)
        opt.load_partitions([parts[r][0] for r in range(saved)])
        out = []
        for step in (2, 3):  # this rank stands for the saved ranks whose data it now reads
            for r in range(rank, saved, resumed):
                for m in range(STEPS[step]):
                    (_loss(model, r, step, m) * resumed / saved).backward()
            opt.clip = CLIPS[step]
            opt.step()
            model.zero_grad(set_to_none=True)
            out.append([p.detach().clone() for p in model.parameters()])
        return out

    results, expected = _on_ranks(resumed, second), _reference(saved)
    for rank in range(resumed):
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(results[rank][-1], expected[-1]))


def test_partitions_that_are_not_one_whole_state_of_this_model_are_refused():
    def rank_main(rank, collectives):
        model = _model()
        opt = _optimizer(model, rank, 2, collectives)
        _steps(model, opt, rank, range(1))
        return opt.partition_state()

    parts = _on_ranks(2, rank_main)
    model = _model()
    opt = _optimizer(model, 0, 1, None)
    opt.load_partitions([parts[0], parts[1]])
    assert opt.state[opt.master]["step"] == 1 and opt.state[opt.master]["exp_avg"].abs().sum() > 0
    other = torch.nn.Sequential(torch.nn.Linear(6, 5))
    cases = {
        "per rank": [parts[0]],
        "other parameters": [{**parts[0], "layout": "0" * 16}, parts[1]],
        "disagree": [parts[0], {**parts[1], "step": 7.0}],
        "moments of": [parts[0], {**parts[1], "exp_avg": parts[1]["exp_avg"][:-1]}],
        "integer bounds": [parts[0], {**parts[1], "start": "63"}],
        "keys": [parts[0], {k: v for k, v in parts[1].items() if k != "step"}],
    }
    for problem, bad in cases.items():
        with pytest.raises(ValueError, match=problem):
            opt.load_partitions(bad)
    with pytest.raises(ValueError, match="other parameters"):
        _optimizer(other, 0, 1, None).load_partitions([parts[0], parts[1]])


@pytest.mark.parametrize("world", [1, 2])
def test_a_step_takes_the_same_operations_for_10_or_200_parameters(world):
    def ops(n: int) -> int:
        params = [(f"p{i}", torch.nn.Parameter(torch.ones(3, 2))) for i in range(n)]
        # `world` equal ranks: the reduce-scatter sums `world` copies of this rank's slice.
        fake = Collectives(lambda out, inp: out.copy_(inp[:out.numel()]).mul_(world), lambda out, inp: None,
                           lambda t: t.mul_(world))
        opt = PartitionedAdamW(params, 0, world, lr=1e-3, clip=0.5, collectives=fake)
        for _, p in params:
            p.grad = torch.ones_like(p)
        opt.step()  # the first step sets up the moments
        for _, p in params:
            p.grad = torch.ones_like(p)
        return count_aten_ops(opt.step)["dispatched"]

    assert ops(10) == ops(200) <= (14 if world == 1 else 18)  # two ranks: the fake collectives add 4


def _bf16_reference(world: int) -> list[torch.Tensor]:
    """An fp32 master stepped by torch's AdamW on the ranks' mean gradient, each rank's computed by
    a bf16 copy of it and summed over micro-batches in fp32: the master after the last step. The
    master starts from the bf16 model's values (as DeepSpeed's bf16 optimizer's does)."""
    master = _model().to(torch.bfloat16).float()
    opt = torch.optim.AdamW(master.parameters(), **OPTIM)
    for step in range(len(STEPS)):
        work = _model().to(torch.bfloat16)
        work.load_state_dict(master.state_dict())
        total = [torch.zeros_like(p) for p in master.parameters()]
        for rank in range(world):
            for m in range(STEPS[step]):
                work.zero_grad(set_to_none=True)
                _loss(work, rank, step, m).backward()
                for t, p in zip(total, work.parameters()):
                    if p.grad is not None:
                        t += p.grad.float()
        for p, t in zip(master.parameters(), total):
            p.grad = t / world
        if CLIPS[step]:
            torch.nn.utils.clip_grad_norm_(master.parameters(), CLIPS[step])
        opt.step()
    return [p.detach().clone() for p in master.parameters()]


def test_bf16_parameters_are_stepped_through_an_fp32_master_and_resume_from_it():
    world = 2

    def rank_main(rank, collectives):
        model = _model().to(torch.bfloat16)
        opt = _optimizer(model, rank, world, collectives)
        for step in range(len(STEPS)):
            for m in range(STEPS[step]):
                _loss(model, rank, step, m).backward()
                opt.accumulate()  # as the strategy does after each micro-batch
            opt.clip = CLIPS[step]
            opt.step()
        return opt.partition_state(), {k: v.clone() for k, v in model.state_dict().items()}

    results, expected = _on_ranks(world, rank_main), _bf16_reference(world)
    master = whole_master([results[r][0] for r in range(world)], list(_model().named_parameters()))
    assert list(master) == [name for name, _ in _model().named_parameters()]
    for got, want in zip(master.values(), expected):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)
    weights = results[0][1]
    assert all(weights[k].dtype == torch.bfloat16 and torch.equal(weights[k], master[k].to(torch.bfloat16))
               for k in master)  # the parameters are the master, rounded
    # One rank resumes from the two slices: its master is the saved fp32 values, not the rounded weights.
    model = _model().to(torch.bfloat16)
    model.load_state_dict(weights)
    opt = _optimizer(model, 0, 1, None)
    opt.load_partitions([results[r][0] for r in range(world)])
    assert torch.equal(opt.master[:opt.numel], torch.cat([v.flatten() for v in master.values()]))
    fp32 = _model()
    assert whole_master([_optimizer(fp32, 0, 1, None).partition_state()], list(fp32.named_parameters())) is None
