"""Several Ray nodes on 127.0.0.1 (ray.cluster_utils.Cluster): a reduced demo recipe whose training
ranks run on two nodes and whose mining actors run on two, one node lost while it trains (the run
resumes on the node left and completes) and one lost while it mines (its shards are redone
elsewhere, the pairs the same); where each rank and actor ran (run.json); the node-local
all-reduce off across nodes with the same losses as on one node; a run short of nodes.

One cluster for the module: a head that runs no work (the driver's node, no CPUs: Ray Train's
controller and this process live there) and two worker nodes of 2 CPUs, each with one `train`
slot (one rank per node) and node A with two `solo` slots (both ranks on one node).
"""

import json
import threading
from pathlib import Path

import pytest

from angel_dist.pipeline import load_recipe, run_pipeline
from angel_dist.placement import recording
from angel_dist.shards.reader import ReaderConfig, ShardLoader
from angel_dist.shards.writer import read_manifest
from angel_dist.train import TrainConfig
from angel_dist.train.launch import run_training
from angel_dist.train.loop import KEYS_ENV, PLACEMENT_FILE, planned_steps
from angel_dist.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
NODES = {"a": {"num_cpus": 2, "resources": {"train": 1, "solo": 2}}, "b": {"num_cpus": 2, "resources": {"train": 1}}}
# The demo recipe, reduced: 100 HPO terms, a few steps, one round, no held-out synonyms (no evaluation
# pools). Stage 0 (ddp.json) in fp32, so gradients go through the all-reduce the node-local switch
# picks; ranks on 1 or 2 nodes, one restart allowed; a constant learning rate, so the first steps of a
# run do not depend on how many it has.
REDUCED_DEMO = ["kb.limit=100", "kb.holdout=0", "tokenizer.vocab_size=600", "corpus.shards=4",
                "ds_config=ds_configs/ddp.json", "workers=[1, 2]", "worker_resources={train: 1}",
                "pretrain={max_steps: 14, lr: 3.0e-3, batch_size: 8, log_every: 1, save_every: 2, "
                "warmup_steps: 0, schedule: constant, max_failures: 1}",
                "pretrain_rounds.rounds=1", "pretrain_rounds.fraction=1.0", "pretrain_rounds.train.max_steps=2",
                "mine.actors=2", "mine.placement=SPREAD", "mine.beams=5", "mine.dpo_topk=3", "evaluate.k=3"]


class Nodes:
    """The module's cluster: nodes by name, removed and added back by the tests."""

    def __init__(self):
        import ray
        from ray.cluster_utils import Cluster

        from angel_dist.ray_env import _stay_on_loopback

        if ray.is_initialized():  # another module's local Ray
            ray.shutdown()
        _stay_on_loopback()
        self.common = {"node_ip_address": "127.0.0.1", "object_store_memory": 100 * 2 ** 20}
        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                                     **self.common})
        self.nodes, self.names = {}, {}  # name -> live node; node id -> name, removed nodes included
        self.restore()
        ray.init(address=self.cluster.address, log_to_driver=False)

    def id(self, name: str) -> str:
        return self.nodes[name].node_id

    def name_of(self, node_id: str) -> str:
        return self.names[node_id]

    def remove(self, name: str) -> None:
        self.cluster.remove_node(self.nodes.pop(name))

    def restore(self) -> None:
        for name, spec in NODES.items():
            if name not in self.nodes:
                self.nodes[name] = self.cluster.add_node(**spec, **self.common)
                self.names[self.nodes[name].node_id] = name

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def nodes():
    cluster = Nodes()
    yield cluster
    cluster.shutdown()


def _wait_for(predicate, stop: threading.Event) -> bool:
    while not predicate():
        if stop.wait(0.05):
            return False
    return True


