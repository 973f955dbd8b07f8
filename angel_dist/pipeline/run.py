"""`angel run`: the whole ANGEL recipe, top to bottom, each stage recorded in run.json.

  kb -> tokenizer -> trie -> corpora -> positive pretraining -> DPO pretraining rounds
  [-> positive fine-tuning -> ANGEL fine-tuning rounds] [-> compute-matched NLL baseline]
  -> final evaluation [-> the last phase's rounds and baseline under each of `seeds`] -> export -> report

A round mines with the current model (which is also its DPO reference: the pair shards carry
its log-probs), trains one DPO epoch on the pairs, exports, and scores dev acc@1; the best
model so far is kept, and rounds stop after `patience` rounds without improvement. Killed
anywhere, the same command resumes: done stages are skipped and the rest are idempotent.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from angel_dist.faults import crash_once
from angel_dist.pipeline.recipe import Recipe, RoundsRecipe
from angel_dist.pipeline.rows import ANGEL, MATCHED, POSITIVE, TFIDF
from angel_dist.pipeline.state import RunState

FAULT_ENV = "ANGEL_PIPELINE_FAULT"  # "STAGE:N": the driver dies after N pair shards of STAGE's mining, once


class Pipeline:
    def __init__(self, recipe: Recipe, run_dir: str | Path, progress: bool = True):
        self.recipe, self.progress = recipe, progress
        self.dir = Path(run_dir).resolve()
        self.state = RunState(self.dir, asdict(recipe), recipe.fingerprint())

    # -- the flow ---------------------------------------------------------------------
    def run(self) -> dict:
        r = self.recipe
        kb = self.state.run("kb", self.build_kb)
        tok = self.state.run("tokenizer", lambda: self.tokenizer(kb["kb"]))["tokenizer"]
        trie = self.state.run("trie", lambda: self.trie(kb["kb"], tok))["trie"]
        data = self.state.run("corpora", lambda: self.corpora(kb, tok))
        evals = {k: data[k] for k in ("dev", "test") if data.get(k)}

        pretrained = self.state.run("pretrain", lambda: self.train("pretrain", "nll", data["pretrain"], r.model,
                                                                   r.pretrain))
        self.state.run("pretrain-eval", lambda: self.scored(pretrained["model"], trie, evals))
        best = self.rounds("pretrain", r.pretrain_rounds, pretrained, data["pretrain"], trie, evals)
        phase, base, phase_data, settings, cfg = "pretrain", pretrained, data["pretrain"], r.pretrain, r.pretrain_rounds
        if data.get("train") and r.finetune:
            tuned = self.state.run("finetune", lambda: self.train("finetune", "nll", data["train"], best["model"],
                                                                  r.finetune))
            self.state.run("finetune-eval", lambda: self.scored(tuned["model"], trie, evals))
            best = self.rounds("finetune", r.finetune_rounds, tuned, data["train"], trie, evals)
            phase, base, phase_data, settings, cfg = "finetune", tuned, data["train"], r.finetune, r.finetune_rounds
        results = {POSITIVE: base["model"], ANGEL: best["model"]}
        if r.matched_baseline and (matched := self.matched(phase, base, phase_data, settings, trie, evals)):
            results[MATCHED] = matched["model"]

        table = self.state.run("final-eval", lambda: {
            **{name: self._scores(model, trie, evals) for name, model in results.items()},
            TFIDF: self.tfidf_baseline(trie, evals)})
        if r.seeds:
            self.seeds(phase, cfg, base, phase_data, settings, trie, evals)
        self.state.run("export", lambda: self.export(best["model"]))
        # Rewritten when seeds are added to a finished run, for their section.
        self.state.run("report", lambda: self.report(), {"seeds": r.seeds} if r.seeds else None)
        return table

    def rounds(self, phase: str, cfg: RoundsRecipe, start: dict, data: str, trie: str, evals: dict,
               seed: int | None = None) -> dict:
        """ANGEL rounds from model `start`; returns the best {"model", "dev_acc1"} seen, or, when
        fine-tuning trains on dev too (benchmark.train_includes_dev: dev cannot judge), the last
        round's, every round run. `seed`: another seed than the recipe's, for the mining sample and
        training, in stages of its own (`seed-S/PHASE-round-I`)."""
        last_wins = phase == "finetune" and self.recipe.benchmark.train_includes_dev
        current = start
        best = {"model": start["model"], "dev_acc1": self._dev_acc1(f"{phase}-eval")}
        n = cfg.rounds if phase == "pretrain" else min(cfg.rounds or cfg.chunks, cfg.chunks)
        stale = 0
        for i in range(1, n + 1):
            name = f"{_prefix(seed)}{phase}-round-{i}"
            current = self.state.run(name, lambda: self.round(name, phase, i, cfg, current["model"], data, trie,
                                                              evals, seed))
            if last_wins or best["dev_acc1"] is None or (current["dev_acc1"] or 0.0) > best["dev_acc1"]:
                best, stale = {"model": current["model"], "dev_acc1": current["dev_acc1"]}, 0
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
        return best

    def round(self, name: str, phase: str, i: int, cfg: RoundsRecipe, model: str, data: str, trie: str,
              evals: dict, seed: int | None = None) -> dict:
        from angel_dist.mine import MineConfig, mine

        m = self.recipe.mine
        sample = {"fraction": cfg.fraction} if phase == "pretrain" else {"chunk": (i - 1) % cfg.chunks,
                                                                         "chunks": cfg.chunks}
        pairs = self.dir / "rounds" / name / "pairs"
        manifest = mine(MineConfig(model=model, trie=trie, data=data, out=str(pairs), actors=m.actors, beams=m.beams,
                                   dpo_topk=m.dpo_topk, gold_fallback=m.gold_fallback, round=i,
                                   seed=self.recipe.seed if seed is None else seed,
                                   batch_size=m.batch_size, cpus_per_actor=m.cpus_per_actor,
                                   gpus_per_actor=m.gpus_per_actor, placement=m.placement, stop=m.stop,
                                   temperature=m.temperature, progress=self.progress,
                                   **sample),
                        on_shard=self._fault_hook(name))
        out = {"pairs": str(pairs), "n_pairs": manifest["total"], "mining": manifest["stats"]}
        r = self.recipe
        per_rank = manifest["total"] // (r.workers if isinstance(r.workers, int) else r.workers[1])
        if per_rank == 0:  # nothing to learn from: the model stays
            return {**out, **self.scored(model, trie, evals), "steps": 0}
        settings = _seeded(cfg.train, seed)
        # A round with few pairs still makes one epoch of steps rather than none.
        settings["batch_size"] = min(settings.get("batch_size", 8), per_rank)
        trained = self.train(name, "dpo", str(pairs), model, settings)
        return {**out, **trained, **self.scored(trained["model"], trie, evals)}

    def matched(self, phase: str, base: dict, data: str, settings: dict, trie: str, evals: dict,
                seed: int | None = None) -> dict | None:
        """The compute-matched baseline: the positive-only model `base` trained on with NLL for as
        many optimizer steps as the phase's ANGEL rounds (under `seed`) took, scored; None when they
        took none."""
        prefix = _prefix(seed)
        steps = sum((self.state.done(n) or {}).get("steps", 0) for n in self._round_names(prefix + phase))
        if not steps:
            return None
        name = f"{prefix}matched-nll"

        def train() -> dict:
            trained = self.train(name, "nll", data, base["model"], _seeded({**settings, "max_steps": steps}, seed))
            return {**trained, **self.scored(trained["model"], trie, evals)}
        return self.state.run(name, train)

    def seeds(self, phase: str, cfg: RoundsRecipe, base: dict, data: str, settings: dict, trie: str,
              evals: dict) -> dict:
        """The last phase's ANGEL rounds and matched baseline under each of the recipe's seeds, from
        the one positive-only model `base` (the recipe's own seed is the run's own stages), and their
        summary (angel_dist/pipeline/seeds.py). With no rounds' steps, the matched arm is `base`."""
        from angel_dist.pipeline.seeds import seed_summary

        r = self.recipe
        arms = {}
        for s in r.seeds:
            seed = None if s == r.seed else s
            angel = self.rounds(phase, cfg, base, data, trie, evals, seed)
            matched = self.matched(phase, base, data, settings, trie, evals, seed) or {**base, "steps": 0}
            arms[str(s)] = {"angel": angel["model"], "matched": matched["model"], "steps": matched["steps"]}

        def summary() -> dict:
            scores = {s: {arm: self._scores(arms[s][arm], trie, evals) for arm in ("angel", "matched")}
                      for s in arms}
            return {"phase": phase, "positive-only": base["model"],
                    "per_seed": {s: {**arms[s], "eval": scores[s]} for s in arms},
                    "summary": seed_summary(self._scores(base["model"], trie, evals), scores)}
        return self.state.run("seeds", summary, {"seeds": r.seeds})

    # -- stages -------------------------------------------------------------------------
    def build_kb(self) -> dict:
        from angel_dist.kb.build import KbBuildConfig, build_kb
        from angel_dist.kb.table import read_kb, read_kb_meta, write_kb
        from angel_dist.kb.umls import UmlsConfig
        from angel_dist.pipeline.holdout import hold_out, write_pubtator

        k = self.recipe.kb
        d = self.dir / "kb"
        full = d / "source.parquet"
        build_kb(KbBuildConfig(format=k.format, source=k.source, out=str(full),
                               umls=UmlsConfig(drop_suppressed=k.drop_suppressed)), progress=self.progress)
        table, meta = read_kb(full), read_kb_meta(full)
        if k.limit:
            table = table.slice(0, k.limit)
        out = {"kb": str(d / "kb.parquet")}
        if k.holdout > 0:
            table, dev, test = hold_out(table, k.holdout, self.recipe.seed)
            out.update(dev_pubtator=str(write_pubtator(dev, d / "holdout-dev.txt")),
                       test_pubtator=str(write_pubtator(test, d / "holdout-test.txt")),
                       held_out={"dev": len(dev), "test": len(test)})
        if k.add_train_mentions:
            from angel_dist.corpus.pubtator import read_pubtator
            from angel_dist.corpus.train_names import add_names, mention_names

            b = self.recipe.benchmark
            table, added = add_names(table, mention_names(read_pubtator(b.train), b.inputs(), b.entity_type or None,
                                                          b.composites))
            out["train_mentions"] = dict(added)
        meta = write_kb(table, out["kb"], {**meta, "pipeline": {"limit": k.limit, "holdout": k.holdout,
                                                                "add_train_mentions": k.add_train_mentions}})
        return {**out, "fingerprint": meta["fingerprint"], "concepts": table.num_rows}

    def tokenizer(self, kb: str) -> dict:
        """tokenizer.path, else the model's own when it is a checkpoint, else one trained on the KB."""
        from angel_dist.model.vocab import located, tokenizer_of
        from angel_dist.tokenizer import train_tokenizer

        t = self.recipe.tokenizer
        given = tokenizer_of(self.recipe.model, t.path)
        if given is not None:
            return {"tokenizer": located(given)}
        out = self.dir / "tokenizer"
        train_tokenizer(kb, t.vocab_size, out, progress=self.progress)
        return {"tokenizer": str(out)}

    def trie(self, kb: str, tok: str) -> dict:
        from angel_dist.tokenizer import load_tokenizer
        from angel_dist.trie.build import build_trie

        out = self.dir / "trie"
        build_trie(kb, load_tokenizer(tok), out, tokenizer_name=tok, progress=self.progress)
        return {"trie": str(out)}

    def corpora(self, kb: dict, tok: str) -> dict:
        from angel_dist.corpus.build import PretrainCorpusConfig, build_mention_corpus, build_pretrain_corpus
        from angel_dist.corpus.mention_examples import MentionExampleConfig

        c, b = self.recipe.corpus, self.recipe.benchmark
        shards = self.dir / "shards"
        build_pretrain_corpus(kb["kb"], tok, shards / "pretrain",
                              PretrainCorpusConfig(shards=c.shards, mention_scheme=c.mention_scheme,
                                                   seed=self.recipe.seed, max_source_tokens=c.max_source_tokens),
                              progress=self.progress)
        out = {"pretrain": str(shards / "pretrain")}
        splits = {"dev": b.dev or kb.get("dev_pubtator"), "test": b.test or kb.get("test_pubtator"), "train": b.train}
        for split, pubtator in splits.items():
            if not pubtator:
                continue
            config = MentionExampleConfig(inputs=b.inputs(), entity_type=b.entity_type or None,
                                          syn_k=b.syn_k if split == "train" else None, composites=b.composites)
            if split == "train" and b.train_includes_dev:
                pubtator = [b.train, b.dev]
            build_mention_corpus(pubtator, kb["kb"], tok, shards / split, config, shards=b.shards,
                                 max_source_tokens=c.max_source_tokens, progress=self.progress)
            out[split] = str(shards / split)
        return out

    def train(self, name: str, objective: str, data: str, model: str, settings: dict) -> dict:
        from angel_dist.resources import find_resource
        from angel_dist.train import TrainConfig
        from angel_dist.train.export import model_directory
        from angel_dist.train.launch import run_training
        from angel_dist.train.metrics import read_metrics

        r = self.recipe
        run = train_dir(self.dir, name)
        cfg = TrainConfig(objective=objective, data=[data], model=model, tokenizer=self._tokenizer(), out=str(run),
                          ds_config=str(find_resource(r.ds_config)), workers=r.workers,
                          gpus_per_worker=r.gpus_per_worker, cpus_per_worker=r.cpus_per_worker,
                          worker_resources=r.worker_resources, placement=r.placement, loggers=r.loggers,
                          tracking_uri=r.tracking_uri, experiment=r.name, progress=self.progress,
                          **{"seed": r.seed, **settings})
        run_training(cfg)
        metrics = read_metrics(run)
        return {"model": str(model_directory(run)), "run": str(run), "steps": metrics[-1]["step"] if metrics else 0}

    def evaluate(self, model: str, trie: str, evals: dict) -> dict:
        from angel_dist.evaluate import EvalConfig, evaluate_sets

        if not evals:
            return {}
        m, k = self.recipe.mine, self.recipe.evaluate.k
        cfg = EvalConfig(model=model, trie=trie, data="", beams=max(m.beams, k), k=k, actors=m.actors,
                         batch_size=m.batch_size, cpus_per_actor=m.cpus_per_actor, gpus_per_actor=m.gpus_per_actor,
                         placement=m.placement, stop=m.stop, temperature=m.temperature, progress=self.progress)
        return {split: {key: v for key, v in summary.items() if key != "model"}
                for split, summary in evaluate_sets(cfg, evals).items()}

    def tfidf_baseline(self, trie: str, evals: dict) -> dict:
        from angel_dist.evaluate.tfidf_baseline import tfidf_baseline
        from angel_dist.trie import Trie

        return tfidf_baseline(Trie.load(trie), evals, self.recipe.evaluate.k)

    def scored(self, model: str, trie: str, evals: dict) -> dict:
        scores = self.evaluate(model, trie, evals)
        return {"model": model, "eval": scores, "dev_acc1": self._acc1(scores)}

    def export(self, model: str) -> dict:
        """RUN/model: the linker bundle of the chosen model (`angel export` writes the same)."""
        from angel_dist.bundle import command_line, pipeline_contents, write_bundle

        out = self.dir / "model"
        write_bundle(pipeline_contents(self.dir, model, command_line()), out)
        return {"model": str(out), "from": model}

    def report(self) -> dict:
        from angel_dist.report import write_report

        return {"report": str(write_report(self.dir))}

    # -- helpers ------------------------------------------------------------------------
    def _tokenizer(self) -> str:
        return self.state.done("tokenizer")["tokenizer"]

    def _scores(self, model: str, trie: str, evals: dict) -> dict:
        """The recorded evaluation of `model` (every trained model is scored once), else a new one."""
        for record in self.state.state["stages"].values():
            out = record["outputs"]
            if record["status"] == "done" and out.get("model") == model and "eval" in out:
                return out["eval"]
        return self.evaluate(model, trie, evals)

    def _round_names(self, phase: str) -> list[str]:
        return [n for n in self.state.state["stages"] if n.startswith(f"{phase}-round-")]

    def _dev_acc1(self, stage: str) -> float | None:
        return (self.state.done(stage) or {}).get("dev_acc1")

    @staticmethod
    def _acc1(scores: dict) -> float | None:
        split = scores.get("dev") or scores.get("test")
        return split["acc@1"] if split else None

    def _fault_hook(self, stage: str):
        spec = os.environ.get(FAULT_ENV)
        if not spec or spec.rsplit(":", 1)[0] != stage:
            return None
        after = int(spec.rsplit(":", 1)[1])
        marker = self.dir / f".fault-injected-{stage.replace('/', '-')}"
        seen = []

        def hook(_result):
            seen.append(1)
            if len(seen) >= after:
                crash_once(marker, f"{FAULT_ENV}: the driver dies in {stage} after {after} pair shard(s)", 17)
        return hook


def _prefix(seed: int | None) -> str:
    """The stage names of a seed other than the recipe's: `seed-S/` before the recipe's own."""
    return "" if seed is None else f"seed-{seed}/"


def _seeded(settings: dict, seed: int | None) -> dict:
    """Training settings under `seed` (None: the recipe's, as every stage without seeds)."""
    return dict(settings) if seed is None else {**settings, "seed": seed}


def train_dir(run_dir: str | Path, stage: str) -> Path:
    """Where a training stage (or a round's training) keeps its checkpoints, metrics and progress."""
    return Path(run_dir) / "train" / stage


def run_pipeline(recipe: Recipe, run_dir: str | Path, progress: bool = True) -> dict:
    return Pipeline(recipe, run_dir, progress).run()
