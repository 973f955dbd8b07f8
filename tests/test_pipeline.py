"""The pipeline: typed recipes, the demo's held-out synonyms, and a whole run submitted with
`ray job submit` to a local head on 127.0.0.1, crashed mid-training and mid-mining, resumed."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from angel_dist.cli import main
from angel_dist.corpus.mention_examples import MentionInputConfig
from angel_dist.pipeline import load_recipe
from angel_dist.pipeline.holdout import hold_out
from angel_dist.pipeline.state import RunState
from angel_dist.shards.writer import read_manifest
from conftest import DATA, free_port, needs_data

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_recipe_keys_are_errors_naming_the_key(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"kb": {"format": "obo", "sorce": "hpo"}}))
    with pytest.raises(ValueError, match="kb.sorce: unknown recipe key"):
        load_recipe(recipe)
    with pytest.raises(ValueError, match="pretrain_rounds.train.betta: unknown train setting"):
        load_recipe(None, ["pretrain_rounds.train.betta=0.1"])
    with pytest.raises(ValueError, match="pretrain.out: set by the pipeline"):
        load_recipe(None, ["pretrain.out=/x"])
    with pytest.raises(ValueError, match="mine.actors: expected an integer"):
        load_recipe(None, ["mine.actors=two"])
    assert main(["run", str(recipe), "--run-dir", str(tmp_path / "run")]) == 2
    assert "kb.sorce" in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, message", [
    ("kb.source=[a, b]", r"kb.source: expected a string, got \['a', 'b'\]"),
    ("benchmark.syn_k={k: 3}", "benchmark.syn_k: expected an integer"),
    ("pretrain.save_every=0", "pretrain.save_every: expected an integer >= 1, got 0"),
    ("pretrain.epochs=-1", "pretrain.epochs: expected a number > 0"),
    ("finetune.lr=0", "finetune.lr: expected a number > 0"),
    ("pretrain.lr=.nan", "pretrain.lr: expected a finite number"),
    ("pretrain_rounds.train.beta=.inf", "pretrain_rounds.train.beta: expected a finite number"),
    ("workers=0", "workers: expected an integer >= 1"),
    ("corpus.shards=0", "corpus.shards: expected an integer >= 1"),
    ("mine.beams=0", "mine.beams: expected an integer >= 1"),
    ("mine.dpo_topk=11", r"mine.dpo_topk: expected at most beams \(10\), got 11"),
    ("kb.holdout=1.5", r"kb.holdout: expected a number in \[0, 1\), got 1.5"),
    ("kb.format=xml", "kb.format: expected one of 'umls', 'obo', 'medic', 'target-kb', got 'xml'"),
    ("corpus.mention_scheme=closest", "corpus.mention_scheme: expected one of 'random', 'most_sim'"),
    ("benchmark.context=paragraph", "benchmark.context: expected one of 'sentence', 'document'"),
    ("benchmark.lowercase=maybe", "benchmark.lowercase: expected"),
    ("mine.stop=never", "mine.stop: expected one of 'exact', 'heuristic', 'fairseq', got 'never'"),
    ("benchmark.composites=merge", "benchmark.composites: expected one of 'keep', 'drop', 'split'"),
    ("benchmark.train_includes_dev=true", "benchmark.train_includes_dev: needs benchmark.train and benchmark.dev"),
    ("kb.add_train_mentions=true", "kb.add_train_mentions: needs benchmark.train"),
    ("finetune_rounds.train.schedule=cosine", "finetune_rounds.train.schedule: expected one of"),
    ("pretrain_rounds.train.dpo_loss=kto", "pretrain_rounds.train.dpo_loss: expected one of 'sigmoid'"),
    ("pretrain_rounds.fraction=0", r"pretrain_rounds.fraction: expected a number in \(0, 1\]"),
    ("tokenizer.vocab_size=100", "tokenizer.vocab_size: expected an integer >= 262"),
    ("kb.source=missing.obo", "kb.source: missing.obo: no such file"),
    ("benchmark.dev=missing-dev.txt", "benchmark.dev: missing-dev.txt: no such file"),
    ("tokenizer.path=./no-tokenizer", "tokenizer.path: ./no-tokenizer: no such directory"),
    ("ds_config=ds_configs/none.json", "ds_config: ds_configs/none.json: not found"),
])
def test_recipe_values_are_checked_before_anything_runs(override, message, tmp_path, capsys):
    with pytest.raises(ValueError, match=message):
        load_recipe(None, [override])
    assert main(["run", str(ROOT / "launchers" / "recipes" / "demo-hpo.yaml"), override, "--run-dir",
                 str(tmp_path / "run")]) == 2
    assert message.split(":")[0] in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_shipped_recipes_load_and_overrides_apply():
    for name in ("demo-hpo", "ncbi-medic", "bc5cdr-medic", "umls-pretrain"):  # their inputs are on other machines
        load_recipe(ROOT / "launchers" / "recipes" / f"{name}.yaml", inputs=False)
    r = load_recipe(ROOT / "launchers" / "recipes" / "demo-hpo.yaml", ["pretrain.lr=0.01", "kb.limit=10"])
    assert r.pretrain["lr"] == 0.01 and r.pretrain["batch_size"] == 32 and r.kb.limit == 10
    assert r.benchmark.inputs() == MentionInputConfig()  # GenBioEL's inputs unless a recipe says otherwise
    r = load_recipe(None, ["benchmark.context=sentence", "benchmark.abbreviations=false"])
    assert r.benchmark.inputs() == MentionInputConfig("sentence", abbreviations=False)
    with pytest.raises(ValueError, match="kb.source: /data/umls/META: no such directory"):
        load_recipe(ROOT / "launchers" / "recipes" / "umls-pretrain.yaml")


def test_recipes_take_presets_of_both_families_and_demo_model_is_that_override(monkeypatch):
    import angel_dist.cli as cli
    from angel_dist.model import PRESETS

    demo = ROOT / "launchers" / "recipes" / "demo-hpo.yaml"
    for preset in ("tiny", "tiny-causal", "small-causal", "base-causal"):
        assert preset in PRESETS and load_recipe(demo, [f"model={preset}"]).model == preset
    with pytest.raises(ValueError, match="model: ./no-model: no such directory"):
        load_recipe(demo, ["model=./no-model"])
    seen = {}
    monkeypatch.setattr(cli, "_run", lambda args: seen.update(vars(args)))
    assert main(["demo", "--model", "tiny-causal", "pretrain.lr=0.01", "--run-dir", "runs/x"]) == 0
    assert seen["overrides"] == ["pretrain.lr=0.01", "model=tiny-causal"] and seen["recipe"].endswith("demo-hpo.yaml")


@needs_data
def test_kb_stage_adds_the_training_mentions_and_only_those(tmp_path):
    from angel_dist.corpus.pubtator import read_pubtator
    from angel_dist.kb.normalize import normalize_name
    from angel_dist.kb.table import read_kb
    from angel_dist.pipeline.run import Pipeline

    recipe = load_recipe(None, ["kb.format=medic", f"kb.source={DATA}/kb/medic_06Jul2012.txt",
                                f"benchmark.train={DATA}/ncbi/NCBItrainset_corpus.txt",
                                f"benchmark.dev={DATA}/ncbi/NCBIdevelopset_corpus.txt", "kb.add_train_mentions=true",
                                "benchmark.abbreviations=false"])
    out = Pipeline(recipe, tmp_path / "run", progress=False).build_kb()
    source, kb = read_kb(tmp_path / "run" / "kb" / "source.parquet"), read_kb(out["kb"])
    added = [n for old, new in zip(source["names"].to_pylist(), kb["names"].to_pylist()) for n in new[len(old):]]
    assert len(added) == out["train_mentions"]["train_names_added"] > 500

    def strings(split):
        return {normalize_name(m.text) for d in read_pubtator(DATA / "ncbi" / split) for m in d.mentions}

    train = strings("NCBItrainset_corpus.txt")
    assert set(added) <= train and not set(added) & (strings("NCBIdevelopset_corpus.txt") - train)


@pytest.mark.parametrize("includes_dev, kept, ran", [(False, "m2", 5), (True, "m10", 10)])
def test_finetuning_rounds_keep_the_best_on_dev_or_the_last_when_dev_is_trained_on(tmp_path, monkeypatch,
                                                                                   includes_dev, kept, ran):
    from angel_dist.pipeline.run import Pipeline

    acc = [0.0, 0.5, 0.6, 0.4, 0.55, 0.3, 0.9, 0.2, 0.1, 0.1, 0.1]  # dev acc@1 after round i
    seen = []

    def fake_round(self, name, phase, i, cfg, model, data, trie, evals, seed=None):
        seen.append(i)
        return {"model": f"m{i}", "dev_acc1": acc[i]}

    monkeypatch.setattr(Pipeline, "round", fake_round)
    recipe = load_recipe(None, ["benchmark.train=t.txt", "benchmark.dev=d.txt",
                                f"benchmark.train_includes_dev={str(includes_dev).lower()}"], inputs=False)
    pipeline = Pipeline(recipe, tmp_path / "run", progress=False)
    best = pipeline.rounds("finetune", recipe.finetune_rounds, {"model": "m0"}, "data", "trie", {})
    assert best["model"] == kept and seen == list(range(1, ran + 1))


def test_the_final_table_reads_in_the_flows_order_whatever_the_stored_order():
    from angel_dist.report import accuracy_table

    scores = {"dev": {"acc@1": 0.5, "acc@5": 0.75}}
    stored = {name: scores for name in sorted(["positive-only", "angel", "char TF-IDF nearest name",
                                               "positive-only + NLL (matched steps)", "another"])}
    rows = [line.split(" | ")[0][2:] for line in accuracy_table(stored, 5).splitlines()[2:]]
    assert rows == ["positive-only", "positive-only + NLL (matched steps)", "angel", "char TF-IDF nearest name",
                    "another"]
    assert accuracy_table(stored, 5).splitlines()[2].endswith("| 50.00 | 75.00 |")


def test_seed_summary_means_sample_sds_and_paired_differences():
    from angel_dist.pipeline.seeds import seed_summary

    positive = {"dev": {"acc@1": 0.5, "acc@5": 0.7, "mentions": 10}}
    per_seed = {s: {"angel": {"dev": {"acc@1": a1, "acc@5": 0.8}}, "matched": {"dev": {"acc@1": m1, "acc@5": m5}}}
                for s, a1, m1, m5 in (("0", 0.6, 0.5, 0.8), ("1", 0.7, 0.6, 0.7), ("2", 0.8, 0.4, 0.9))}
    dev = seed_summary(positive, per_seed)["dev"]
    assert set(dev) == {"acc@1", "acc@5"}  # acc@ metrics only
    one, five = dev["acc@1"], dev["acc@5"]
    # by hand: ANGEL 0.6, 0.7, 0.8; matched 0.5, 0.6, 0.4; paired 0.1, 0.1, 0.4 (sd sqrt(0.06 / 2))
    assert one["positive-only"] == {"mean": 0.5, "sd": 0.0}
    assert (one["angel"]["mean"], one["angel"]["sd"]) == (pytest.approx(0.7), pytest.approx(0.1))
    assert (one["matched"]["mean"], one["matched"]["sd"]) == (pytest.approx(0.5), pytest.approx(0.1))
    paired = one["angel - matched"]
    assert paired["per_seed"] == pytest.approx({"0": 0.1, "1": 0.1, "2": 0.4})
    assert (paired["mean"], paired["sd"]) == (pytest.approx(0.2), pytest.approx(0.1732050808))
    assert five["angel"]["sd"] == 0.0 and five["matched"]["sd"] == pytest.approx(0.1)
    assert (five["angel - matched"]["mean"], five["angel - matched"]["sd"]) == (pytest.approx(0), pytest.approx(0.1))
    single = seed_summary(positive, {"0": per_seed["0"]})["dev"]["acc@1"]
    assert single["angel"] == {"mean": 0.6, "sd": None}  # one seed: no spread


def test_seeds_added_to_a_finished_run_run_only_their_stages(tmp_path, monkeypatch, capsys):
    """Stages without training or searches: every model's scores are a function of its name."""
    import zlib

    import angel_dist.mine
    from angel_dist.pipeline.run import Pipeline

    trained, mined, scored, crash = [], [], [], {"seed-2/pretrain-round-2"}

    def fake_train(self, name, objective, data, model, settings):
        trained.append((name, settings))
        if name in crash:
            crash.remove(name)
            raise RuntimeError(f"killed in {name}")
        steps = settings.get("max_steps") or 5 + settings.get("seed", 0)  # a seed's rounds: 5 + seed steps each
        return {"model": f"model:{name}", "steps": steps}

    def fake_mine(cfg, on_shard=None):
        mined.append((cfg.out, cfg.seed))
        return {"total": 8, "stats": {}}

    def fake_evaluate(self, model, trie, evals):
        scored.append(model)
        acc = zlib.crc32(model.encode()) % 1000 / 1000
        return {split: {"acc@1": acc, "acc@5": min(1.0, acc + 0.1), "mentions": 10} for split in evals}

    for name, fn in {"build_kb": lambda self: {"kb": "kb"}, "tokenizer": lambda self, kb: {"tokenizer": "tok"},
                     "trie": lambda self, kb, tok: {"trie": "trie"},
                     "corpora": lambda self, kb, tok: {"pretrain": "p", "dev": "d", "test": "t"},
                     "train": fake_train, "evaluate": fake_evaluate, "export": lambda self, model: {"from": model},
                     "tfidf_baseline": lambda self, trie, evals: fake_evaluate(self, "tfidf", trie, evals)}.items():
        monkeypatch.setattr(Pipeline, name, fn)
    monkeypatch.setattr(angel_dist.mine, "mine", fake_mine)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"seed": 0, "pretrain_rounds": {"rounds": 2, "patience": 3}}))
    run = tmp_path / "run"
    assert main(["run", str(recipe), "--run-dir", str(run), "--quiet"]) == 0  # the finished run, without seeds
    before = dict(trained)
    assert set(before) == {"pretrain", "pretrain-round-1", "pretrain-round-2"} and "## Seeds" not in (
        run / "report.md").read_text()
    trained.clear(), mined.clear()

    with pytest.raises(RuntimeError, match="killed in seed-2/pretrain-round-2"):
        main(["run", str(recipe), "seeds=[0, 1, 2]", "--run-dir", str(run), "--quiet"])
    assert json.loads((run / "run.json").read_text())["stages"]["seed-2/pretrain-round-2"]["status"] == "running"
    assert main(["run", str(recipe), "seeds=[0, 1, 2]", "--run-dir", str(run), "--quiet"]) == 0  # resumes
    assert "ANGEL − matched (paired)" in capsys.readouterr().out
    stages = json.loads((run / "run.json").read_text())["stages"]
    # seed 0 is the recipe's: its rounds are the run's own; the others have stages of their own
    assert [name for name, _ in trained] == ["matched-nll", "seed-1/pretrain-round-1", "seed-1/pretrain-round-2",
                                             "seed-1/matched-nll", "seed-2/pretrain-round-1",
                                             "seed-2/pretrain-round-2", "seed-2/pretrain-round-2",
                                             "seed-2/matched-nll"]
    assert all(settings["seed"] == int(name[5]) for name, settings in trained if name.startswith("seed-"))
    assert [seed for _, seed in mined] == [1, 1, 2, 2, 2] and len({out for out, _ in mined}) == 4
    for seed, prefix in ((0, ""), (1, "seed-1/"), (2, "seed-2/")):
        rounds = [stages[f"{prefix}pretrain-round-{i}"]["outputs"]["steps"] for i in (1, 2)]
        assert rounds == [5 + seed] * 2 and stages[f"{prefix}matched-nll"]["outputs"]["steps"] == sum(rounds)
    summary = stages["seeds"]["outputs"]
    assert list(summary["per_seed"]) == ["0", "1", "2"] and summary["per_seed"]["1"]["steps"] == 12
    for seed, prefix in (("0", ""), ("1", "seed-1/"), ("2", "seed-2/")):  # each seed's best by dev (the first)
        seen = [stages[name]["outputs"] for name in ("pretrain-eval", f"{prefix}pretrain-round-1",
                                                      f"{prefix}pretrain-round-2")]
        assert summary["per_seed"][seed]["angel"] == max(seen, key=lambda out: out["dev_acc1"])["model"]
    assert len(scored) == len(set(scored))  # every model scored once
    report = (run / "report.md").read_text()
    assert "## Seeds" in report and "| seed 2: ANGEL − matched (paired) |" in report

    text, trained[:], mined[:], scored[:] = (run / "run.json").read_text(), [], [], []
    assert main(["run", str(recipe), "seeds=[0, 1, 2]", "--run-dir", str(run), "--quiet"]) == 0  # a no-op rerun
    assert (run / "run.json").read_text() == text and not (trained or mined or scored)