def _read_json_or(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


@pytest.fixture(scope="module")
def demo(nodes, tmp_path_factory):
    """The reduced demo, with node B removed once pretraining has saved its first checkpoint and
    added back once the run has restarted on the node left. The pipeline runs in a thread: Ray
    adds nodes from the main thread only."""
    work = tmp_path_factory.mktemp("cluster")
    run_dir, keys = work / "demo", work / "keys.jsonl"
    pretrain = run_dir / "train" / "pretrain"
    recipe = load_recipe(ROOT / "launchers" / "recipes" / "demo-hpo.yaml", REDUCED_DEMO)
    done, failed = threading.Event(), []

    def pipeline():
        try:
            run_pipeline(recipe, run_dir, progress=False)
        except BaseException as e:  # raised again in the test's thread
            failed.append(e)
        finally:
            done.set()

    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEYS_ENV, str(keys))
        threading.Thread(target=pipeline, daemon=True).start()
        try:
            assert _wait_for(lambda: (pretrain / "checkpoints" / "latest").exists(), done), failed
            nodes.remove("b")
            _wait_for(lambda: len(_read_json_or(pretrain / PLACEMENT_FILE, [])) == 2, done)
        finally:
            nodes.restore()
            done.wait()
    if failed:
        raise failed[0]
    return run_dir, json.loads((run_dir / "run.json").read_text()), keys


def test_run_json_records_where_each_rank_and_actor_ran(nodes, demo):
    _, run, _ = demo
    stages = run["stages"]
    assert stages["report"]["status"] == "done"
    (train,) = stages["pretrain"]["placement"]
    first, second = train["starts"]  # node B lost after the first checkpoint
    assert first["world"] == 2 and sorted(nodes.name_of(r["node_id"]) for r in first["ranks"]) == ["a", "b"]
    assert not first["node_local_all_reduce"]  # ranks on two nodes: gloo only
    assert second["world"] == 1 and nodes.name_of(second["ranks"][0]["node_id"]) == "a"
    assert {r["ip"] for r in first["ranks"] + second["ranks"]} == {"127.0.0.1"}
    mining, dpo = stages["pretrain-round-1"]["placement"]  # node B back by then
    assert mining["method"] == "mine" and {nodes.name_of(a["node_id"]) for a in mining["actors"]} == {"a", "b"}
    assert sorted(i for a in mining["actors"] for i in a["shards"]) == [0, 1, 2, 3]
    assert dpo["kind"] == "train" and {nodes.name_of(r["node_id"]) for r in dpo["starts"][0]["ranks"]} == {"a", "b"}


def test_a_node_lost_while_training_resumes_on_the_node_left_reading_every_sample_once(demo):
    run_dir, run, keys = demo
    pretrain = run_dir / "train" / "pretrain"
    first, second = json.loads((pretrain / PLACEMENT_FILE).read_text())
    assert second["from_step"] > 0 and second["from_step"] % 2 == 0  # from a checkpoint
    assert [m["step"] for m in read_metrics(pretrain)] == list(range(1, 15))  # steps after it redone, logged once
    # Every step counts once, from the start that finished it (a start redoes the steps after the
    # checkpoint it resumed from). By step and rank, the keys read are the reader's sequence.
    kept: dict[int, list] = {}
    for line in keys.read_text().splitlines():
        rec = json.loads(line)
        if rec["run"] != "pretrain":
            continue
        if (rec["from"], rec["world"]) != kept.get(rec["step"], [(None, None)])[0]:
            kept[rec["step"]] = [(rec["from"], rec["world"])]
        kept[rec["step"]].append((rec["rank"], rec["keys"]))
    read = [key for step in sorted(kept) for _, batch in sorted(kept[step][1:]) for key in batch]
    config = json.loads((pretrain / "train_config.json").read_text())
    reader = ShardLoader(config["data"], ReaderConfig(batch_size=8, seed=config["seed"],
                                                      shuffle_buffer=config["shuffle_buffer"], bucket=config["bucket"]))
    sequence = [key for batch in reader for key in batch["keys"]]  # one rank's view of the epoch
    assert sorted(kept) == list(range(1, 15)) and [len(kept[s]) - 1 for s in (1, 14)] == [2, 1]
    assert read == sequence[:second["from_step"] * 16 + (14 - second["from_step"]) * 8]


def test_an_epoch_ends_at_the_same_place_in_the_data_on_another_world_size(demo):
    run_dir, _, _ = demo
    data = [str(run_dir / "shards" / "pretrain")]
    cfg = TrainConfig(data=data, batch_size=8, epochs=1.0)
    two = ShardLoader(data, ReaderConfig(batch_size=8), rank=0, world_size=2)
    one = ShardLoader(data, ReaderConfig(batch_size=8), rank=0, world_size=1)
    total = two.stream.total
    two_steps = planned_steps(cfg, two, 0)
    assert two_steps * 16 == total - total % 16  # the uninterrupted run of two ranks
    one.load_state_dict({**two.state_dict(), "consumed": 3 * 16})  # resumed after 3 steps on one rank
    resumed_end = planned_steps(cfg, one, 3)
    assert 3 * 16 + (resumed_end - 3) * 8 == total - total % 8  # to the same epoch's end, nothing twice


