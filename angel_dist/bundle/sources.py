"""What a bundle holds, derived from a run: a pipeline run (run.json says everything) or a
training run (its config and shard manifests; the trie must be given)."""

from __future__ import annotations

import shlex
import sys
from dataclasses import asdict
from pathlib import Path

from angel_dist.bundle.layout import BundleContents
from angel_dist.errors import read_json


def command_line() -> str:
    """This process's command line, as the user typed it when it is the `angel` command."""
    prog = Path(sys.argv[0]).name
    return shlex.join(["angel" if prog in ("angel", "cli.py") else sys.argv[0], *sys.argv[1:]])


def _inputs(record: dict | None = None, max_source_tokens: int | None = None) -> dict:
    """A bundle's `inputs`: how a (text, span) becomes model input, from the settings `record`
    of its mention corpora (a recipe's benchmark section, a shard set's config); the defaults
    without one."""
    from angel_dist.corpus.encode import MAX_SOURCE_TOKENS
    from angel_dist.corpus.mention_examples import MentionInputConfig

    config = MentionInputConfig.from_record(record) if record is not None else MentionInputConfig()
    return {**asdict(config), "max_source_tokens": max_source_tokens or MAX_SOURCE_TOKENS}


def pipeline_contents(run_dir: str | Path, model: str | None = None, command: str = "") -> BundleContents:
    """The bundle of pipeline run `run_dir`: `model` (default: the one its export stage chose),
    its trie, recipe and final accuracy table."""
    from angel_dist.pipeline.state import read_state

    run = Path(run_dir).resolve()
    state = read_state(run)
    stages = {name: record["outputs"] for name, record in sorted(state["stages"].items(),
                                                                key=lambda kv: kv[1]["order"])
              if record["status"] == "done"}
    recipe = state["recipe"]
    if model is None:
        if "export" not in stages:
            raise ValueError(f"{run}: the pipeline has not reached its export stage yet; finish it with `angel run` "
                             f"(or export one of its training runs, {run / 'train'}/STAGE, with --trie {run / 'trie'})")
        model = stages["export"]["from"]
    stage = next((name for name, out in stages.items() if out.get("model") == model and name != "export"), "?")
    kb, k = recipe["kb"], recipe["benchmark"]
    data = [f"KB: {kb['format']} `{kb['source']}`, {stages['kb']['concepts']} concepts"
            + (f" (the first {kb['limit']})" if kb["limit"] else "")
            + (f"; {kb['holdout']:.0%} of synonyms held out as dev/test mentions" if kb["holdout"] else ""),
            f"pretraining: the KB-guided corpus ({recipe['corpus']['mention_scheme']} mentions)"]
    data += [f"{split}: `{k[split]}`" for split in ("train", "dev", "test") if k[split]]
    return BundleContents(model_dir=Path(model), trie_dir=Path(stages["trie"]["trie"]), name=recipe["name"],
                          origin={"kind": "pipeline", "run": str(run), "stage": stage, "model": model},
                          made_from=f"The model of stage `{stage}` of pipeline run `{run}`",
                          recipe=recipe, data=data, inputs=_inputs(k, recipe["corpus"]["max_source_tokens"]),
                          accuracy=stages.get("final-eval"), k=recipe["evaluate"]["k"], command=command)


def training_contents(run_dir: str | Path, trie: str | Path | None, tag: str | None = None,
                      command: str = "") -> BundleContents:
    """The bundle of training run `run_dir`'s checkpoint `tag` (default: the newest) with `trie`."""
    from angel_dist.shards.writer import read_manifest
    from angel_dist.train.export import model_directory

    run = Path(run_dir).resolve()
    if trie is None:
        raise ValueError(f"{run} is a training run: give the trie its model links with, built with its tokenizer "
                         f"(--trie DIR, e.g. from `angel trie build`)")
    config = read_json(run / "train_config.json", "a training run's config")
    model = model_directory(run, tag)
    data, inputs = [], None
    for shards in config["data"]:
        try:
            manifest = read_manifest(shards)
        except FileNotFoundError:
            data.append(f"`{shards}` (its manifest is no longer there)")
            continue
        settings = manifest.get("config", {})
        data.append(f"`{shards}`: {manifest['total']} {manifest['kind']} ({settings.get('kind', 'pairs')}), "
                    f"KB fingerprint `{manifest.get('kb_fingerprint')}`")
        if inputs is None and settings.get("kind") == "mention":  # a benchmark mention set: how its inputs were made
            inputs = _inputs(settings.get("inputs", settings), settings["max_source_tokens"])
    checkpoint = read_json(model / "angel_export.json", "an exported model's record")["checkpoint"]
    return BundleContents(model_dir=model, trie_dir=Path(trie), name=run.name,
                          origin={"kind": "training", "run": str(run), "checkpoint": checkpoint},
                          made_from=f"Checkpoint `{checkpoint}` of training run `{run}`", recipe=config,
                          data=data, inputs=inputs or _inputs(), command=command)