def test_a_run_directory_refuses_another_recipe(tmp_path):
    a, b = load_recipe(None), load_recipe(None, ["kb.limit=5"])
    from dataclasses import asdict

    RunState(tmp_path, asdict(a), a.fingerprint())
    with pytest.raises(ValueError, match="kb.limit"):
        RunState(tmp_path, asdict(b), b.fingerprint())


def test_a_key_added_later_keeps_older_run_directories_at_its_default():
    import hashlib
    from dataclasses import asdict

    recipe = load_recipe(None)
    before = asdict(recipe)  # the recipe as it was written before mine.temperature existed
    del before["seeds"], before["mine"]["temperature"]
    assert recipe.fingerprint() == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert load_recipe(None, ["mine.temperature=0.7"]).fingerprint() != recipe.fingerprint()


def test_holdout_takes_synonyms_out_of_the_kb():
    kb = pa.table({"cui": ["A", "B", "C"], "names": [["a", "a1", "a2", "a3"], ["b", "shared"], ["c", "shared", "c1"]]})
    table, dev, test = hold_out(kb, 1.0, seed=0)
    held = dev + test
    assert sorted(held) == [("A", "a1"), ("A", "a2"), ("A", "a3"), ("C", "c1")]  # never a first or a shared name
    assert table["names"].to_pylist() == [["a"], ["b", "shared"], ["c", "shared"]]
    assert dev and test and not set(dev) & set(test)
    assert hold_out(kb, 1.0, seed=0)[1] == dev  # deterministic
    assert hold_out(kb, 0.0)[1:] == ([], [])


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head with a job server, on 127.0.0.1 only; stopped (only it) at the end."""
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    temp = tmp_path_factory.mktemp("ray")
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
         "--port", str(port), "--dashboard-port", str(dashboard), "--num-cpus", "2", "--include-dashboard", "true",
         "--disable-usage-stats", "--temp-dir", str(temp),
         # Free ports for the agents: another Ray on this machine (the session's local one) holds the defaults,
         # and a head whose job agent cannot bind never accepts a job.
         *[arg for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
                            "--runtime-env-agent-port") for arg in (flag, str(free_port()))]],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    for _ in range(120):
        try:
            with socket.create_connection(("127.0.0.1", dashboard), timeout=1):
                break
        except OSError:
            time.sleep(1)
    else:
        os.killpg(head.pid, signal.SIGTERM)
        pytest.fail("the Ray head did not come up")
    # The dashboard answers before its job agent registers ("No available agent to submit job").
    for _ in range(20):
        probe = subprocess.run(["ray", "job", "submit", "--address", address, "--", "python", "-c", "pass"], env=env,
                               capture_output=True, text=True, timeout=120)
        if probe.returncode == 0:
            break
        time.sleep(2)
    else:
        os.killpg(head.pid, signal.SIGTERM)
        pytest.fail(f"the Ray head accepts no jobs: {probe.stderr[-2000:]}")
    yield address, env
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=5)
    except subprocess.TimeoutExpired:  # its graceful stop takes half a minute; nothing of it is kept
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)


# An override on every submission, as `launchers/submit.sh RECIPE KEY=VALUE` passes it (after the
# options of `angel run`): the recipe file saves every 1000 steps, the runs every 10.
OVERRIDES = ["pretrain.save_every=10"]


def _submit(ray_head, recipe: Path, run_dir: Path, faults: dict | None = None) -> subprocess.CompletedProcess:
    address, env = ray_head
    env = {**env, "RAY_ADDRESS": address, "RUN_DIR": str(run_dir), "ENTRYPOINT_CPUS": "0",
           "ANGEL_ENV_JSON": json.dumps(faults or {})}
    done = subprocess.run(["bash", str(ROOT / "launchers" / "submit.sh"), str(recipe), *OVERRIDES], env=env,
                          capture_output=True, text=True, timeout=900)
    if done.returncode and not faults:
        print(done.stdout[-4000:], done.stderr[-4000:], file=sys.stderr)
    return done


def _pair_shards(run_dir: Path) -> dict:
    return {p.parent.name: [s["sha256"] for s in read_manifest(p)["shards"]]
            for p in sorted((run_dir / "rounds").glob("*/pairs"))}


def test_submitted_run_crashed_mid_training_and_mid_mining_resumes_to_the_same_result(ray_head, tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "tiny", "model": "tiny", "workers": 1,
        "kb": {"format": "obo", "source": "hpo", "limit": 120, "holdout": 0.3},
        "tokenizer": {"vocab_size": 700}, "corpus": {"shards": 2},
        "pretrain": {"max_steps": 30, "lr": 3e-3, "batch_size": 16, "save_every": 1000, "warmup_steps": 0},
        "pretrain_rounds": {"rounds": 1, "fraction": 1.0,
                            "train": {"lr": 1e-4, "batch_size": 8, "schedule": "constant", "max_steps": 4}},
        "mine": {"actors": 1, "beams": 5, "dpo_topk": 3}, "evaluate": {"k": 3}}))
    clean = tmp_path / "clean"
    done = _submit(ray_head, recipe, clean)
    assert done.returncode == 0
    run = json.loads((clean / "run.json").read_text())
    assert run["recipe"]["pretrain"]["save_every"] == 10  # the override reached `angel run`
    # The job's log (what `ray job submit` follows) carries rank 0's progress through the driver.
    assert "[angel] train pretrain: step 30/30 (100%), loss" in done.stdout
    starts = run["stages"]["pretrain"]["placement"][0]["starts"]  # where the ranks ran
    assert [(r["rank"], r["ip"]) for r in starts[0]["ranks"]] == [(0, "127.0.0.1")]
    table = run["stages"]["final-eval"]["outputs"]
    assert set(table) == {"positive-only", "angel", "char TF-IDF nearest name"}
    assert table["angel"]["dev"]["mentions"] == table["char TF-IDF nearest name"]["dev"]["mentions"] > 0
    assert (clean / "report.md").exists() and (clean / "rounds.png").exists() and (clean / "loss.png").exists()
    assert (clean / "model" / "config.json").exists()
    pairs = _pair_shards(clean)
    assert pairs and all(pairs.values())

    crashed = tmp_path / "crashed"
    faults = {"ANGEL_FAULT_INJECT": "0:20", "ANGEL_PIPELINE_FAULT": "pretrain-round-1:1"}
    assert _submit(ray_head, recipe, crashed, faults).returncode != 0  # a training worker dies at step 20
    state = json.loads((crashed / "run.json").read_text())["stages"]
    assert state["pretrain"]["status"] == "running"
    assert (crashed / "train" / "pretrain" / "checkpoints" / "latest").exists()
    assert _submit(ray_head, recipe, crashed, faults).returncode != 0  # the driver dies after one pair shard
    state = json.loads((crashed / "run.json").read_text())["stages"]
    assert state["pretrain"]["status"] == "done" and state["pretrain-round-1"]["status"] == "running"
    assert _submit(ray_head, recipe, crashed, faults).returncode == 0
    assert json.loads((crashed / "run.json").read_text())["stages"]["final-eval"]["outputs"] == table
    assert _pair_shards(crashed) == pairs

    assert main(["status", str(crashed)]) == 0
