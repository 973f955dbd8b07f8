"""A checkpoint's files hashed by the ranks that wrote them (angel_dist/train/checkpoint.py): two
gloo ranks in processes of their own save, claim, gather and publish as the training loop does,
and share the hashing when a resume checks the checkpoint. Which rank hashed what is seen by a
spy on each process's sha256."""

import hashlib
import json
import multiprocessing
import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import free_port

TAG, TMP = "step-00000010", "step-00000010.tmp"
WORLD = 2


def _rank(rank: int, port: int, out: str, job: str) -> None:
    """One rank: join the group, run `job`, write what it returned or raised and what it hashed."""
    import torch.distributed as dist

    from angel_dist.train import checkpoint as ckpt

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    hashed, real = [], ckpt.file_sha256
    ckpt.file_sha256 = lambda path: hashed.append(Path(path).name) or real(path)
    results = {}
    for run in sorted(p for p in Path(out).iterdir() if p.is_dir()):
        hashed.clear()
        try:
            results[run.name] = {"returned": globals()[job](run, rank)}
        except Exception as e:  # what a rank would raise to Ray Train
            results[run.name] = {"raised": f"{type(e).__name__}: {e}"}
        results[run.name]["hashed"] = list(hashed)
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def _run(job: str, out: Path) -> dict[str, list[dict]]:
    """{run: what each rank returned or raised, and hashed}: `job` in every run directory of `out`, one after another."""
    ctx = multiprocessing.get_context("spawn")  # not fork: the test process may run Ray's threads
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, str(out), job)) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]
    return {run: [rank[run] for rank in ranks] for run in ranks[0]}


def save(out: Path, rank: int, stray: bool = False):
    """What the loop's save does, with files as DeepSpeed's ZeRO-2 names them: rank 0 the model,
    each rank its optimizer partition and RNG states."""
    from angel_dist.train import checkpoint as ckpt

    d = out / "checkpoints" / TMP
    d.mkdir(parents=True, exist_ok=True)
    written = [d / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"]
    if rank == 0:
        written.append(d / "mp_rank_00_model_states.pt")
    for path in written:
        path.write_bytes(os.urandom(100_000 + rank))
    written.append(ckpt.save_rng(d, rank))
    if stray and rank == 0:
        (d / "stray.pt").write_bytes(b"written by no rank's save")
    files = ckpt.gather_claims(d, written)
    if rank == 0:
        ckpt.publish(out / "checkpoints", TMP, TAG, {"step": 10, "world_size": WORLD, "config": {}, "reader": {}},
                     files, keep_last=2)
    return sorted(p.name for p in written)


def save_with_a_stray_file(out: Path, rank: int):
    return save(out, rank, stray=True)


def resume(out: Path, rank: int):
    from angel_dist.train import checkpoint as ckpt

    return ckpt.verified_meta(out / "checkpoints", TAG, rank, WORLD)["step"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("saved")
    (out / "run").mkdir()
    return out / "run", _run("save", out)["run"]


def test_each_rank_hashes_the_files_it_wrote_and_meta_records_them_all(saved):
    out, ranks = saved
    d = out / "checkpoints" / TAG
    assert not (out / "checkpoints" / TMP).exists() and (out / "checkpoints" / "latest").read_text() == TAG
    meta = json.loads((d / "meta.json").read_text())
    on_disk = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir() if p.name != "meta.json"}
    assert meta["files"] == on_disk and len(on_disk) == 5
    for rank in ranks:
        assert "raised" not in rank, rank
        assert sorted(rank["hashed"]) == rank["returned"]  # its own files, no other rank's
    assert ranks[1]["returned"] == ["rng-rank1.json", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]


def test_a_file_no_rank_claimed_fails_the_save_naming_it(tmp_path):
    (tmp_path / "run").mkdir()
    ranks = _run("save_with_a_stray_file", tmp_path)["run"]
    root = tmp_path / "run" / "checkpoints"
    assert ranks[0]["raised"].startswith(f"BadInputError: {root / TMP / 'stray.pt'}: written into the checkpoint "
                                         f"by no rank's save")
    assert "stray.pt" not in ranks[0]["hashed"]
    assert not (root / "latest").exists() and not (root / TAG).exists()


CHANGES = {"none": None, "changed": "sha256 .* differs from", "extra": "a file meta.json does not record",
           "missing": "missing; .*meta.json records it"}


def test_a_resume_shares_the_hashing_and_rank_0_refuses_what_differs(saved, tmp_path):
    names = sorted(json.loads((saved[0] / "checkpoints" / TAG / "meta.json").read_text())["files"])
    targets = {}
    for change in CHANGES:
        shutil.copytree(saved[0], tmp_path / change)
        d = tmp_path / change / "checkpoints" / TAG
        targets[change] = target = d / {"none": names[0], "changed": names[3], "extra": "extra.pt",
                                        "missing": names[4]}[change]
        if change == "changed":  # a file of rank 1's share
            data = bytearray(target.read_bytes())
            data[5000] ^= 1
            target.write_bytes(bytes(data))
        elif change == "extra":
            target.write_bytes(b"not saved")
        elif change == "missing":  # of rank 0's
            target.unlink()
    runs = _run("resume", tmp_path)
    for change, problem in CHANGES.items():
        ranks, d = runs[change], targets[change].parent
        assert [sorted(rank["hashed"]) for rank in ranks] == [[n for n in names[r::WORLD] if (d / n).exists()]
                                                              for r in range(WORLD)]
        if problem is None:
            assert [rank.get("returned") for rank in ranks] == [10, 10]
        else:
            assert re.match(f"BadInputError: {re.escape(str(targets[change]))}: {problem}", ranks[0]["raised"])
            assert ranks[1].get("returned") == 10  # the others go on, to wait for rank 0 (Ray Train ends them)
