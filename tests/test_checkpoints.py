"""Pretrained checkpoints as users bring them: a directory laid out like facebook/bart-large and one
laid out like a Llama 3 checkpoint (tests/checkpoint_layouts.py) bring their tokenizers, refuse a
foreign one before anything runs, and go through a reduced recipe (kb -> trie -> pretraining ->
fine-tuning -> one round -> bundle -> `angel link`), the Llama one under ZeRO-3 (zero.Init)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from angel_dist.cli import main
from angel_dist.kb.build import KbBuildConfig, build_kb
from angel_dist.kb.table import read_kb
from angel_dist.model import load_model
from angel_dist.model.vocab import check_pair, tokenizer_of
from angel_dist.pipeline import load_recipe
from angel_dist.pipeline.holdout import write_pubtator
from angel_dist.tokenizer import load_tokenizer, tokenizer_fingerprint, train_tokenizer
from checkpoint_layouts import BART_LARGE_VOCAB, LLAMA_EMBEDDINGS, bart_large_like, hf_cache, llama_like

ROOT = Path(__file__).resolve().parents[1]
CONCEPTS = 60


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    d = tmp_path_factory.mktemp("layouts")
    build_kb(KbBuildConfig(format="obo", source="hpo", out=str(d / "hpo.parquet")), progress=False)
    kb = read_kb(d / "hpo.parquet").slice(0, CONCEPTS)
    # Training mentions: each concept's last synonym, as the benchmark's train split.
    write_pubtator([(cui, names[-1]) for cui, names in zip(kb["cui"].to_pylist(), kb["names"].to_pylist())
                    if len(names) > 1], d / "train.txt")
    from angel_dist.kb.table import read_kb_meta, write_kb

    write_kb(kb, d / "kb.parquet", read_kb_meta(d / "hpo.parquet"))
    train_tokenizer(d / "kb.parquet", 300, d / "kb-tokenizer", progress=False)
    return {"dir": d, "bart": bart_large_like(d / "bart-large-like"), "llama": llama_like(d / "llama-like"),
            "kb_tokenizer": d / "kb-tokenizer", "train": d / "train.txt"}


def test_a_checkpoint_brings_its_tokenizer_and_a_foreign_one_is_refused_naming_both(layouts, tmp_path, capsys):
    bart, llama, foreign = layouts["bart"], layouts["llama"], layouts["kb_tokenizer"]
    assert tokenizer_of(bart) == str(bart) and tokenizer_of(llama) == str(llama)
    assert tokenizer_of("tiny") is None and tokenizer_of(bart, foreign) == str(foreign)
    for model, rows in ((bart, BART_LARGE_VOCAB), (llama, LLAMA_EMBEDDINGS)):
        check_pair(model, model)  # its own: the Llama table's padding past the tokenizer is no mismatch
        # The silent mismatch: pad and eos ids agree (BART's), every id is below the table's size.
        with pytest.raises(ValueError, match=rf"model {model} \({rows} token embeddings\) does not fit tokenizer "
                                             rf"{foreign} \(300 tokens\): the model brings its own tokenizer"):
            check_pair(model, foreign)
        with pytest.raises(ValueError, match="does not fit tokenizer"):
            load_model(str(model), load_tokenizer(foreign), tokenizer_name=foreign)  # what every rank and actor runs
    with pytest.raises(ValueError, match="the model brings its own tokenizer"):
        check_pair(bart, llama)  # the same BPE under other special tokens is another tokenizer

    # Refused before any stage runs, naming both sizes: a recipe, and `angel train`.
    recipe = ROOT / "launchers" / "recipes" / "demo-hpo.yaml"
    run_dir = tmp_path / "run"
    assert main(["run", str(recipe), f"model={bart}", f"tokenizer.path={foreign}", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"tokenizer.path: model {bart} ({BART_LARGE_VOCAB} token embeddings)" in err and "(300 tokens)" in err
    assert not run_dir.exists()
    assert main(["train", "--data", str(tmp_path), "--model", str(bart), "--tokenizer", str(foreign), "--out",
                 str(tmp_path / "train")]) == 2
    assert "(300 tokens)" in capsys.readouterr().err and not (tmp_path / "train").exists()
    # Without tokenizer.path a checkpoint brings its own; a preset trains one on the KB.
    assert load_recipe(recipe, [f"model={bart}"]).tokenizer.path == ""
    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        (weights_only / name).write_bytes((bart / name).read_bytes())
    with pytest.raises(ValueError, match="model: model .*weights-only holds no tokenizer files; give the tokenizer"):
        load_recipe(recipe, [f"model={weights_only}"])
    load_recipe(recipe, [f"model={weights_only}", f"tokenizer.path={bart}"])  # its size and special ids agree
    with pytest.raises(ValueError, match="token embeddings are 49965 more than the tokenizer's 300 tokens"):
        load_recipe(recipe, [f"model={weights_only}", f"tokenizer.path={foreign}"])


def test_a_hub_name_in_the_local_cache_brings_its_tokenizer(layouts, tmp_path):
    hf_cache(tmp_path / "hf", "org/bart-large-like", layouts["bart"])
    code = ("from angel_dist.model.vocab import tokenizer_of, check_pair\n"
            "from angel_dist.pipeline import load_recipe\n"
            "from angel_dist.tokenizer import load_tokenizer\n"
            "name = tokenizer_of('org/bart-large-like'); check_pair('org/bart-large-like', name)\n"
            "recipe = load_recipe(None, ['model=org/bart-large-like'])\n"
            "print(name, len(load_tokenizer(name)), recipe.model)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-3:] == ["org/bart-large-like", str(BART_LARGE_VOCAB), "org/bart-large-like"]


def _reduced_recipe(layouts, family: str, ds_config: str) -> dict:
    return {
        "name": f"{family}-like", "model": str(layouts[family]), "ds_config": ds_config, "workers": 1,
        "kb": {"format": "obo", "source": "hpo", "limit": CONCEPTS, "holdout": 0.2},
        "corpus": {"shards": 2}, "benchmark": {"train": str(layouts["train"]), "syn_k": 2, "shards": 2},
        "pretrain": {"max_steps": 6, "batch_size": 8, "lr": 1e-3, "warmup_steps": 0, "save_every": 1000},
        "finetune": {"max_steps": 6, "batch_size": 8, "lr": 1e-3, "warmup_steps": 0, "save_every": 1000},
        "finetune_rounds": {"rounds": 1, "chunks": 2, "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-5,
                                                                 "schedule": "constant", "log_every": 1}},
        "mine": {"actors": 1, "beams": 4, "dpo_topk": 3, "gold_fallback": True}, "evaluate": {"k": 3}}


@pytest.mark.parametrize("family, ds_config", [("bart", "ds_configs/zero2.json"), ("llama", "ds_configs/zero3.json")])
def test_a_reduced_recipe_runs_on_the_checkpoint_and_its_bundle_links(layouts, family, ds_config, ray_local, tmp_path,
                                                                       capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_reduced_recipe(layouts, family, ds_config)))
    run = tmp_path / "run"
    assert main(["run", str(recipe), "--run-dir", str(run), "--quiet"]) == 0
    capsys.readouterr()
    stages = json.loads((run / "run.json").read_text())["stages"]
    model = layouts[family]
    own = tokenizer_fingerprint(load_tokenizer(model))
    assert stages["tokenizer"]["outputs"]["tokenizer"] == str(model) and not (run / "tokenizer").exists()
    assert json.loads((run / "trie" / "meta.json").read_text())["tokenizer_fingerprint"] == own
    for stage in ("pretrain", "finetune", "finetune-round-1"):
        assert stages[stage]["status"] == "done" and stages[stage]["outputs"]["steps"] > 0
    # The round's DPO starts at log 2: the weights every stage's ranks loaded (ZeRO-3: partitioned as
    # they were read) are those mining's linker scored the pairs with.
    round_metrics = [json.loads(line) for line in (run / "train" / "finetune-round-1" / "metrics.jsonl").open()]
    assert round_metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert stages["final-eval"]["outputs"]["angel"]["dev"]["mentions"] > 0
    bundle = run / "model"
    assert json.loads((bundle / "bundle.json").read_text())["tokenizer_fingerprint"] == own
    assert main(["link", "--model", str(bundle), "--json", "the patient had START abnormality of the face END"]) == 0
    linked = json.loads(capsys.readouterr().out.splitlines()[-1])
    kb_names = {n for names in read_kb(run / "kb" / "kb.parquet")["names"].to_pylist() for n in names}
    assert linked["mention"] == "abnormality of the face" and linked["names"]
    assert set(linked["names"]) <= kb_names and all(linked["ids"])
