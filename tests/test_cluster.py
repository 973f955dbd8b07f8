"""Several Ray nodes on 127.0.0.1 (ray.cluster_utils.Cluster): a reduced demo recipe with its
training ranks on two nodes and its mining actors on two nodes, where each ran (run.json); the
node-local all-reduce off across nodes with the same losses; a node lost while mining and one
lost while training, the run completing with the same pairs and every sample read once.

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
from angel_dist.train.loop import KEYS_ENV, PLACEMENT_FILE
from angel_dist.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
NODES = {"a": {"num_cpus": 2, "resources": {"train": 1, "solo": 2}}, "b": {"num_cpus": 2, "resources": {"train": 1}}}
# The demo recipe, reduced: 100 HPO terms, a few steps, one round; no held-out synonyms (no evaluation pools).
REDUCED_DEMO = ["kb.limit=100", "kb.holdout=0", "tokenizer.vocab_size=600", "corpus.shards=4",
                "ds_config=ds_configs/ddp.json", "workers=2", "worker_resources={train: 1}",
                "pretrain={max_steps: 8, lr: 3.0e-3, batch_size: 8, log_every: 2, save_every: 1000, warmup_steps: 0}",
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
    with pytest.MonkeyPatch.context() as env:
        # Test time only: Ray Train's controller polls its workers every 2 s and starts a watcher
        # of node preemptions (which these tests do not use) for every run; Ray Train forwards both.
        env.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        env.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        cluster = Nodes()
        yield cluster
        cluster.shutdown()


@pytest.fixture(scope="module")
def demo(nodes, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cluster") / "demo"
    recipe = load_recipe(ROOT / "launchers" / "recipes" / "demo-hpo.yaml", REDUCED_DEMO)
    run_pipeline(recipe, run_dir, progress=False)
    return run_dir, json.loads((run_dir / "run.json").read_text())


def test_run_json_records_where_each_rank_and_actor_ran(nodes, demo):
    _, run = demo
    stages = run["stages"]
    assert stages["report"]["status"] == "done"
    (train,) = stages["pretrain"]["placement"]
    (start,) = train["starts"]
    assert start["world"] == 2 and not start["node_local_all_reduce"]  # ranks on two nodes: gloo only
    assert sorted(nodes.name_of(r["node_id"]) for r in start["ranks"]) == ["a", "b"]
    assert {r["ip"] for r in start["ranks"]} == {"127.0.0.1"}
    mining = next(p for p in stages["pretrain-round-1"]["placement"] if p["kind"] == "actors")
    assert mining["method"] == "mine" and {nodes.name_of(a["node_id"]) for a in mining["actors"]} == {"a", "b"}
    assert sorted(i for a in mining["actors"] for i in a["shards"]) == [0, 1, 2, 3]


def test_node_local_all_reduce_only_within_a_node_and_the_losses_agree(nodes, demo, tmp_path):
    run_dir, _ = demo
    across = run_dir / "train" / "pretrain"
    config = json.loads((across / "train_config.json").read_text())
    solo = tmp_path / "solo"
    run_training(TrainConfig.from_dict({**config, "out": str(solo), "worker_resources": {"solo": 1}}))
    (start,) = json.loads((solo / PLACEMENT_FILE).read_text())
    assert start["node_local_all_reduce"] and {nodes.name_of(r["node_id"]) for r in start["ranks"]} == {"a"}
    # Two ranks: each gradient element is one sum of two halves (scaled exactly by 1/2), the same
    # float whichever rank's half comes first, through gloo or DeepSpeed's shared memory alike.
    assert [m["loss"] for m in read_metrics(solo)] == [m["loss"] for m in read_metrics(across)]
    assert len(read_metrics(solo)) == 4


def test_a_node_lost_while_mining_redoes_its_shards_elsewhere_with_the_same_pairs(nodes, demo, tmp_path):
    from angel_dist.mine import MineConfig, mine

    run_dir, run = demo
    round_ = run["stages"]["pretrain-round-1"]["outputs"]
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
    assert [s["sha256"] for s in manifest["shards"]] == \
        [s["sha256"] for s in read_manifest(round_["pairs"])["shards"]]


def test_a_node_lost_while_training_resumes_on_fewer_ranks_reading_every_sample_once(nodes, demo, tmp_path,
                                                                                      monkeypatch):
    run_dir, _ = demo
    config = json.loads((run_dir / "train" / "pretrain" / "train_config.json").read_text())
    out, keys = tmp_path / "elastic", tmp_path / "keys.jsonl"
    monkeypatch.setenv(KEYS_ENV, str(keys))
    cfg = TrainConfig.from_dict({**config, "out": str(out), "ds_config": str(ROOT / "ds_configs" / "zero2.json"),
                                 "workers": [1, 2], "max_steps": None, "epochs": 1.0, "batch_size": 16,
                                 "save_every": 4, "keep_last": 100, "max_failures": 1})

    def remove_b_after_the_first_checkpoint():
        latest = out / "checkpoints" / "latest"
        while not latest.exists():
            threading.Event().wait(0.2)
        nodes.remove("b")

    remover = threading.Thread(target=remove_b_after_the_first_checkpoint, daemon=True)
    remover.start()
    try:
        run_training(cfg)
    finally:
        remover.join(timeout=60)
        nodes.restore()
    first, second = json.loads((out / PLACEMENT_FILE).read_text())
    assert first["world"] == 2 and {nodes.name_of(r["node_id"]) for r in first["ranks"]} == {"a", "b"}
    assert second["world"] == 1 and nodes.name_of(second["ranks"][0]["node_id"]) == "a"
    assert not first["node_local_all_reduce"] and not second["node_local_all_reduce"]
    assert second["from_step"] > 0 and second["from_step"] % 4 == 0
    assert (out / "checkpoints" / f"step-{second['from_step']:08d}.universal").is_dir()

    # Every step counts once, from the start that finished it: a start redoes the steps after the
    # checkpoint it resumed from. Concatenated by step and rank, the keys are the epoch's sequence.
    kept: dict[int, list] = {}
    for line in keys.read_text().splitlines():
        rec = json.loads(line)
        if (rec["from"], rec["world"]) != kept.get(rec["step"], [(None, None)])[0]:
            kept[rec["step"]] = [(rec["from"], rec["world"])]
        kept[rec["step"]].append((rec["rank"], rec["keys"]))
    read = [key for step in sorted(kept) for _, batch in sorted(kept[step][1:]) for key in batch]
    reader = ShardLoader(cfg.data, ReaderConfig(batch_size=cfg.batch_size, seed=cfg.seed,
                                                shuffle_buffer=cfg.shuffle_buffer, bucket=cfg.bucket))
    sequence = [key for batch in reader for key in batch["keys"]]  # one rank's view: the whole epoch
    assert read == sequence  # none left out, none read twice, the epoch ends where it should
    tag = (out / "checkpoints" / "latest").read_text()
    meta = json.loads((out / "checkpoints" / tag / "meta.json").read_text())
    assert meta["world_size"] == 1 and meta["reader"]["consumed"] == len(sequence)


def test_too_few_nodes_for_the_workers_wait_then_fail_with_a_clear_message(nodes, demo, tmp_path, capsys):
    run_dir, _ = demo
    config = json.loads((run_dir / "train" / "pretrain" / "train_config.json").read_text())
    cfg = TrainConfig.from_dict({**config, "out": str(tmp_path / "three"), "workers": 3, "capacity_timeout": 3.0})
    with pytest.raises(TimeoutError, match=r"hold 2 of the 3 worker\(s\) of .*'train': 1\.0.*after \d+ s"):
        run_training(cfg)
    assert "waiting up to 3 s for capacity" in capsys.readouterr().out