def test_node_local_all_reduce_only_within_a_node_and_the_losses_agree(nodes, demo, tmp_path):
    run_dir, _, _ = demo
    across = run_dir / "train" / "pretrain"
    config = json.loads((across / "train_config.json").read_text())
    solo = tmp_path / "solo"
    run_training(TrainConfig.from_dict({**config, "out": str(solo), "workers": 2, "worker_resources": {"solo": 1},
                                        "max_steps": 4}))
    (start,) = json.loads((solo / PLACEMENT_FILE).read_text())
    assert start["node_local_all_reduce"] and {nodes.name_of(r["node_id"]) for r in start["ranks"]} == {"a"}
    # Two ranks: each gradient element is one sum of two halves (scaled exactly by 1/2), the same
    # float whichever rank's half comes first, through gloo or DeepSpeed's shared memory alike.
    # The pretraining's steps up to its restart ran on two nodes, before node B was lost.
    on_two_nodes = json.loads((across / PLACEMENT_FILE).read_text())[1]["from_step"]
    n = min(on_two_nodes, 4)
    assert n >= 2 and [m["loss"] for m in read_metrics(solo)][:n] == [m["loss"] for m in read_metrics(across)][:n]


def test_a_node_lost_while_mining_redoes_its_shards_elsewhere_with_the_same_pairs(nodes, demo, tmp_path):
    from angel_dist.mine import MineConfig, mine

    run_dir, run, _ = demo
    recipe = load_recipe(ROOT / "launchers" / "recipes" / "demo-hpo.yaml", REDUCED_DEMO)
    m = recipe.mine
    lost, other = [], []

    def remove_a_node_at_work(result):  # the first shard's actor is on its next shard by now
        if not lost:
            lost.append(result["node_id"])
            other.append(next(nodes.id(n) for n in nodes.nodes if nodes.id(n) != lost[0]))
            nodes.remove(nodes.name_of(lost[0]))

    try:
        with recording() as placed:
            manifest = mine(MineConfig(model=run["stages"]["pretrain"]["outputs"]["model"],
                                       trie=str(run_dir / "trie"), data=str(run_dir / "shards" / "pretrain"),
                                       out=str(tmp_path / "pairs"), actors=m.actors, beams=m.beams,
                                       dpo_topk=m.dpo_topk, round=1, seed=recipe.seed,
                                       fraction=recipe.pretrain_rounds.fraction, batch_size=m.batch_size,
                                       placement=m.placement, progress=False), on_shard=remove_a_node_at_work)
    finally:
        nodes.restore()
    # The lost node's actor came back on the other node and did the shard it was given there again.
    (pool,) = placed
    lost_actor = next(a["actor"] for a in pool["actors"] if a["node_id"] == lost[0])
    assert {a["node_id"] for a in pool["actors"] if a["actor"] == lost_actor} == {lost[0], other[0]}
    assert sorted(i for a in pool["actors"] for i in a["shards"]) == [0, 1, 2, 3]
    pairs = run["stages"]["pretrain-round-1"]["outputs"]["pairs"]
    assert manifest["total"] > 0 and [s["sha256"] for s in manifest["shards"]] == \
        [s["sha256"] for s in read_manifest(pairs)["shards"]]


def test_too_few_nodes_for_the_workers_wait_then_fail_with_a_clear_message(nodes, demo, tmp_path, capsys):
    run_dir, _, _ = demo
    config = json.loads((run_dir / "train" / "pretrain" / "train_config.json").read_text())
    cfg = TrainConfig.from_dict({**config, "out": str(tmp_path / "three"), "workers": 3, "capacity_timeout": 3.0})
    with pytest.raises(TimeoutError, match=r"hold 2 of the 3 worker\(s\) of .*'train': 1\.0.*after \d+ s"):
        run_training(cfg)
    assert "waiting up to 3 s for capacity" in capsys.readouterr().out
