"""`angel corpus inspect`: what a shard set holds, and a few samples decoded."""

from __future__ import annotations

import json
from pathlib import Path

from angel_dist.shards.reader import iter_shard, shards_of
from angel_dist.shards.writer import read_manifest


def inspect_shards(out: str | Path, samples: int = 3, as_json: bool = False) -> str:
    manifest = read_manifest(out)
    shown = []
    for sample in iter_shard(shards_of(out, manifest)[0]):
        if len(shown) == samples:
            break
        shown.append({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in sample.items()})
    if as_json:
        return json.dumps({"manifest": manifest, "samples": shown}, indent=2, ensure_ascii=False)
    sizes = [s["count"] for s in manifest["shards"]]
    lines = [f"{out}: {manifest['total']} samples in {manifest['n_shards']} shards "
             f"(min {min(sizes)}, max {max(sizes)} per shard), schema v{manifest['schema_version']}",
             f"tokenizer {manifest.get('tokenizer_fingerprint')}, KB {manifest.get('kb_fingerprint')}",
             "config: " + json.dumps(manifest["config"], sort_keys=True)]
    for name, table in (("counts", manifest.get("counts")), ("stats", manifest.get("stats"))):
        if table:
            lines.append(f"{name}:")
            lines += [f"  {k:<48} {v}" for k, v in table.items()]
    for s in shown:
        texts = ("chosen", "rejected") if s["kind"] == "pair" else ("target",)
        lines += ["", f"[{s['__key__']}] {s['kind']} cuis={s['cuis']}", f"  source: {s.get('source', s.get('prompt'))}",
                  f"  prefix: {s['prefix']}", *(f"  {t}: {s[t]}" for t in texts),
                  "  ids: " + ", ".join(f"{t} {len(s[t + '_ids'])}" for t in ("source", "prefix", *texts))]
    return "\n".join(lines)
