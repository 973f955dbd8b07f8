"""GPUs where Ray says, checked on a CPU machine: what Ray and torch report is faked in-process,
and a local Ray that declares one GPU (which torch, a CPU build here, cannot use) hands it to a
serve replica, a search actor and a training rank, each of which refuses to start, the user
reading why as `angel: error: ...`."""

import json
import socket

import pyarrow as pa
import pytest
import ray
import torch

from angel_dist import ray_env
from angel_dist.cli import main
from angel_dist.pipeline import load_recipe
from angel_dist.ray_env import GpuUnusableError, assigned_device
from angel_dist.serve import ServeConfig, deployment_options
from angel_dist.train import TrainConfig
from angel_dist.typed import ConfigError
from conftest import free_port


def _in_ray(monkeypatch, gpu_ids: list[int], cuda: bool, cuda_version: str | None = None) -> None:
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: gpu_ids)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.version, "cuda", cuda_version)


# -- the device a process was given ---------------------------------------------------------------

def test_given_a_gpu_torch_cannot_use_names_torch_its_cuda_and_the_driver(monkeypatch, tmp_path):
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text('#!/bin/sh\n[ "$1 $2" = "--query-gpu=driver_version --format=csv,noheader" ] && '
                   'printf "470.82.01\\n470.82.01\\n"\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}:/usr/bin:/bin")
    _in_ray(monkeypatch, [3], cuda=False, cuda_version="12.8")
    with pytest.raises(GpuUnusableError) as refused:
        assigned_device()
    message = str(refused.value)
    assert f"GPU(s) 3, but torch cannot use CUDA here: torch {torch.__version__} (CUDA 12.8)" in message
    assert "driver: 470.82.01 (nvidia-smi)" in message and "ask for no GPUs" in message


def test_without_nvidia_smi_the_driver_is_what_torch_reports_or_none(monkeypatch):
    monkeypatch.setattr(ray_env.shutil, "which", lambda name: None)
    _in_ray(monkeypatch, [0], cuda=False, cuda_version=None)
    with pytest.raises(GpuUnusableError, match=r"\(CUDA None: a CPU-only build\), driver: no NVIDIA driver found"):
        assigned_device()

    def too_old():
        raise RuntimeError("The NVIDIA driver on your system is too old (found version 11040).\nPlease update")

    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "init", too_old)
    with pytest.raises(GpuUnusableError, match=r"\(CUDA 12.8\), driver: torch reports The NVIDIA driver on your "
                                               r"system is too old \(found version 11040\)\. Please update"):
        assigned_device()


def test_a_process_given_no_gpu_runs_on_the_cpu_even_where_cuda_is_visible(monkeypatch):
    _in_ray(monkeypatch, [], cuda=True, cuda_version="12.8")
    assert assigned_device() == "cpu"
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [1])
    assert assigned_device() == "cuda"
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # outside Ray: the GPUs it asks for
    assert (assigned_device(0), assigned_device(1)) == ("cpu", "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GpuUnusableError, match="this process asks for 0.5 GPU"):
        assigned_device(0.5)


# -- fractional GPUs per training rank ------------------------------------------------------------

def test_fractional_gpus_per_rank_only_where_one_rank_holds_them():
    assert TrainConfig(data=["d"], gpus_per_worker=0.5, workers=1).gpus_per_worker == 0.5
    assert TrainConfig(data=["d"], gpus_per_worker=0.5, workers=[1, 1]).gpus_per_worker == 0.5
    assert TrainConfig(data=["d"], gpus_per_worker=2, workers=4).gpus_per_worker == 2
    for workers in (2, [1, 2]):  # under [MIN, MAX] a start may take MAX ranks
        with pytest.raises(ConfigError, match=r"gpus_per_worker: 0.5 with workers .* two ranks on one GPU") as e:
            TrainConfig(data=["d"], gpus_per_worker=0.5, workers=workers)
        assert e.value.key == "gpus_per_worker"
    with pytest.raises(ConfigError, match="gpus_per_worker: above 1, expected a whole number of GPUs, got 1.5"):
        TrainConfig(data=["d"], gpus_per_worker=1.5)


def test_the_recipe_refuses_fractional_gpus_per_rank_naming_its_key(capsys):
    with pytest.raises(ConfigError) as e:
        load_recipe(None, ["workers=2", "gpus_per_worker=0.25"], inputs=False)
    assert e.value.key == "gpus_per_worker" and "NCCL" in e.value.problem
    assert load_recipe(None, ["workers=1", "gpus_per_worker=0.25"], inputs=False).gpus_per_worker == 0.25
    with pytest.raises(ConfigError, match=r"^pretrain\.gpus_per_worker: set by the pipeline"):
        load_recipe(None, ["pretrain.gpus_per_worker=0.5"], inputs=False)
    assert main(["train", "--data", "d", "--out", "r", "--workers", "2", "--gpus-per-worker", "0.5"]) == 2
    assert "angel: error: gpus_per_worker: 0.5 with workers 2" in capsys.readouterr().err


# -- angel serve --------------------------------------------------------------------------------

def test_gpus_per_replica_reach_the_deployments_ray_actor_options(monkeypatch, capsys):
    import angel_dist.serve as serve_module

    assert deployment_options(ServeConfig(bundle="b"))["ray_actor_options"]["num_gpus"] == 0
    deployed = []

    def start_service(cfg):
        deployed.append(deployment_options(cfg))
        raise ValueError("stop before deploying")

    monkeypatch.setattr(serve_module, "start_service", start_service)
    assert main(["serve", "b", "--gpus-per-replica", "1", "--cpus-per-replica", "2", "--replicas", "3"]) == 2
    assert deployed[0]["num_replicas"] == 3
    assert {k: deployed[0]["ray_actor_options"][k] for k in ("num_cpus", "num_gpus")} == {"num_cpus": 2, "num_gpus": 1}
    for gpus in ("1.5", "-1"):
        assert main(["serve", "b", "--gpus-per-replica", gpus]) == 2
        assert f"gpus_per_replica must be from 0 to 1 (a replica's linker uses one device), got {gpus}" in \
            capsys.readouterr().err


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A linker bundle: a 4-concept KB, its tokenizer and trie, the tiny model; beside it the KB's
    KB-guided examples (`examples/`), for training (its driver checks its data before any rank)."""
    from angel_dist.bundle.layout import BundleContents, write_bundle
    from angel_dist.corpus.build import PretrainCorpusConfig, build_pretrain_corpus
    from angel_dist.bundle.sources import _inputs
    from angel_dist.kb.table import assemble_kb, write_kb
    from angel_dist.model import load_model, save_model
    from angel_dist.tokenizer import load_tokenizer, train_tokenizer
    from angel_dist.trie.build import build_trie

    d = tmp_path_factory.mktemp("gpu-placement")
    table, _ = assemble_kb(pa.table({"cui": ["C1", "C1", "C2", "C3", "C4"],
                                     "name": ["renal failure", "kidney failure", "fever", "ataxia", "heart attack"]}))
    write_kb(table, d / "kb.parquet", {"format": "test"})
    train_tokenizer(d / "kb.parquet", 300, d / "tok", progress=False)
    tok = load_tokenizer(d / "tok")
    build_trie(d / "kb.parquet", tok, d / "trie", progress=False)
    save_model(load_model("tiny", tok, seed=0), tok, d / "model")
    write_bundle(BundleContents(model_dir=d / "model", trie_dir=d / "trie", name="gpu-placement",
                                origin={"kind": "test"}, made_from="a test", recipe={}, data=[], inputs=_inputs()),
                 d / "bundle")
    build_pretrain_corpus(d / "kb.parquet", str(d / "tok"), d / "examples", PretrainCorpusConfig(shards=1), workers=1,
                          progress=False)
    return d / "bundle"


def test_a_replica_given_no_gpu_links_on_the_cpu_where_cuda_is_visible(bundle, monkeypatch):
    from angel_dist.serve.app import LinkService

    _in_ray(monkeypatch, [], cuda=True, cuda_version="12.8")  # before, the linker took cuda here
    replica = LinkService.func_or_class(str(bundle), 5, 4, 0.005, 1)
    assert replica.linker.device == torch.device("cpu")
    assert next(replica.linker.model.parameters()).device == torch.device("cpu")


# -- on a Ray that gives out a GPU torch cannot use -------------------------------------------------

@pytest.fixture(scope="module")
def ray_with_a_gpu():
    """A local Ray that declares one GPU (ids 0): torch here is a CPU build. The session's Ray,
    when one runs, is back afterwards."""
    from angel_dist.ray_env import init_ray

    running = ray.is_initialized()
    ray.shutdown()
    init_ray(num_cpus=2, num_gpus=1)
    yield
    ray.shutdown()
    if running:
        init_ray(num_cpus=2)


REFUSAL = (f"angel: error: {socket.gethostname()}: Ray gave this process GPU(s) 0, but torch cannot use "
           f"CUDA here: torch {torch.__version__} (CUDA None: a CPU-only build), driver: ")


def _refused(capsys) -> str:
    err = capsys.readouterr().err
    assert REFUSAL in err and "Traceback" not in err and "ray::" not in err
    return err


def test_a_replica_given_a_gpu_refuses_to_start_on_the_cpu(ray_with_a_gpu, bundle, capsys):
    from angel_dist.serve import stop_service

    try:
        assert main(["serve", str(bundle), "--port", str(free_port()), "--gpus-per-replica", "1"]) == 2
    finally:
        stop_service()
    _refused(capsys)


def test_a_search_actor_given_a_gpu_refuses_to_start_on_the_cpu(ray_with_a_gpu, bundle, tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": "a", "text": "had a fever", "spans": [[6, 11]]}) + "\n")
    assert main(["annotate", "--model", str(bundle), "--input", str(tmp_path / "in.jsonl"), "--format", "jsonl",
                 "--out", str(tmp_path / "out"), "--gpus-per-actor", "1", "--quiet"]) == 2
    _refused(capsys)


def test_a_training_rank_given_a_gpu_refuses_to_start_on_the_cpu(ray_with_a_gpu, bundle, tmp_path, capsys):
    assert main(["train", "--data", str(bundle.parent / "examples"), "--tokenizer", str(bundle), "--out",
                 str(tmp_path / "run"),
                 "--gpus-per-worker", "1", "--quiet"]) == 2
    _refused(capsys)
